"""Held-out operating points on hand-made logits: the threshold chosen on the calibration split, its evaluation
score, and the envelope score the reporting's "score at N×" reads off the evaluation curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweet.curves import curve_rows, with_meta
from sweet.operating_points import choose_threshold, operating_point_rows
from sweet.reporting.statistics import speedup_per_seed


def _accuracy(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((preds == labels).mean())}


def two_exit_logits(confidence: list[float], first_exit_right: list[bool]) -> dict[str, np.ndarray]:
    """Exits after layers 1 and 2; every label is 1; exit 1 predicts with the given confidence (right or wrong),
    exit 2 is right and sure. Confidences avoid the threshold grid's points, so no example sits on a threshold."""
    c = np.asarray(confidence)
    logit = np.where(first_exit_right, np.log(c / (1 - c)), np.log((1 - c) / c))
    logits = np.zeros((2, len(c), 2), dtype=np.float32)
    logits[0, :, 1] = logit
    logits[1, :, 1] = 5.0
    return {"exit_logits": logits, "temperatures": np.ones(2, dtype=np.float32), "labels": np.ones(len(c), int),
            "lengths": np.full(len(c), 10), "exit_layers": np.array([1, 2]), "layer_costs": np.array([1, 2]),
            "method": np.array("ee"), "hidden_size": np.array(64), "intermediate_size": np.array(128),
            "num_labels": np.array(2)}


def curves(logits: dict[str, np.ndarray]) -> pd.DataFrame:
    return curve_rows(logits, ["accuracy"], "accuracy", _accuracy)


# Speedup with m of the 4 examples leaving at exit 1: 8 / (8 − m), i.e. 1, 8/7, 4/3, 1.6, 2.
CALIBRATION = two_exit_logits([0.955, 0.905, 0.805, 0.705], [True, True, False, True])
EVALUATION = two_exit_logits([0.905, 0.805, 0.705, 0.605], [True, False, True, True])


def test_held_out_operating_point_by_hand() -> None:
    rows = operating_point_rows(curves(CALIBRATION), curves(EVALUATION), [1.5, 3.0])
    confidence = rows[rows["strategy"] == "confidence"].set_index("target_speedup")
    at = confidence.loc[1.5]
    # Calibration: ≥ 1.5× needs 3 or 4 early exits (t ≤ 0.805), both scoring 3/4 (example 3 is wrong at exit 1):
    # the tie goes to the faster (all 4 exit: t ≤ 0.705), then to the first such threshold of the grid, 0.5.
    assert at["reached"]
    assert at["threshold"] == 0.5
    assert at["calibration_speedup"] == 2.0 and at["calibration_score"] == 0.75
    # Evaluation at t = 0.5: all 4 leave at exit 1, example 2 is wrong there.
    assert at["eval_speedup"] == 2.0 and at["eval_score"] == 0.75
    # The envelope: the evaluation curve's Pareto front is (8/7×, 1.0) and (2×, 0.75) (4/3× and 1.6× score
    # 0.75 too, dominated by 2×); linear at 1.5×.
    assert at["envelope_score"] == pytest.approx(1 - 0.25 * (1.5 - 8 / 7) / (2 - 8 / 7), abs=1e-12)
    # 3× is out of both curves' reach (2× at most): not reached, no threshold, and no envelope either.
    far = confidence.loc[3.0]
    assert not far["reached"] and np.isnan(far["threshold"]) and np.isnan(far["eval_score"])
    assert np.isnan(far["envelope_score"])


def test_envelope_score_is_the_reportings_score_at_that_speedup() -> None:
    rows = operating_point_rows(curves(CALIBRATION), curves(EVALUATION), [1.2, 1.5, 1.9])
    meta = {"task": "t", "model": "m", "budget": 1, "method": "ee", "seed": 1}
    reported = speedup_per_seed(with_meta(curves(EVALUATION), meta), [1.2, 1.5, 1.9])
    merged = rows.merge(reported, left_on=["strategy", "target_speedup"], right_on=["strategy", "speedup"])
    assert len(merged) == len(rows)
    np.testing.assert_array_equal(merged["envelope_score"], merged["score"])


def test_choice_is_the_best_calibration_score_at_or_above_the_target_ties_to_the_fastest() -> None:
    curve = pd.DataFrame({"threshold": [0.9, 0.8, 0.7, 0.6, 0.5], "speedup": [1.0, 1.5, 2.0, 2.5, 2.5],
                          "score": [0.95, 0.9, 0.92, 0.92, 0.92]})
    assert choose_threshold(curve, 2.0)["threshold"] == 0.6  # 0.92 at 2× and 2.5×: 2.5× first in the grid
    assert choose_threshold(curve, 1.5)["threshold"] == 0.6  # 0.92 beats 0.9, never the slower 0.95
    assert choose_threshold(curve, 1.5 + 1e-12)["threshold"] == 0.6
    assert choose_threshold(curve, 1.0)["threshold"] == 0.9
    assert choose_threshold(curve, 2.6) is None
