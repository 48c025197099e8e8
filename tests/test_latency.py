"""sweet latency on tiny EE and MM runs (test_export's run folders): the columns, the full row, the theoretical
speedup = sweet.cost's on the simulated exits of the same examples; bad requests are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_export import _build_run, _gap_threshold, _operating_points, _risk_control, base  # noqa: F401

import sweet.latency
from sweet.cli import main
from sweet.cost import layer_costs, layer_fraction
from sweet.curves import load_logits
from sweet.exits import EXIT_RULES, calibrated_probs, simulate
from sweet.latency import LATENCY_COLUMNS
from sweet.plan.layout import LATENCY

EXAMPLES = 24


@pytest.mark.parametrize("method", ["ee", "mm"])
def test_latency_rows(base: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    timings: list[tuple] = []
    real_time = sweet.latency._time
    monkeypatch.setattr(sweet.latency, "_time", lambda runner, features, rule, threshold, *rest: (
        timings.append((runner.buckets.max_batch, rule.name, threshold)) or real_time(runner, features, rule,
                                                                                      threshold, *rest)))
    run = _build_run(base, method)
    threshold = _gap_threshold(run, 0.5)
    _operating_points(run, threshold)
    _risk_control(run, threshold)
    main(["latency", "--run", str(run), "--task-dir", str(base / "data" / "synthetic"), "--batch-sizes", "4", "1",
          "--examples", str(EXAMPLES), "--repeats", "1"])
    table = pd.read_csv(run / LATENCY, keep_default_na=False, na_values=[""])
    assert list(table.columns) == LATENCY_COLUMNS
    assert sorted(table["batch_size"].unique()) == [1, 4]
    full = table[table["source"] == "full"]
    assert len(full) == 2 and (full["measured_speedup"] == 1).all() and (full["theoretical_speedup"] == 1).all()
    assert (full["full_model"] == "last exit alone").all()
    assert set(table["source"]) == {"full", "held-out", "risk-control"}
    assert (table["ms_per_example"] > 0).all() and table["device"].str.len().gt(0).all()
    # 6 held-out (2 rules × 3 targets) + 2 certified risk rows per batch size
    assert len(table) == 2 * (1 + 6 + 2)
    logits = load_logits(run / "logits.npz")
    probs = calibrated_probs(logits["exit_logits"], logits["temperatures"])[:, :EXAMPLES]
    costs = layer_costs(logits["exit_layers"], method)
    for _, row in table[table["source"] != "full"].iterrows():
        exits = simulate(EXIT_RULES[row["strategy"]], probs, None, row["threshold"])
        expected = 1 / layer_fraction(exits, costs, int(logits["exit_layers"][-1]))
        assert row["theoretical_speedup"] == pytest.approx(expected, rel=1e-5)
        assert row["measured_speedup"] == pytest.approx(
            full[full["batch_size"] == row["batch_size"]]["ms_per_example"].iloc[0] / row["ms_per_example"], rel=1e-3)
    # policies that share a threshold are one computation, timed once (and the full model once per batch size)
    policies = table[table["source"] != "full"]
    shared = policies.groupby(["batch_size", "strategy", "threshold"])["ms_per_example"]
    assert shared.size().max() > 1 and (shared.nunique() == 1).all()
    assert len(timings) == len(set(timings)) == shared.ngroups + 2


def test_bad_batch_sizes_are_one_line_errors(base: Path, capsys) -> None:  # noqa: F811
    run = _build_run(base, "ee")
    for sizes in (["0"], ["-3", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["latency", "--run", str(run), "--task-dir", str(base / "data" / "synthetic"), "--batch-sizes",
                  *sizes])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --batch-sizes") and "\n" not in err


def test_full_model_is_the_last_exit_alone(base: Path) -> None:  # noqa: F811
    from tiny import random_features

    from sweet.compiled import SegmentedRunner
    from sweet.evaluate import exit_logits, load_model
    from sweet.latency import full_model

    model = load_model(_build_run(base, "ee") / "model")
    features = random_features(5, 12, seed=1)
    whole, _ = exit_logits(model, features)
    runner = SegmentedRunner(full_model(model), 4, compile=False)
    result = runner.run(features, EXIT_RULES["confidence"], np.inf, np.ones(1))
    assert (result.exits == 0).all()
    np.testing.assert_allclose(result.probabilities, calibrated_probs(whole[-1:], np.ones(1))[0], atol=1e-5)
