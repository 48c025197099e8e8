"""The paper's claims, checked on hand-made numbers whose estimates and intervals are known exactly: one case per
verdict, the "comparable" claim's margin, a one-seed grid, pooling over tasks, and claims a grid cannot test."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sweet.reporting.claims import CLAIMS, ClaimSettings, check_claims, claims_markdown

T975 = {2: 4.302652729749464, 3: 3.182446305284263}  # Student-t 97.5% quantiles by degrees of freedom
EE_CURVE = [(1.0, 0.90), (1.5, 0.88), (2.0, 0.85), (3.0, 0.75), (4.0, 0.60)]  # speedup, score
EE_EXITS = [0.60, 0.72, 0.80]


def exits_rows(task: str, budget: int, method: str, seed: int, scores: list[float]) -> list[dict]:
    return [{"task": task, "model": "m", "budget": budget, "method": method, "seed": seed, "exit": k,
             "exit_layer": 2 * k, "score": s, "metric": "accuracy"} for k, s in enumerate(scores, start=1)]


def curve_rows(task: str, budget: int, method: str, seed: int, shift: float) -> list[dict]:
    """EE's curve moved up by ``shift`` at every speedup: its mean over any speed range moves by ``shift``."""
    return [{"task": task, "model": "m", "budget": budget, "method": method, "seed": seed,
             "strategy": "confidence", "threshold": i / 10, "score": score + shift, "metric": "accuracy",
             "speedup": speedup, "layer_fraction": 1 / speedup, "flops_fraction": 1 / speedup}
            for i, (speedup, score) in enumerate(EE_CURVE)]


def grid(shifts: dict[str, list[float]], exit_gains: dict[str, list[float]], tasks=("t",), budgets=(10,)):
    """Per method, one curve shift and one per-exit gain over EE per seed (seeds 1, 2, ...)."""
    curves, exits = [], []
    for task in tasks:
        for budget in budgets:
            for method in shifts:
                for seed, (shift, gain) in enumerate(zip(shifts[method], exit_gains[method]), start=1):
                    curves += curve_rows(task, budget, method, seed, shift)
                    exits += exits_rows(task, budget, method, seed, [s + gain for s in EE_EXITS])
    return pd.DataFrame(curves), pd.DataFrame(exits)


def rows(claims: pd.DataFrame, claim: str) -> pd.DataFrame:
    return claims[claims["claim"] == claim]


def setting(claims: pd.DataFrame, claim: str) -> pd.Series:
    found = rows(claims, claim)
    found = found[found["scope"] == "setting"]
    assert len(found) == 1
    return found.iloc[0]


def pooled(claims: pd.DataFrame, claim: str) -> pd.Series:
    found = rows(claims, claim)
    return found[found["scope"] == "pooled"].iloc[0]


def test_each_verdict_on_exact_numbers() -> None:
    # Every seed: MM's exits +2 points over EE's, SWEET's −1.5; curves: SWEET +3 points everywhere, MM −2.
    curves, exits = grid(shifts={"ee": [0, 0, 0], "sweet": [0.03] * 3, "mm": [-0.02] * 3},
                         exit_gains={"ee": [0, 0, 0], "sweet": [-0.015] * 3, "mm": [0.02] * 3})
    claims = check_claims(curves, exits)
    expected = {  # claim: (estimate in points, verdict)
        "1": (2.0, "reproduced"), "1-early": (2.0, "reproduced"), "2": (-1.5, "contradicted"),
        "3-fast-ee": (3.0, "reproduced"), "3-fast-mm": (5.0, "reproduced"),
        "3-slow": (3.0, "contradicted"),  # 3 points better is not "comparable" (outside ± 1)
        "4": (2.0, "reproduced"),
    }
    for claim, (estimate, verdict) in expected.items():
        row = setting(claims, claim)
        assert row["estimate"] == pytest.approx(estimate) and row["n"] == 3, claim
        # no spread between seeds: the interval is the estimate itself
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((estimate, estimate)), claim
        assert row["verdict"] == verdict, claim
    assert setting(claims, "1")["paper"] == 2.3 and setting(claims, "2")["paper"] == 1.1
    assert math.isnan(setting(claims, "4")["paper"])
    fast, slow = setting(claims, "3-fast-ee"), setting(claims, "3-slow")
    assert (fast["speedup_min"], fast["speedup_max"]) == (2.0, 4.0)
    assert (slow["speedup_min"], slow["speedup_max"]) == (1.0, 1.5)
    assert [c.id for c in CLAIMS] == list(dict.fromkeys(claims["claim"]))  # every claim, in order


def test_spread_over_seeds_gives_the_t_interval_and_inconclusive() -> None:
    # SWEET−EE per seed: +1, +2, +3 points. Mean 2, sd 1, half-width t(0.975, 2) / √3.
    curves, exits = grid(shifts={"ee": [0, 0, 0], "sweet": [0.01, 0.02, 0.03]},
                         exit_gains={"ee": [0, 0, 0], "sweet": [0.01, 0.02, 0.03]})
    row = setting(check_claims(curves, exits), "2")
    half = T975[2] / math.sqrt(3)
    assert row["estimate"] == pytest.approx(2.0)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert row["verdict"] == "inconclusive"  # the interval [−0.48, +4.48] straddles 0


@pytest.mark.parametrize(("shift", "margin", "verdict"), [
    (0.005, 1.0, "reproduced"),  # +0.5 points, inside ± 1
    (-0.009, 1.0, "reproduced"),  # −0.9 points
    (0.015, 1.0, "contradicted"),  # +1.5 points, outside ± 1
    (0.015, 2.0, "reproduced"),  # the margin is a setting
])
def test_comparable_at_slow_speeds_reads_the_margin(shift: float, margin: float, verdict: str) -> None:
    curves, exits = grid(shifts={"ee": [0, 0], "sweet": [shift, shift]}, exit_gains={"ee": [0, 0], "sweet": [0, 0]})
    row = setting(check_claims(curves, exits, ClaimSettings(margin=margin)), "3-slow")
    assert row["estimate"] == pytest.approx(100 * shift) and row["verdict"] == verdict
    assert f"± {margin:g} point" in row["statement"]


def test_comparable_with_a_wide_interval_is_inconclusive() -> None:
    curves, exits = grid(shifts={"ee": [0, 0, 0], "sweet": [-0.01, 0.0, 0.01]},
                         exit_gains={"ee": [0, 0, 0], "sweet": [0, 0, 0]})
    row = setting(check_claims(curves, exits), "3-slow")
    assert row["estimate"] == pytest.approx(0.0) and row["verdict"] == "inconclusive"  # ± 2.48 > ± 1


def test_speed_ranges_are_settings_and_may_not_be_reached() -> None:
    curves, exits = grid(shifts={"ee": [0, 0], "sweet": [0.03, 0.03]}, exit_gains={"ee": [0, 0], "sweet": [0, 0]})
    claims = check_claims(curves, exits, ClaimSettings(fast_speedup=3.0, slow_speedup=2.0))
    fast = setting(claims, "3-fast-ee")
    assert (fast["speedup_min"], fast["speedup_max"]) == (3.0, 4.0) and "≥ 3×" in fast["statement"]
    claims = check_claims(curves, exits, ClaimSettings(fast_speedup=5.0))
    fast = setting(claims, "3-fast-ee")
    assert math.isnan(fast["estimate"]) and fast["n"] == 0
    assert fast["verdict"] == "inconclusive (the curves do not share speedups ≥ 5×)"
    assert pooled(claims, "3-fast-ee")["verdict"] == fast["verdict"]


def test_one_seed_gives_no_verdict() -> None:
    curves, exits = grid(shifts={"ee": [0], "sweet": [0.03], "mm": [-0.02]},
                         exit_gains={"ee": [0], "sweet": [0.02], "mm": [0.03]}, tasks=("a", "b"))
    claims = check_claims(curves, exits)
    for claim in CLAIMS:
        row = setting(claims[claims["task"] == "a"], claim.id)
        assert row["n"] == 1 and math.isnan(row["ci_low"]) and row["verdict"] == "inconclusive (1 seed)"
        # pooled over two tasks there is an interval, but one seed per task is still no verdict
        assert pooled(claims, claim.id)["verdict"] == "inconclusive (1 seed)"
    assert setting(claims[claims["task"] == "a"], "1")["estimate"] == pytest.approx(3.0)


def test_pooled_row_averages_each_task_then_takes_the_interval_over_tasks() -> None:
    frames = []
    # MM−EE on exits, per task (both seeds alike): a: +1 at budget 10 and +3 at budget 20 (task mean +2);
    # b: +3; c: +4. Over tasks: 2, 3, 4 → mean 3, sd 1.
    for task, budget, gain in [("a", 10, 0.01), ("a", 20, 0.03), ("b", 10, 0.03), ("c", 10, 0.04)]:
        frames.append(grid(shifts={"ee": [0, 0], "mm": [0, 0]}, exit_gains={"ee": [0, 0], "mm": [gain, gain]},
                           tasks=(task,), budgets=(budget,)))
    curves = pd.concat([f[0] for f in frames], ignore_index=True)
    exits = pd.concat([f[1] for f in frames], ignore_index=True)
    claims = check_claims(curves, exits)
    row = pooled(claims, "1")
    half = T975[2] / math.sqrt(3)
    assert (row["estimate"], row["n"], row["n_of"]) == (pytest.approx(3.0), 3, "tasks")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert row["verdict"] == "reproduced"  # [+0.52, +5.48]
    assert len(rows(claims, "1")) == 1 + 4  # the pooled row, then each task × model × budget
    # one task only: no interval over tasks
    one = check_claims(*grid(shifts={"ee": [0, 0], "mm": [0, 0]}, exit_gains={"ee": [0, 0], "mm": [0.02, 0.02]}))
    assert pooled(one, "1")["verdict"] == "inconclusive (1 task)"
    assert setting(one, "1")["verdict"] == "reproduced"


def test_claims_the_grid_cannot_test() -> None:
    curves, exits = grid(shifts={"ee": [0, 0], "sweet": [0.01, 0.01]}, exit_gains={"ee": [0, 0], "sweet": [0, 0]})
    claims = check_claims(curves, exits)
    for claim in ("1", "1-early", "3-fast-mm", "4"):
        assert rows(claims, claim)["verdict"].tolist() == ["not tested (no MM runs)"]
    assert pooled(claims, "2")["verdict"] == "inconclusive (1 task)"


def test_claims_markdown_names_every_claim_and_the_settings() -> None:
    curves, exits = grid(shifts={"ee": [0, 0], "sweet": [0.03, 0.03], "mm": [-0.02, -0.02]},
                         exit_gains={"ee": [0, 0], "sweet": [-0.015, -0.015], "mm": [0.02, 0.02]})
    settings = ClaimSettings()
    text = claims_markdown(check_claims(curves, exits, settings), settings, notice="PARTIAL: 5 of 6 runs")
    assert "**PARTIAL: 5 of 6 runs**" in text
    assert "| 1 | MM's individual classifiers beat EE's (mean over exits) | +2.3 | +2.0 | 1 task |" in text
    assert "| 2 | t | m | 10 | SWEET−EE | -1.5 [-1.5, -1.5] | 2 | contradicted |" in text
    assert "fast = speedups ≥ 2×, slow = ≤ 1.5×, comparable = within ± 1 point" in text
