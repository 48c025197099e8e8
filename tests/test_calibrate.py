"""Per-exit temperature scaling and the calibration metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweet.calibrate import calibrate_exits, expected_calibration_error, fit_temperature, nll

torch.set_num_threads(1)  # tiny problems: threads only contend for the cores


def _calibrated_sample(n: int, num_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): these logits are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, num_labels))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = (rng.uniform(size=(n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, labels


def _binary_logits(p_class0: list[float]) -> np.ndarray:
    p = np.asarray(p_class0, dtype=np.float64)
    return np.stack([np.log(p), np.log(1 - p)], axis=1)


def test_temperature_recovers_overconfidence_factor():
    logits, labels = _calibrated_sample(4000, 3, seed=0)
    overconfident = logits * 3
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(overconfident, labels, t) < nll(overconfident, labels) - 0.1
    # underconfident logits get a temperature below 1
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.1)
    # already calibrated: T ≈ 1
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.1)


def test_nll_by_hand():
    logits = _binary_logits([0.8, 0.25])
    labels = np.array([0, 0])
    assert nll(logits, labels) == pytest.approx(-(math.log(0.8) + math.log(0.25)) / 2, abs=1e-12)
    # temperature 2 on logits (log p, log (1-p)): p_T = sqrt(p) / (sqrt(p) + sqrt(1-p))
    p_t = [math.sqrt(p) / (math.sqrt(p) + math.sqrt(1 - p)) for p in (0.8, 0.25)]
    assert nll(logits, labels, 2.0) == pytest.approx(-(math.log(p_t[0]) + math.log(p_t[1])) / 2, abs=1e-12)


def test_ece_hand_case():
    # confidences 0.9, 0.9 (one right, one wrong) and 0.7, 0.7 (both right)
    logits = _binary_logits([0.9, 0.9, 0.7, 0.7])
    labels = np.array([0, 1, 0, 0])
    # 15 equal bins: 0.9 and 0.7 fall in different bins -> 1/2·|0.5 − 0.9| + 1/2·|1.0 − 0.7|
    assert expected_calibration_error(logits, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3, abs=1e-12)
    # one bin: |accuracy − mean confidence| = |0.75 − 0.8|
    assert expected_calibration_error(logits, labels, bins=1) == pytest.approx(0.05, abs=1e-12)
    # perfectly calibrated in each bin
    assert expected_calibration_error(_binary_logits([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_ece_drops_after_temperature_scaling():
    logits, labels = _calibrated_sample(4000, 3, seed=1)
    overconfident = logits * 3
    t = fit_temperature(overconfident, labels)
    assert expected_calibration_error(overconfident, labels, t) < expected_calibration_error(overconfident, labels) / 2


def test_calibrate_exits_report():
    a, labels = _calibrated_sample(1000, 2, seed=2)
    exit_logits = np.stack([a * 3, a, a / 2])
    report = calibrate_exits(exit_logits, labels)
    assert set(report) == {"temperatures", "exits", "n_examples"}
    assert report["n_examples"] == 1000
    assert len(report["temperatures"]) == 3
    assert [e["exit"] for e in report["exits"]] == [1, 2, 3]
    for e, t in zip(report["exits"], report["temperatures"]):
        assert set(e) == {"exit", "temperature", "nll_before", "nll_after", "ece_before", "ece_after"}
        assert e["temperature"] == t
        assert e["nll_after"] <= e["nll_before"] + 1e-12
    temps = report["temperatures"]
    assert temps[0] > 2 and 0.7 < temps[1] < 1.4 and temps[2] < 0.7
    assert report["exits"][0]["nll_after"] < report["exits"][0]["nll_before"] - 0.1
