"""The statistics behind the tables, checked against small tables computed by hand; collecting runs; the
`aggregate` command."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweet.errors import UserError
from sweet.reporting.cli import add_cli
from sweet.reporting.collect import collect
from sweet.reporting.statistics import (
    auc_summary,
    curve_auc,
    gradient_conflict_summary,
    individual_exits_summary,
    interpolate_curve,
    pairwise_differences,
    pareto_front,
    speedup_summary,
    t_interval,
)
from sweet.reporting.tables import aggregate, individual_exits_latex, individual_exits_markdown

IDENT = {"task": "t", "model": "m", "budget": 10}

# Each exit's own score; MM has only seed 1, so its paired difference uses one seed.
EXIT_SCORES = {
    ("ee", 1): [0.50, 0.70], ("ee", 2): [0.60, 0.80],
    ("sweet", 1): [0.55, 0.72], ("sweet", 2): [0.65, 0.78],
    ("mm", 1): [0.58, 0.74],
}


def exit_frame(scores: dict = EXIT_SCORES, ident: dict = IDENT) -> pd.DataFrame:
    rows = []
    for (method, seed), values in scores.items():
        for k, score in enumerate(values, start=1):
            rows.append({**ident, "method": method, "seed": seed, "exit": k, "exit_layer": 2 * k, "score": score,
                         "metric": "accuracy"})
    return pd.DataFrame(rows)


def curve_frame(points: dict) -> pd.DataFrame:
    """points: (method, seed) -> [(speedup, score), ...] for the confidence rule."""
    rows = []
    for (method, seed), curve in points.items():
        for i, (speedup, score) in enumerate(curve):
            rows.append({**IDENT, "method": method, "seed": seed, "strategy": "confidence", "threshold": i / 10,
                         "reference_threshold": 1, "score": score, "metric": "accuracy", "speedup": speedup,
                         "layer_fraction": 1 / speedup, "flops_fraction": 1 / speedup})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- individual exits


def test_individual_exits_summary_by_hand() -> None:
    summary = individual_exits_summary(exit_frame()).set_index(["method", "exit"])
    assert list(summary.index.get_level_values("method").unique()) == ["ee", "sweet", "mm"]
    ee1 = summary.loc[("ee", 1)]
    assert ee1["score_mean"] == pytest.approx(0.55)
    assert ee1["score_std"] == pytest.approx(math.sqrt(2 * 0.05**2))  # sample std, ddof=1
    assert ee1["n_seeds"] == 2 and ee1["delta_vs_ee"] == 0 and ee1["exit_layer"] == 2
    assert summary.loc[("sweet", 1), "delta_vs_ee"] == pytest.approx(0.05)
    assert summary.loc[("sweet", 2), "delta_vs_ee"] == pytest.approx(0.0)  # +0.02 and -0.02
    mm1 = summary.loc[("mm", 1)]
    assert mm1["delta_vs_ee"] == pytest.approx(0.08) and mm1["n_paired"] == 1
    assert mm1["n_seeds"] == 1 and math.isnan(mm1["score_std"])


def test_delta_is_nan_without_ee() -> None:
    frame = exit_frame({("sweet", 1): [0.5, 0.6]})
    assert individual_exits_summary(frame)["delta_vs_ee"].isna().all()


def test_markdown_and_latex_tables() -> None:
    frames = [exit_frame(), exit_frame({("ee", 1): [0.4, 0.5]}, {**IDENT, "budget": 20})]
    md = individual_exits_markdown(pd.concat(frames))
    assert md.index("budget 10") < md.index("budget 20")
    assert "| Exit (layer) | EE | SWEET | MM |" in md
    assert "| 1 (2) | 55.0 ± 7.1 | 60.0 ± 7.1 | 58.0 |" in md
    # Average: per-seed mean over exits (EE: 0.60, 0.70), then mean ± std over seeds.
    assert "| **Average** | 65.0 ± 7.1 | 67.5 ± 5.7 | 66.0 |" in md
    tex = individual_exits_latex(pd.concat(frames))
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"55.0 $\pm$ 7.1" in tex and r"\textbf{Average}" in tex
    assert tex.count(r"\multicolumn{4}{l}") == 2


# ------------------------------------------------------------------------------------------ curves and AUC


def test_pareto_front_and_interpolation() -> None:
    speedup = np.array([1.0, 1.5, 2.0, 4.0])
    score = np.array([0.9, 0.7, 0.8, 0.6])  # (1.5, 0.7) is dominated by (2, 0.8)
    xs, ys = pareto_front(speedup, score)
    assert xs.tolist() == [1.0, 2.0, 4.0] and ys.tolist() == [0.9, 0.8, 0.6]
    values = interpolate_curve(speedup, score, [0.5, 1.0, 1.5, 3.0, 4.0, 5.0])
    assert math.isnan(values[0]) and math.isnan(values[-1])  # never extrapolated
    assert values[1:5] == pytest.approx([0.9, 0.85, 0.7, 0.6])


def test_left_of_the_front_takes_its_best_score() -> None:
    # The slowest threshold is beaten by a faster one: below 1.2x the best reachable score is still 0.85.
    speedup, score = np.array([1.0, 1.2, 2.0]), np.array([0.80, 0.85, 0.70])
    values = interpolate_curve(speedup, score, [0.9, 1.0, 1.1, 1.6])
    assert math.isnan(values[0])
    assert values[1:] == pytest.approx([0.85, 0.85, 0.775])


def test_curve_auc_by_hand() -> None:
    speedup, score = np.array([1.0, 2.0, 4.0]), np.array([0.9, 0.8, 0.6])
    assert curve_auc(speedup, score, 1.0, 4.0) == pytest.approx((0.85 * 1 + 0.7 * 2) / 3)
    assert curve_auc(speedup, score, 1.0, 2.0) == pytest.approx(0.85)
    assert curve_auc(speedup, score, 1.5, 3.0) == pytest.approx((0.825 * 0.5 + 0.75 * 1.0) / 1.5)
    assert math.isnan(curve_auc(speedup, score, 2.0, 2.0))


CURVES = {
    ("ee", 1): [(1.0, 0.9), (2.0, 0.8), (4.0, 0.6)],
    ("ee", 2): [(1.0, 0.8), (2.0, 0.7), (4.0, 0.5)],
    ("sweet", 1): [(1.0, 0.9), (2.0, 0.85), (3.0, 0.7)],
    ("sweet", 2): [(1.0, 0.8), (2.0, 0.75), (3.0, 0.6)],
}


def test_speedup_summary_by_hand() -> None:
    frame = speedup_summary(curve_frame(CURVES), speedups=(1.5, 3.0, 3.5))
    at = frame.set_index(["method", "speedup"])
    assert at.loc[("ee", 1.5), "score_mean"] == pytest.approx(0.80)  # 0.85 and 0.75
    assert at.loc[("ee", 1.5), "score_std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert at.loc[("ee", 3.0), "score_mean"] == pytest.approx(0.65)
    assert at.loc[("sweet", 3.0), "score_mean"] == pytest.approx(0.65)
    assert math.isnan(at.loc[("sweet", 3.5), "score_mean"]) and at.loc[("sweet", 3.5), "n_seeds"] == 0
    assert set(frame.columns) >= {"task", "model", "budget", "method", "strategy", "speedup", "score_mean",
                                  "score_std", "n_seeds"}


def test_auc_uses_the_range_all_methods_share() -> None:
    frame = auc_summary(curve_frame(CURVES)).set_index("method")
    assert (frame["speedup_min"] == 1.0).all() and (frame["speedup_max"] == 3.0).all()
    # EE seed 1 over [1, 3]: (0.85·1 + 0.75·1) / 2 = 0.80; seed 2: 0.70.
    assert frame.loc["ee", "auc_mean"] == pytest.approx(0.75)
    # SWEET seed 1: (0.875 + 0.775) / 2 = 0.825; seed 2: 0.725.
    assert frame.loc["sweet", "auc_mean"] == pytest.approx(0.775)
    assert frame.loc["sweet", "auc_std"] == pytest.approx(math.sqrt(2 * 0.05**2))


def test_oracle_rows_do_not_enter_the_curves() -> None:
    curves = curve_frame(CURVES)
    oracle = curves.iloc[[0]].assign(strategy="oracle", speedup=8.0, score=0.99, threshold=np.nan)
    with_oracle = pd.concat([curves, oracle])
    pd.testing.assert_frame_equal(auc_summary(with_oracle), auc_summary(curves))


# ------------------------------------------------------------------------------------------ paired comparisons


def test_t_interval_by_hand() -> None:
    # mean 2, sample sd 1, n 3: half-width t(0.975, 2) · 1 / √3, with t(0.975, 2) = 4.302652729749464
    mean, low, high, n = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (mean, n) == (2.0, 3) and (low, high) == pytest.approx((2 - half, 2 + half), rel=1e-12)
    # two seeds: t(0.975, 1) = 12.706204736174698, sd = |d1 − d2| / √2
    mean, low, high, n = t_interval([0.5, 1.5])
    half = 12.706204736174698 * (1 / math.sqrt(2)) / math.sqrt(2)
    assert (low, high) == pytest.approx((1 - half, 1 + half), rel=1e-12)
    narrow = t_interval([1.0, 2.0, 3.0], level=0.5)
    assert 1.0 < narrow[1] < narrow[2] < 3.0
    assert t_interval([0.2, 0.2, 0.2])[1:3] == pytest.approx((0.2, 0.2))  # no spread, no width
    mean, low, high, n = t_interval([0.3, float("nan")])
    assert (mean, n) == (0.3, 1) and math.isnan(low) and math.isnan(high)
    assert t_interval([])[3] == 0


def test_pairwise_differences_by_hand() -> None:
    exits = exit_frame()
    pairs = pairwise_differences(curve_frame(CURVES), exits, speedups=(1.5, 3.0))
    at = pairs[(pairs["measure"] == "score_at_speedup") & (pairs["comparison"] == "SWEET-EE")].set_index("speedup")
    # SWEET − EE at 1.5x: 0.875 − 0.85 and 0.775 − 0.75, both +0.025
    assert at.loc[1.5, "diff_mean"] == pytest.approx(0.025)
    assert (at.loc[1.5, "ci_low"], at.loc[1.5, "ci_high"]) == pytest.approx((0.025, 0.025))
    assert at.loc[3.0, "diff_mean"] == pytest.approx(0.0) and at.loc[3.0, "n_seeds"] == 2
    auc = pairs[(pairs["measure"] == "auc") & (pairs["comparison"] == "SWEET-EE")]
    assert auc["diff_mean"].item() == pytest.approx(0.025)
    ex = pairs[pairs["measure"] == "exit"].set_index(["comparison", "exit"])
    assert ex.loc[("SWEET-EE", 1), "diff_mean"] == pytest.approx(0.05)
    mm = ex.loc[("MM-EE", 1)]
    assert mm["diff_mean"] == pytest.approx(0.08) and mm["n_seeds"] == 1 and math.isnan(mm["ci_low"])
    avg = pairs[(pairs["measure"] == "exit_average") & (pairs["comparison"] == "SWEET-EE")]
    assert avg["diff_mean"].item() == pytest.approx(0.025)  # per seed: (0.05+0.02)/2 and (0.05-0.02)/2
    assert list(pairs["comparison"].unique()) == ["SWEET-EE", "MM-EE", "SWEET-MM"]


# ------------------------------------------------------------------------------------------ gradient conflict


def test_gradient_conflict_pooled_over_seeds_and_steps() -> None:
    rows = []
    for seed, step, other, cosine in [(1, 0, "2", -0.2), (1, 10, "2", -0.4), (2, 0, "2", 0.0),
                                      (1, 0, "sum", -0.5), (2, 0, "sum", -0.3)]:
        rows.append({**IDENT, "method": "ee", "seed": seed, "step": step, "block": 1, "exit": 1, "other": other,
                     "cosine": cosine})
    frame = pd.DataFrame(rows)
    pooled = gradient_conflict_summary(frame).set_index("other")
    assert pooled.loc["2", "cosine_mean"] == pytest.approx(-0.2) and pooled.loc["2", "n"] == 3
    assert pooled.loc["sum", "cosine_mean"] == pytest.approx(-0.4) and pooled.loc["sum", "n_seeds"] == 2
    assert list(pooled.index) == ["2", "sum"]
    steps = gradient_conflict_summary(frame, by_step=True)
    first = steps[(steps["other"] == "2") & (steps["step"] == 0)]
    assert first["cosine_mean"].item() == pytest.approx(-0.1)


# ------------------------------------------------------------------------------------------ collecting runs


def _write_run(root: Path, method: str, seed: int, conflict: bool = False) -> Path:
    run = root / "t" / "m" / "b10" / method / f"s{seed}"
    run.mkdir(parents=True)
    curve_frame({(method, seed): CURVES[(method, seed)]}).to_csv(run / "curves.csv", index=False)
    exit_frame({(method, seed): EXIT_SCORES[(method, seed)]}).to_csv(run / "individual_exits.csv", index=False)
    if conflict:
        pd.DataFrame([{**IDENT, "method": method, "seed": seed, "step": 0, "block": 1, "exit": 1, "other": "sum",
                       "cosine": -0.1}]).to_csv(run / "gradient_conflict.csv", index=False)
    return run


def test_collect_reports_missing_runs_and_is_order_independent(tmp_path: Path) -> None:
    runs = [_write_run(tmp_path, m, s, conflict=m == "ee") for m, s in [("sweet", 2), ("ee", 1), ("ee", 2)]]
    missing_run = tmp_path / "t" / "m" / "b10" / "sweet" / "s1"
    missing_run.mkdir(parents=True)  # started, not finished
    first = collect([*runs, missing_run])
    second = collect([missing_run, *reversed(runs)])
    for name in ("curves", "exits", "conflict", "runs"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.missing["run"].tolist() == [missing_run.as_posix()]
    assert first.missing["status"].tolist() == ["never started"]  # an empty folder, no logs
    exits = first.exits
    assert exits[["method", "seed"]].drop_duplicates().values.tolist() == [["ee", 1], ["ee", 2], ["sweet", 2]]
    assert len(first.conflict) == 2 and first.conflict["other"].tolist() == ["sum", "sum"]
    assert first.runs.set_index("run").loc[runs[0].as_posix(), "status"] == "finished"


def test_collect_refuses_broken_or_duplicate_runs(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "ee", 1)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("curves.csv", "individual_exits.csv"):
        (copy / name).write_bytes((run / name).read_bytes())
    with pytest.raises(UserError, match="more than one run folder"):
        collect([run, copy])
    pd.read_csv(run / "curves.csv").drop(columns="speedup").to_csv(run / "curves.csv", index=False)
    with pytest.raises(UserError, match="curves.csv: missing column"):
        collect([run])


def test_aggregate_cli_writes_every_table(tmp_path: Path) -> None:
    for m, s in [("ee", 1), ("ee", 2), ("sweet", 1), ("sweet", 2)]:
        _write_run(tmp_path / "runs", m, s, conflict=m == "ee")
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["aggregate", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "tables"),
                              "--speedups", "1.5,2", "--claims", '{"margin": 2}'])
    args.func(args)
    names = {p.name for p in (tmp_path / "tables").iterdir()}
    assert names == {"curves.csv", "individual_exits.csv", "individual_exits_summary.csv",
                     "individual_exits_summary.md", "individual_exits_summary.tex", "speedup_summary.csv",
                     "auc_summary.csv", "oracle_summary.csv", "pairwise_summary.csv", "gradient_conflict.csv",
                     "gradient_conflict_summary.csv", "gradient_conflict_by_step.csv", "claims.csv", "claims.md",
                     "runs.csv", "missing_runs.txt", "status.txt", "grid.json", "training_loss.csv",
                     # held-out operating points and risk control (empty here: these runs have neither CSV)
                     "claims_operating_points.csv", "operating_points.csv", "envelope_gap.csv", "risk_control.csv",
                     "risk_control_summary.csv", "risk_control_common.csv",
                     # every method against EE; multi-stage methods' stages (header only here)
                     "methods.csv", "training_stages.csv"}
    assert (tmp_path / "tables" / "missing_runs.txt").read_text() == ""
    assert (tmp_path / "tables" / "status.txt").read_text() == "complete: all 4 runs finished.\n"
    assert "± 2 point" in (tmp_path / "tables" / "claims.md").read_text()
    speed = pd.read_csv(tmp_path / "tables" / "speedup_summary.csv")
    assert sorted(speed["speedup"].unique()) == [1.5, 2.0]
    with pytest.raises(UserError, match="no runs given"):
        args = parser.parse_args(["aggregate", "--out", str(tmp_path / "t2")])
        args.func(args)
    with pytest.raises(UserError, match="--claims: unknown key 'margins'"):
        args = parser.parse_args(["aggregate", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "t3"),
                                  "--claims", '{"margins": 2}'])
        args.func(args)
    with pytest.raises(UserError, match=r"--risk-control: error_offsets must be a list of numbers in \[0, 1\)"):
        args = parser.parse_args(["aggregate", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "t4"),
                                  "--risk-control", '{"error_offsets": [1.5]}'])
        args.func(args)
    assert not any((tmp_path / t).exists() for t in ("t2", "t3", "t4"))


def test_aggregate_is_deterministic(tmp_path: Path) -> None:
    runs = [_write_run(tmp_path / "runs", m, s) for m, s in [("ee", 1), ("ee", 2), ("sweet", 1), ("sweet", 2)]]
    aggregate(runs, tmp_path / "a")
    aggregate(list(reversed(runs)), tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
