"""Held-out operating points: a threshold chosen on the calibration split, scored on the evaluation split.

The field's "score at N× speedup" (``envelope_score``; ``sweet.reporting``'s ``speedup_summary`` and the
claims) reads the evaluation curve itself: the Pareto front of the ~112 thresholds *as measured on the
evaluation examples*, interpolated at N×. No deployed model can have that score, since its threshold is picked
by looking at the evaluation labels. The held-out number is what a deployment would see:

1. On the calibration split's curve (the same exit rule, the same threshold grid as ``curves.csv``), among the
   thresholds whose calibration speedup is at least the target, take the one with the best calibration score;
   ties go to the faster one (higher calibration speedup), then to the first in grid order. If no threshold
   reaches the target on the calibration split, the target is not reachable (``reached`` false, NaN values).
2. Apply that threshold to the evaluation split: ``eval_speedup`` and ``eval_score`` (the speedup need not meet
   the target there; ``eval_speedup`` says by how much it falls short or exceeds it).

``envelope_score`` is computed by the same function the reporting uses for "score at N×"
(``sweet.reporting.statistics.interpolate_curve``, on the evaluation curve), so ``envelope_score −
eval_score`` is exactly the optimism of the numbers the tables and claims report. The evaluation curve's
interpolation can exceed every measured threshold (it interpolates between Pareto points), which is part of
that optimism.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweet.reporting.statistics import interpolate_curve

DEFAULT_TARGETS = (1.5, 2.0, 3.0)
OPERATING_POINT_COLUMNS = ["strategy", "target_speedup", "reached", "threshold", "calibration_speedup",
                           "calibration_score", "eval_speedup", "eval_score", "envelope_score", "metric"]


def _reaches(speedup: pd.Series, target: float) -> pd.Series:
    # the tolerance interpolate_curve allows at a curve's end, so a threshold at exactly 2.000…× counts as 2×
    return speedup >= target - 1e-9 * max(1.0, abs(target))


def choose_threshold(calibration_curve: pd.DataFrame, target: float) -> pd.Series | None:
    """The row of one exit rule's calibration curve chosen for ``target``: best calibration score among those at
    least ``target`` fast, ties to the fastest, then to the first in grid order; None when none is that fast."""
    candidates = calibration_curve[_reaches(calibration_curve["speedup"], target)]
    if candidates.empty:
        return None
    order = candidates.assign(_position=np.arange(len(candidates))).sort_values(
        ["score", "speedup", "_position"], ascending=[False, False, True], kind="mergesort")
    return order.iloc[0]


def operating_point_rows(
    calibration_curves: pd.DataFrame, eval_curves: pd.DataFrame, targets: Sequence[float] = DEFAULT_TARGETS
) -> pd.DataFrame:
    """One row per exit rule × target speedup, from one run's calibration and evaluation curves (both from
    ``sweet.curves.curve_rows``: the same rules and threshold grids; the oracle has no threshold and is left out)."""
    rows = []
    for strategy, eval_curve in eval_curves[eval_curves["strategy"] != "oracle"].groupby("strategy", sort=False):
        calibration_curve = calibration_curves[calibration_curves["strategy"] == strategy]
        envelope = interpolate_curve(eval_curve["speedup"].to_numpy(), eval_curve["score"].to_numpy(), list(targets))
        by_threshold = eval_curve.set_index("threshold")
        metric = eval_curve["metric"].iloc[0]
        for target, envelope_score in zip(targets, envelope):
            chosen = choose_threshold(calibration_curve, target) if not calibration_curve.empty else None
            row = {"strategy": strategy, "target_speedup": float(target), "reached": chosen is not None,
                   "threshold": np.nan, "calibration_speedup": np.nan, "calibration_score": np.nan,
                   "eval_speedup": np.nan, "eval_score": np.nan, "envelope_score": float(envelope_score),
                   "metric": metric}
            if chosen is not None:
                # both curves come from the same grid function, so the threshold matches exactly
                at_eval = by_threshold.loc[chosen["threshold"]]
                row.update(threshold=float(chosen["threshold"]), calibration_speedup=float(chosen["speedup"]),
                           calibration_score=float(chosen["score"]), eval_speedup=float(at_eval["speedup"]),
                           eval_score=float(at_eval["score"]))
            rows.append(row)
    return pd.DataFrame(rows, columns=OPERATING_POINT_COLUMNS)
