"""Every method of a grid in the reporting: methods.csv on hand-made rows (exact means, stds, Δ vs EE and their
t intervals), a grid without EE, one seed, the registry's order, labels, colours and markers (five methods, and
names the registry does not know), steps per layout, and a five-method grid with a two-stage method end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_figures
from test_figures import write_fake_run

from sweet import methods as registry
from sweet.plan.status import NOT_FOR, STEPS
from sweet.reporting.collect import (
    DISPLAY,
    METHOD_ORDER,
    RUN_KEYS,
    display_name,
    methods_in_order,
    read_table,
    sort_frame,
)
from sweet.reporting.figures import (
    EXTRA_COLOURS,
    EXTRA_MARKERS,
    MARKERS,
    PALETTE,
    colour,
    make_figures,
    marker,
    per_exit_names,
    stage_boundaries,
)
from sweet.reporting.report import make_report, methods_blocks
from sweet.reporting.statistics import METHODS_COLUMNS, methods_summary
from sweet.reporting.tables import aggregate

T2 = 4.302652729749462  # Student-t 97.5% quantile, 2 degrees of freedom (3 seeds)
SETTING = {"task": "t", "model": "m", "budget": 100}


# ------------------------------------------------------------------------------------------------ hand-made rows
def exit_frame(scores: dict[str, dict[int, list[float]]], seeds=(1, 2, 3), setting: dict = SETTING) -> pd.DataFrame:
    """Rows of individual_exits.csv: ``scores[method][exit]`` is one score per seed; exits after layers 2, 4."""
    rows = [{**setting, "method": method, "seed": seed, "exit": exit_index, "exit_layer": 2 * exit_index,
             "score": score, "metric": "accuracy"}
            for method, by_exit in scores.items() for exit_index, per_seed in by_exit.items()
            for seed, score in zip(seeds, per_seed)]
    return pd.DataFrame(rows)


def curve_frame(points: dict[str, list[float]], step: dict[str, float], seeds=(1, 2, 3),
                setting: dict = SETTING) -> pd.DataFrame:
    """Rows of curves.csv: the confidence rule at speedups 1, 2, 4 with ``points[method]`` + ``step[method]`` ×
    (seed − 1) (decreasing, so every point is on the Pareto front), an entropy curve and an oracle point that
    methods.csv must ignore."""
    rows = []
    for method, scores in points.items():
        for seed in seeds:
            shift = step[method] * (seed - 1)
            for threshold, (speedup, score) in enumerate(zip((1.0, 2.0, 4.0), scores)):
                rows.append({**setting, "method": method, "seed": seed, "strategy": "confidence",
                             "threshold": threshold / 10, "score": score + shift, "metric": "accuracy",
                             "speedup": speedup})
                rows.append({**setting, "method": method, "seed": seed, "strategy": "entropy",
                             "threshold": threshold / 10, "score": 0.1, "metric": "accuracy", "speedup": speedup})
            rows.append({**setting, "method": method, "seed": seed, "strategy": "oracle", "threshold": np.nan,
                         "score": 0.99, "metric": "accuracy", "speedup": 3.0})
    return pd.DataFrame(rows)


EXITS = {"ee": {1: [0.60, 0.62, 0.64], 2: [0.80, 0.80, 0.80]},
         "sweet": {1: [0.65, 0.66, 0.70], 2: [0.78, 0.79, 0.80]},
         "pabee": {1: [0.61, 0.63, 0.65], 2: [0.80, 0.81, 0.82]}}
CURVES = {"ee": [0.80, 0.70, 0.50], "sweet": [0.80, 0.74, 0.60]}
STEP = {"ee": 0.01, "sweet": 0.02}


def row(table: pd.DataFrame, method: str, measure: str, exit_index: float | None = None,
        speedup: float | None = None) -> pd.Series:
    pick = (table["method"] == method) & (table["measure"] == measure)
    if exit_index is not None:
        pick &= table["exit"] == exit_index
    if speedup is not None:
        pick &= table["speedup"] == speedup
    found = table[pick]
    assert len(found) == 1, found
    return found.iloc[0]


def check(found: pd.Series, mean: float, std: float, n: int, delta: float, sd_delta: float, n_paired: int) -> None:
    """``found`` against hand-computed values: mean, std over ``n`` seeds; Δ ± t·sd/√n over ``n_paired``."""
    assert found["mean"] == pytest.approx(mean, abs=1e-12)
    assert found["std"] == pytest.approx(std, abs=1e-12)
    assert found["n_seeds"] == n and found["n_paired"] == n_paired
    half = T2 * sd_delta / math.sqrt(n_paired)
    assert found["delta_vs_ee"] == pytest.approx(delta, abs=1e-12)
    assert found["ci_low"] == pytest.approx(delta - half, abs=1e-12)
    assert found["ci_high"] == pytest.approx(delta + half, abs=1e-12)


def test_methods_table_on_hand_made_rows() -> None:
    table = methods_summary(curve_frame(CURVES, STEP), exit_frame(EXITS), "confidence", (1.5, 3.0, 5.0))
    assert list(table.columns) == METHODS_COLUMNS
    # SWEET's exit 1: scores 0.65, 0.66, 0.70 (deviations −0.02, −0.01, +0.03: variance 0.0014 / 2); EE's 0.60,
    # 0.62, 0.64, so the paired differences are 0.05, 0.04, 0.06 (sd 0.01)
    check(row(table, "sweet", "exit", 1), 0.67, math.sqrt(0.0007), 3, 0.05, 0.01, 3)
    # mean over exits per seed: EE 0.70, 0.71, 0.72; SWEET 0.715, 0.725, 0.75 (deviations −0.015, −0.005, +0.02):
    # differences 0.015, 0.015, 0.03 (deviations −0.005, −0.005, +0.01)
    check(row(table, "sweet", "exit_average"), 0.73, math.sqrt(0.00065 / 2), 3, 0.02, math.sqrt(0.00015 / 2), 3)
    # PABEE's exit 1 is EE's + 0.01 on every seed: a zero-width interval
    check(row(table, "pabee", "exit", 1), 0.63, 0.02, 3, 0.01, 0.0, 3)
    # at 1.5×, halfway between the 1× and 2× points: EE 0.75 + 0.01(s−1), SWEET 0.77 + 0.02(s−1)
    check(row(table, "sweet", "score_at_speedup", speedup=1.5), 0.79, 0.02, 3, 0.03, 0.01, 3)
    ee3 = row(table, "ee", "score_at_speedup", speedup=3.0)
    assert ee3["mean"] == pytest.approx(0.61) and ee3["std"] == pytest.approx(0.01)
    assert np.isnan(ee3["delta_vs_ee"]) and np.isnan(ee3["ci_low"]) and ee3["n_paired"] == 0  # EE is the reference
    check(row(table, "sweet", "score_at_speedup", speedup=3.0), 0.69, 0.02, 3, 0.08, 0.01, 3)
    # normalised AUC over [1, 4] (the range both curves cover): (1 × (a+b)/2 + 2 × (b+c)/2) / 3
    ee_auc, sweet_auc = (0.75 + 2 * 0.60) / 3, (0.77 + 2 * 0.67) / 3
    auc = row(table, "sweet", "auc")
    check(auc, sweet_auc + 0.02, 0.02, 3, sweet_auc - ee_auc + 0.01, 0.01, 3)
    assert (auc["strategy"], auc["speedup_min"], auc["speedup_max"]) == ("confidence", 1.0, 4.0)
    # 5× lies beyond every curve: undefined, never extrapolated
    beyond = row(table, "sweet", "score_at_speedup", speedup=5.0)
    assert np.isnan(beyond["mean"]) and beyond["n_seeds"] == 0 and np.isnan(beyond["delta_vs_ee"])
    # PABEE has no curves here: its exits only; the rows come in registry order, measures in the table's order
    assert set(table.loc[table["method"] == "pabee", "measure"]) == {"exit", "exit_average"}
    assert list(dict.fromkeys(table["method"])) == ["ee", "sweet", "pabee"]
    assert list(dict.fromkeys(table.loc[table["method"] == "sweet", "measure"])) == \
        ["exit", "exit_average", "auc", "score_at_speedup"]
    assert set(table["label"]) == {"EE", "SWEET", "PABEE"}
    assert set(table["strategy"].dropna()) <= {"", "confidence"}  # entropy and oracle left out


def test_methods_table_without_ee_and_with_one_seed() -> None:
    exits = {m: v for m, v in EXITS.items() if m != "ee"}
    table = methods_summary(curve_frame({"sweet": CURVES["sweet"]}, STEP), exit_frame(exits))
    assert not table.empty and table["delta_vs_ee"].isna().all() and table["ci_low"].isna().all()
    assert (table["n_paired"] == 0).all()
    assert row(table, "sweet", "exit", 1)["mean"] == pytest.approx(0.67)
    blocks = methods_blocks(table)
    assert len(blocks) == 1 and "no EE runs, so no Δ" in blocks[0][1]
    assert "Δ" not in "".join(str(c) for c in blocks[0][2].to_numpy().ravel())

    one = methods_summary(curve_frame(CURVES, STEP, seeds=(1,)), exit_frame(EXITS, seeds=(1,)))
    sweet = row(one, "sweet", "exit", 1)
    assert sweet["mean"] == pytest.approx(0.65) and np.isnan(sweet["std"]) and sweet["n_seeds"] == 1
    assert sweet["delta_vs_ee"] == pytest.approx(0.05) and sweet["n_paired"] == 1
    assert np.isnan(sweet["ci_low"]) and np.isnan(sweet["ci_high"])
    assert methods_summary(curve_frame({}, {}), exit_frame({})).empty


def test_methods_table_pairs_seeds_per_setting() -> None:
    """Two settings: a seed of one setting is never paired with the same seed of the other; a seed EE lacks is in
    the method's mean but not in its Δ."""
    other = {"task": "t", "model": "m", "budget": 200}
    exits = pd.concat([exit_frame(EXITS),
                       exit_frame({"ee": {1: [0.5, 0.5]}, "sweet": {1: [0.9, 0.8]}}, seeds=(1, 2), setting=other),
                       exit_frame({"sweet": {1: [0.7]}}, seeds=(3,), setting=other)])
    table = methods_summary(curve_frame({}, {}), exits)
    at_200 = table[table["budget"] == 200]
    sweet = row(at_200, "sweet", "exit", 1)
    assert sweet["mean"] == pytest.approx(0.8) and sweet["n_seeds"] == 3
    assert sweet["delta_vs_ee"] == pytest.approx(0.35) and sweet["n_paired"] == 2
    # differences 0.4, 0.3: sd 0.05·√2, half-width t(1) · sd / √2
    assert sweet["ci_high"] - sweet["delta_vs_ee"] == pytest.approx(12.706204736174694 * 0.05)
    check(row(table[table["budget"] == 100], "sweet", "exit", 1), 0.67, math.sqrt(0.0007), 3, 0.05, 0.01, 3)


# ------------------------------------------------------------------------------------------------ the registry
def test_order_labels_colours_and_markers_come_from_the_registry() -> None:
    # the paper's three exactly as before: first, same labels, colours and markers
    assert METHOD_ORDER[:3] == ["ee", "sweet", "mm"] and list(registry.names()) == METHOD_ORDER
    assert [DISPLAY[m] for m in ("ee", "sweet", "mm")] == ["EE", "SWEET", "MM"]
    assert [PALETTE[m] for m in ("ee", "sweet", "mm")] == ["#0072B2", "#D55E00", "#009E73"]
    assert [MARKERS[m] for m in ("ee", "sweet", "mm")] == ["o", "s", "^"]
    for name, method in registry.METHODS.items():
        assert (display_name(name), colour(name), marker(name)) == (method.label, method.color, method.marker)
    five = ["ee", "sweet", "mm", "pabee", "deebert"]
    assert len({colour(m) for m in five}) == 5 and len({marker(m) for m in five}) == 5
    # every registered method is told apart from every other
    assert len(set(PALETTE.values())) == len(PALETTE) and len(set(MARKERS.values())) == len(MARKERS)


def test_unknown_methods_sort_last_and_show_their_name() -> None:
    assert methods_in_order(["zeta", "mm", "ee", "alpha", "deebert", "sep"]) == \
        ["ee", "mm", "deebert", "sep", "alpha", "zeta"]
    assert display_name("zeta") == "zeta"
    frame = sort_frame(pd.DataFrame({"method": ["zeta", "ge", "ee"], "x": [1, 2, 3]}), ["method"])
    assert list(frame["method"]) == ["ee", "ge", "zeta"]
    for name in ("zeta", "alpha", "my_method"):
        assert colour(name) in EXTRA_COLOURS and colour(name) not in PALETTE.values()
        assert marker(name) in EXTRA_MARKERS and marker(name) not in MARKERS.values()
        assert colour(name) == colour(name)  # by name: the same in every figure
    table = methods_summary(curve_frame({}, {}), exit_frame({"ee": EXITS["ee"], "zeta": EXITS["sweet"]}))
    assert list(dict.fromkeys(table["method"])) == ["ee", "zeta"]
    assert row(table, "zeta", "exit", 1)["label"] == "zeta"
    assert row(table, "zeta", "exit", 1)["delta_vs_ee"] == pytest.approx(0.05)


def test_steps_per_layout_and_per_exit_wording() -> None:
    for name, method in registry.METHODS.items():
        assert NOT_FOR[name] == ({"train"} if method.per_exit else {"train_member", "combine"}), name
    assert NOT_FOR.get("zeta", set()) == set() and {s for s, _ in STEPS} >= NOT_FOR["ee"] | NOT_FOR["mm"]
    assert per_exit_names(["ee", "mm", "deebert"]) == "MM" and per_exit_names(["ee", "zeta"]) == ""


def test_stage_boundaries_lie_between_stages() -> None:
    stages = pd.DataFrame({"method": ["deebert"] * 4, "seed": [1, 1, 2, 2], "stage_index": [1, 2, 1, 2],
                           "stage": ["last-exit", "early-exits"] * 2, "step_min": [10, 60, 10, 70],
                           "step_max": [50, 100, 60, 110]})
    assert stage_boundaries(stages) == {"deebert": [(55 + 65) / 2]}
    assert stage_boundaries(None) == {} and stage_boundaries(stages[stages["stage_index"] == 1]) == {}


# ------------------------------------------------------------------------------------------------ end to end
FIVE = ("ee", "sweet", "mm", "pabee", "deebert")


def write_two_stage_record(run: Path, seed: int) -> None:
    """DeeBERT's training record: stage 1 (every exit logged) then stage 2 on the continued step axis."""
    record = json.loads((run.parent / "train_metrics.json").read_text())
    entries = [e for e in record["log_history"] if "loss_exit_1" in e]
    first = [{**e, "stage": "last-exit"} for e in entries]
    second = [{**e, "step": e["step"] + 100, "stage": "early-exits"} for e in entries]
    record["log_history"] = [*first, *second, {"step": 200, "train_runtime": 1.0, "train_loss": 0.5}]
    (run.parent / "train_metrics.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def five_methods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("five")
    margins = {**test_figures.MARGINS, "pabee": [0.3, 0.85, 1.15, 1.6], "deebert": [0.25, 0.7, 1.0, 1.62],
               "ge": [0.4, 0.9, 1.2, 1.55]}
    original = dict(test_figures.MARGINS)
    test_figures.MARGINS.update(margins)
    try:
        runs = []
        for method in (*FIVE, "zeta"):
            for seed in (1, 2):
                run = root / "runs" / "synthetic" / "tiny-bert" / "b100" / f"{method}-0000000{seed}" / f"s{seed}" \
                    / "cal-pool1000"
                # a method the registry does not know (a hand-made run, or one renamed since): its curves are
                # computed as GE's (the cost model needs a registered layout), then relabelled
                write_fake_run(run, "synthetic", "tiny-bert", 100, "ge" if method == "zeta" else method, seed)
                if method == "zeta":
                    for name in ("curves.csv", "individual_exits.csv"):
                        pd.read_csv(run / name).assign(method="zeta").to_csv(run / name, index=False)
                if method == "deebert":
                    write_two_stage_record(run, seed)
                runs.append(run)
    finally:
        test_figures.MARGINS.clear()
        test_figures.MARGINS.update(original)
    aggregate(runs, root / "tables", targets=(1.5, 2.0))
    make_figures(root / "tables", root / "figures", formats=("png",))
    make_report(root / "tables", root / "figures", root / "report.html")
    return root


def test_five_methods_end_to_end(five_methods: Path) -> None:
    tables = five_methods / "tables"
    methods = read_table(tables / "methods.csv")
    assert list(dict.fromkeys(methods["method"])) == [*FIVE, "zeta"]  # registry order, the unknown one last
    assert sorted(methods.loc[methods["measure"] == "score_at_speedup", "speedup"].unique()) == [1.5, 2.0]
    assert methods.loc[methods["method"] == "ee", "delta_vs_ee"].isna().all()
    assert methods.loc[methods["method"] != "ee", "delta_vs_ee"].notna().any()
    # the same numbers as the tables the claims and pairwise differences are built from
    pairwise = read_table(tables / "pairwise_summary.csv")
    at2 = pairwise[(pairwise["measure"] == "score_at_speedup") & (pairwise["comparison"] == "SWEET-EE")
                   & (pairwise["strategy"] == "confidence") & (pairwise["speedup"] == 2.0)].iloc[0]
    mine = row(methods, "sweet", "score_at_speedup", speedup=2.0)
    assert (mine["delta_vs_ee"], mine["ci_low"], mine["ci_high"]) == pytest.approx(
        (at2["diff_mean"], at2["ci_low"], at2["ci_high"]))
    claims = read_table(tables / "claims.csv")
    claim4 = claims[(claims["claim"] == "4") & (claims["scope"] == "setting")].iloc[0]  # EE − MM, AUC, points
    assert claim4["estimate"] == pytest.approx(-100 * row(methods, "mm", "auc")["delta_vs_ee"])
    # DeeBERT's two stages, on its continued step axis
    stages = read_table(tables / "training_stages.csv")
    assert set(stages["method"]) == {"deebert"} and list(stages["stage"].unique()) == ["last-exit", "early-exits"]
    assert (stages.groupby("seed")["step_max"].first() == 100).all()
    assert (stages[stages["stage"] == "early-exits"]["step_min"] == 110).all()
    losses = read_table(tables / "training_loss.csv")
    assert losses.loc[losses["method"] == "deebert", "step"].max() == 200
    index = json.loads((five_methods / "figures" / "index.json").read_text())
    caption = next(f["caption"] for f in index["figures"] if f["section"] == "training_loss")
    assert "DeeBERT: last-exit → early-exits" in caption and "MM's exit k is its member k" in caption
    report = (five_methods / "report.html").read_text()
    assert "Every method against EE" in report
    for label in ("EE", "SWEET", "MM", "PABEE", "DeeBERT", "zeta"):
        assert f"<td>{label}</td>" in report
    assert (RUN_KEYS[0] in methods.columns) and methods["n_seeds"].max() == 2
