"""Held-out operating points and risk control through the reporting: a fake grid's per-run CSVs (written by the
real functions from fake logits) → tables (envelope gap with seed-paired intervals, risk summary, the claims both
ways) → figures with captions → the report's section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_figures import _accuracy, fake_logits, write_fake_run

from sweet.curves import curve_rows, with_meta
from sweet.exits import EXIT_RULES
from sweet.operating_points import operating_point_rows
from sweet.reporting.claims import ClaimSettings, check_claims
from sweet.reporting.collect import CommonTargetSettings, read_table
from sweet.reporting.figures import make_figures
from sweet.reporting.report import make_report
from sweet.reporting.statistics import t_interval
from sweet.reporting.tables import aggregate
from sweet.risk import risk_control_rows

# every registered rule except the learned one: these fake runs store no learned-to-exit scores
RULES = sum(not rule.needs_lte for rule in EXIT_RULES.values())

SEEDS = (1, 2, 3)
OFFSETS = (0.0, 0.02, 0.1)  # 0: as accurate as the best full model, which no weaker last exit can be


def write_held_out(run: Path, meta: dict, method: str, seed: int) -> None:
    evaluation = fake_logits(method, seed + 1000)  # what write_fake_run's curves.csv is made of (budget 1000)
    calibration = fake_logits(method, seed + 5000)
    curves = [curve_rows(x, ["accuracy"], "accuracy", _accuracy) for x in (calibration, evaluation)]
    with_meta(operating_point_rows(*curves, [1.5, 2.0, 3.0]), meta).to_csv(run / "operating_points.csv", index=False)
    risk = risk_control_rows(calibration, evaluation, ["accuracy"], "accuracy", _accuracy, epsilons=[0.02, 0.05])
    with_meta(risk, meta).to_csv(run / "risk_control.csv", index=False)
    # what the aggregation reads for the common error target (sweet.reporting.collect.common_target_rows)
    np.savez(run / "calibration_logits.npz", **calibration)
    np.savez(run / "logits.npz", **evaluation)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held_out")
    runs = []
    for method in ("ee", "sweet", "mm"):
        for seed in SEEDS:
            run = root / "runs" / "synthetic" / "tiny-bert" / "b1000" / method / f"s{seed}"
            meta = {"task": "synthetic", "model": "tiny-bert", "budget": 1000, "method": method, "seed": seed}
            write_fake_run(run, "synthetic", "tiny-bert", 1000, method, seed)
            write_held_out(run, meta, method, seed)
            runs.append(run)
    aggregate(runs, root / "tables", common_target=CommonTargetSettings(OFFSETS, 0.05))
    make_figures(root / "tables", root / "figures", formats=["png"])
    make_report(root / "tables", root / "figures", root / "report.html")
    return root


def test_envelope_gap_is_the_seed_paired_difference_with_a_t_interval(grid: Path) -> None:
    points = read_table(grid / "tables" / "operating_points.csv")
    gap = read_table(grid / "tables" / "envelope_gap.csv")
    assert len(points) == 3 * 3 * RULES * 3  # methods × seeds × exit rules × targets
    row = gap[(gap["method"] == "sweet") & (gap["strategy"] == "confidence") & (gap["target_speedup"] == 2.0)]
    assert len(row) == 1
    mine = points[(points["method"] == "sweet") & (points["strategy"] == "confidence")
                  & (points["target_speedup"] == 2.0)].sort_values("seed")
    mean, low, high, n = t_interval((mine["envelope_score"] - mine["eval_score"]).to_numpy())
    assert n == 3
    np.testing.assert_allclose(row[["gap_mean", "ci_low", "ci_high"]].to_numpy()[0], [mean, low, high], atol=1e-6)  # CSV rounding
    # the envelope is optimistic on average over the grid: it picks the best threshold on the evaluation examples
    assert gap["gap_mean"].mean() > 0


def test_claims_read_the_held_out_points_when_asked(grid: Path) -> None:
    from sweet.reporting.collect import collect

    collected = collect(sorted((grid / "runs").glob("*/*/*/*/s*")))
    envelope = check_claims(collected.curves, collected.exits, ClaimSettings())
    held_out = check_claims(collected.curves, collected.exits, ClaimSettings(operating_points="held-out"),
                            collected.operating_points)
    speed = ["3-fast-ee", "3-fast-mm", "3-slow", "4"]
    e, h = (f[f["scope"] == "setting"].set_index("claim") for f in (envelope, held_out))
    assert (e.loc["1", "estimate"] == h.loc["1", "estimate"])  # per-exit claims do not change
    assert all(h.loc[c, "measure"].startswith("held-out") for c in speed)
    # claim 3-fast-ee by hand: SWEET − EE of the mean held-out score over targets ≥ 2×, paired by seed, in points
    p = collected.operating_points
    p = p[(p["strategy"] == "confidence") & (p["target_speedup"] >= 2.0)]
    per_run = p.groupby(["method", "seed"])["eval_score"].mean().unstack("method")
    mean, low, high, _ = t_interval(((per_run["sweet"] - per_run["ee"]) * 100).to_numpy())
    np.testing.assert_allclose(h.loc["3-fast-ee", ["estimate", "ci_low", "ci_high"]].astype(float), [mean, low, high], atol=1e-6)
    # runs without operating points (finished before they existed): the speed claims say so
    none = check_claims(collected.curves, collected.exits, ClaimSettings(operating_points="held-out"))
    pooled = none[none["scope"] == "pooled"].set_index("claim")
    assert all(pooled.loc[c, "verdict"].startswith("not tested (no held-out operating points") for c in speed)
    both = read_table(grid / "tables" / "claims_operating_points.csv")
    assert set(both["operating_points"]) == {"envelope", "held-out"} and set(both["claim"]) == set(speed)


def test_risk_tables_figure_and_report_section(grid: Path) -> None:
    risk = read_table(grid / "tables" / "risk_control.csv")
    assert len(risk) == 3 * 3 * RULES * 2 * 2  # methods × seeds × rules × risks × ε
    certified = risk[risk["certified"]]
    assert not certified.empty and (certified["upper_bound"] <= certified["epsilon"]).all()
    summary = read_table(grid / "tables" / "risk_control_summary.csv")
    assert summary["n_certified"].max() <= 3
    index = pd.read_json(grid / "figures" / "index.json", typ="series")
    entries = {Path(f["files"][0]).stem: f for f in index["figures"] if f["section"] == "risk_control"}
    assert set(entries) == {"synthetic__tiny-bert__b1000", "synthetic__tiny-bert__b1000__tradeoff"}
    own = entries["synthetic__tiny-bert__b1000"]
    assert "fixed-sequence" in own["caption"] and "not a ranking of methods" in own["caption"]
    tradeoff = entries["synthetic__tiny-bert__b1000__tradeoff"]
    assert "Filled markers: the error rate held to one target for every method, 0, 2, 10 points below" in \
        tradeoff["caption"]
    for entry in entries.values():
        assert (grid / "figures" / entry["files"][0]).is_file()
    html = (grid / "report.html").read_text()
    assert "Held-out operating points and risk control" in html
    assert "envelope − held-out" in html and "Risk control, confidence exit rule" in html
    assert "Risk control on a common footing, confidence exit rule" in html
    assert "The certified accuracy–speed trade-off, synthetic · tiny-bert" in html  # the figure's caption


def test_common_target_is_the_best_last_exit_on_the_calibration_split_per_seed(grid: Path) -> None:
    from sweet.reporting.collect import collect, common_target_rows

    runs = sorted((grid / "runs").glob("*/*/*/*/s*"))
    common = common_target_rows(collect(runs), CommonTargetSettings(OFFSETS, 0.05))
    assert len(common) == 3 * 3 * RULES * len(OFFSETS)  # methods × seeds × rules × offsets
    for seed in SEEDS:
        last = {}
        for method in ("ee", "sweet", "mm"):  # the calibration logits write_held_out stored, by hand
            calibration = fake_logits(method, seed + 5000)
            last[method] = float((calibration["exit_logits"][-1].argmax(-1) == calibration["labels"]).mean())
        best = max(last, key=last.get)
        mine = common[common["seed"] == seed]
        assert set(mine["reference_method"]) == {best} and set(mine["reference_accuracy"]) == {last[best]}
        for method, accuracy in last.items():
            assert set(mine.loc[mine["method"] == method, "last_exit_accuracy"]) == {accuracy}
        np.testing.assert_allclose(mine["target_accuracy"], last[best] - mine["offset"], rtol=0, atol=1e-15)
        np.testing.assert_allclose(mine["epsilon"], 1 - mine["target_accuracy"], rtol=0, atol=1e-15)
    # offset 0: every method but the reference has a weaker last exit, so it is not certified, and says why
    below = common[common["last_exit_accuracy"] < common["target_accuracy"]]
    assert len(below) >= 2 * 3 * RULES  # the two other methods of every seed at offset 0, at least
    assert not below["certified"].any() and (below["eval_speedup"] <= 1.0).all()
    assert below["why"].str.contains("own last exit has calibration accuracy .* below the target").all()
    assert common["certified"].any()  # 10 points below: the early exits get a chance
    certified = common[common["certified"]]
    assert (certified["upper_bound"] <= certified["epsilon"]).all()
    # the summary's common-target rows: the seeds' mean over certified seeds, beside the own-last-exit rows
    summary = read_table(grid / "tables" / "risk_control_summary.csv")
    assert set(summary["footing"]) == {"own-last-exit", "common-target"}
    row = summary[(summary["footing"] == "common-target") & (summary["method"] == "sweet")
                  & (summary["strategy"] == "confidence") & (summary["offset"] == 0.1)]
    mine = common[(common["method"] == "sweet") & (common["strategy"] == "confidence") & (common["offset"] == 0.1)]
    assert len(row) == 1 and row["n_certified"].iloc[0] == mine["certified"].sum() > 0
    expected = mine.loc[mine["certified"], "eval_speedup"].mean()
    assert row["certified_speedup_mean"].iloc[0] == pytest.approx(expected, rel=1e-5)  # CSV: 6 digits
    expected = mine.loc[mine["certified"], "eval_score"].mean()
    assert row["certified_score_mean"].iloc[0] == pytest.approx(expected, rel=1e-5)
    above = (mine["certified"] & (mine["eval_risk"] > mine["epsilon"])).sum()
    assert row["n_eval_above_epsilon"].iloc[0] == above  # certified seeds only: a full model below target breaks nothing
