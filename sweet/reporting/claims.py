"""The paper's claims (its abstract), each checked on a grid's runs.

Every claim compares two methods on one measure. Per task × model × budget, the measure is computed per seed for
both methods, the seed-paired differences (in points) give the estimate and a Student-t interval; the pooled row
averages each task's settings, then takes the estimate and the interval over tasks. The verdict reads the
interval: ``reproduced`` when it lies on the paper's side (above 0; for "comparable", inside ± margin),
``contradicted`` when it lies on the other side (below 0; outside ± margin), ``inconclusive`` otherwise, and
``inconclusive (1 seed)`` when there is no interval to read.

Adding a claim is one entry in ``CLAIMS`` (and a function in ``MEASURES`` if it needs a new measure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from sweet.reporting.collect import GROUP_KEYS, RUN_KEYS, display_name, empty_frame
from sweet.reporting.statistics import (
    LEVEL,
    auc_per_seed,
    exit_average_per_seed,
    paired_seed_differences,
    points_scale,
    t_interval,
)


@dataclass(frozen=True)
class ClaimSettings:
    """How the claims are checked (config.yaml's ``claims:``)."""

    exit_rule: str = "confidence"
    fast_speedup: float = 2.0
    slow_speedup: float = 1.5
    margin: float = 1.0  # points
    level: float = LEVEL
    # envelope: speed–accuracy claims read the evaluation curves (the paper's); held-out: the held-out operating
    # points (thresholds chosen on the calibration split, sweet.operating_points)
    operating_points: str = "envelope"

    @classmethod
    def from_dict(cls, values: dict | None) -> ClaimSettings:
        return cls(**(values or {}))


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str  # may name the settings: {fast}, {slow}, {margin}, {rule}
    better: str  # the method the paper finds better (or comparable)
    than: str
    measure: str  # a key of MEASURES
    paper: float | None = None  # the paper's own figure, in points, where it states one
    comparable: bool = False  # True: "comparable", i.e. the difference lies within ± margin

    def describe(self, settings: ClaimSettings) -> str:
        return self.statement.format(fast=f"{settings.fast_speedup:g}", slow=f"{settings.slow_speedup:g}",
                                     margin=f"{settings.margin:g}", rule=settings.exit_rule)


CLAIMS = [
    Claim("1", "MM's individual classifiers beat EE's (mean over exits)", "mm", "ee", "exit_average", paper=2.3),
    Claim("1-early", "MM's early classifiers beat EE's (mean over all exits but the last)", "mm", "ee",
          "early_exit_average"),
    Claim("2", "SWEET's individual classifiers beat EE's (mean over exits)", "sweet", "ee", "exit_average",
          paper=1.1),
    Claim("3-fast-ee", "SWEET's speed–accuracy curve is above EE's at fast speeds (≥ {fast}×)", "sweet", "ee",
          "fast"),
    Claim("3-fast-mm", "SWEET's speed–accuracy curve is above MM's at fast speeds (≥ {fast}×)", "sweet", "mm",
          "fast"),
    Claim("3-slow", "SWEET's speed–accuracy curve is comparable to EE's at slow speeds (≤ {slow}×, within "
          "± {margin} point)", "sweet", "ee", "slow", comparable=True),
    Claim("4", "EE's speed–accuracy trade-off beats MM's (normalised AUC over the shared speedup range)", "ee",
          "mm", "auc"),
]


# --------------------------------------------------------------------------------------------------------------
# measures: per run, one value (column "value") and the speedup range it covers (NaN for per-exit measures)

MeasureFn = Callable[[pd.DataFrame, pd.DataFrame, ClaimSettings], pd.DataFrame]
MEASURE_COLUMNS = [*RUN_KEYS, "value", "speedup_min", "speedup_max"]


def _exit_measure(early_only: bool) -> MeasureFn:
    def measure(curves: pd.DataFrame, exits: pd.DataFrame, settings: ClaimSettings) -> pd.DataFrame:
        per_run = exit_average_per_seed(exits, early_only=early_only).rename(columns={"score": "value"})
        return per_run.assign(speedup_min=np.nan, speedup_max=np.nan)[MEASURE_COLUMNS]

    return measure


def _auc_measure(region: str) -> MeasureFn:
    def measure(curves: pd.DataFrame, exits: pd.DataFrame, settings: ClaimSettings) -> pd.DataFrame:
        rule = curves[curves["strategy"].isin([settings.exit_rule])] if not curves.empty else curves
        lowest = settings.fast_speedup if region == "fast" else None
        highest = settings.slow_speedup if region == "slow" else None
        per_run = auc_per_seed(rule, lowest, highest)
        if per_run.empty:
            return empty_frame(MEASURE_COLUMNS)
        return per_run.rename(columns={"auc": "value"})[MEASURE_COLUMNS]

    return measure


MEASURES: dict[str, MeasureFn] = {
    "exit_average": _exit_measure(early_only=False),
    "early_exit_average": _exit_measure(early_only=True),
    "fast": _auc_measure("fast"),
    "slow": _auc_measure("slow"),
    "auc": _auc_measure("shared"),
}
MEASURE_NAMES = {
    "exit_average": "mean over exits",
    "early_exit_average": "mean over early exits",
    "fast": "normalised AUC, fast speeds",
    "slow": "normalised AUC, slow speeds",
    "auc": "normalised AUC, shared range",
}


OPERATING_POINT_MODES = ("envelope", "held-out")
HELD_OUT_NAMES = {
    "fast": "held-out score, mean over target speedups ≥ fast",
    "slow": "held-out score, mean over target speedups ≤ slow",
    "auc": "held-out score, mean over all target speedups",
}


def held_out_measure(region: str, operating_points: pd.DataFrame, settings: ClaimSettings) -> pd.DataFrame:
    """Per run: the mean evaluation score of the held-out operating points (the claims' exit rule) over the
    target speedups of ``region`` (fast: ≥ fast_speedup; slow: ≤ slow_speedup; auc: all). NaN when a run has
    no held-out point at one of them (its calibration curve never got that fast), so it is not paired."""
    if operating_points is None or operating_points.empty:
        return empty_frame(MEASURE_COLUMNS)
    points = operating_points[operating_points["strategy"] == settings.exit_rule]
    target = points["target_speedup"]
    if region == "fast":
        points = points[target >= settings.fast_speedup - 1e-9]
    elif region == "slow":
        points = points[target <= settings.slow_speedup + 1e-9]
    if points.empty:
        return empty_frame(MEASURE_COLUMNS)
    per_run = (points.groupby(RUN_KEYS, sort=False)
               .agg(value=("eval_score", lambda v: v.mean() if v.notna().all() else np.nan),
                    speedup_min=("target_speedup", "min"), speedup_max=("target_speedup", "max"))
               .reset_index())
    return per_run.dropna(subset=["value"])[MEASURE_COLUMNS]


def _measure(claim: Claim, curves: pd.DataFrame, exits: pd.DataFrame, settings: ClaimSettings,
             operating_points: pd.DataFrame | None) -> pd.DataFrame:
    if settings.operating_points == "held-out" and claim.measure in HELD_OUT_NAMES:
        return held_out_measure(claim.measure, operating_points, settings)
    return MEASURES[claim.measure](curves, exits, settings)


def _measure_name(claim: Claim, settings: ClaimSettings) -> str:
    if settings.operating_points == "held-out" and claim.measure in HELD_OUT_NAMES:
        return HELD_OUT_NAMES[claim.measure]
    return MEASURE_NAMES[claim.measure]


# --------------------------------------------------------------------------------------------------------------
# verdicts

CLAIM_COLUMNS = ["claim", "scope", "statement", *GROUP_KEYS, "comparison", "measure", "speedup_min",
                 "speedup_max", "estimate", "ci_low", "ci_high", "level", "n", "n_of", "paper", "verdict"]


def verdict(claim: Claim, low: float, high: float, settings: ClaimSettings) -> str:
    """Which side of 0 (for "comparable": of the ± margin band) the interval lies on."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if claim.comparable:
        if -settings.margin <= low and high <= settings.margin:
            return "reproduced"
        if low > settings.margin or high < -settings.margin:
            return "contradicted"
        return "inconclusive"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "contradicted"
    return "inconclusive"


def check_claims(curves: pd.DataFrame, exits: pd.DataFrame, settings: ClaimSettings | None = None,
                 operating_points: pd.DataFrame | None = None) -> pd.DataFrame:
    """One pooled row per claim, then one row per task × model × budget where both methods have runs.
    ``operating_points`` (the runs' held-out operating points) is read when ``settings.operating_points`` is
    ``held-out``: the speed–accuracy claims then compare held-out scores instead of the evaluation curves."""
    settings = settings or ClaimSettings()
    scale = points_scale(*(f["score"] for f in (curves, exits) if not f.empty))
    rows = []
    for claim in CLAIMS:
        per_run = _measure(claim, curves, exits, settings, operating_points)
        setting_rows = _setting_rows(claim, per_run, scale, settings)
        pooled = _pooled_row(claim, per_run, setting_rows, settings)
        if (settings.operating_points == "held-out" and claim.measure in HELD_OUT_NAMES
                and (operating_points is None or operating_points.empty)):
            # runs that finished before operating points existed: say so, not "no EE runs"
            pooled["verdict"] = "not tested (no held-out operating points; run `python -m sweet operating-points`)"
        rows.append(pooled)
        rows += setting_rows
    # Rows are built in a fixed order (claims as listed, settings as the sorted frames give them).
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _base_row(claim: Claim, settings: ClaimSettings) -> dict:
    return {"claim": claim.id, "statement": claim.describe(settings), "level": settings.level,
            "comparison": f"{display_name(claim.better)}-{display_name(claim.than)}",
            "measure": _measure_name(claim, settings), "paper": claim.paper if claim.paper is not None else np.nan}


def _setting_rows(claim: Claim, per_run: pd.DataFrame, scale: float, settings: ClaimSettings) -> list[dict]:
    rows = []
    for key, setting in per_run.groupby(GROUP_KEYS, sort=False):
        if not {claim.better, claim.than} <= set(setting["method"]):
            continue
        diffs = paired_seed_differences(setting, "value", claim.better, claim.than) * scale
        estimate, low, high, n = t_interval(diffs.to_numpy(), settings.level)
        lo, hi = setting["speedup_min"].iloc[0], setting["speedup_max"].iloc[0]
        if n == 0:
            why = _no_estimate(claim, settings)
        elif n == 1:
            why = "inconclusive (1 seed)"
        else:
            why = verdict(claim, low, high, settings)
        rows.append({**_base_row(claim, settings), "scope": "setting", **dict(zip(GROUP_KEYS, key)),
                     "speedup_min": lo, "speedup_max": hi, "estimate": estimate, "ci_low": low, "ci_high": high,
                     "n": n, "n_of": "seeds", "verdict": why})
    return rows


def _pooled_row(claim: Claim, per_run: pd.DataFrame, setting_rows: list[dict], settings: ClaimSettings) -> dict:
    """Each task's settings averaged, then the estimate and interval over tasks."""
    row = {**_base_row(claim, settings), "scope": "pooled", "task": "all", "model": "all", "budget": "all",
           "speedup_min": np.nan, "speedup_max": np.nan, "n_of": "tasks"}
    missing = [m for m in (claim.better, claim.than) if m not in set(per_run["method"])]
    estimated = [r for r in setting_rows if r["n"] > 0]
    if missing:
        return {**row, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0,
                "verdict": f"not tested (no {', '.join(display_name(m) for m in missing)} runs)"}
    per_task = pd.DataFrame(estimated, columns=["task", "estimate"]).groupby("task", sort=True)["estimate"].mean()
    estimate, low, high, n = t_interval(per_task.to_numpy(), settings.level)
    if not estimated:
        why = "inconclusive (no paired seeds)" if not setting_rows else setting_rows[0]["verdict"]
    elif max(r["n"] for r in estimated) < 2:
        why = "inconclusive (1 seed)"
    elif n < 2:
        why = "inconclusive (1 task)"
    else:
        why = verdict(claim, low, high, settings)
    return {**row, "estimate": estimate, "ci_low": low, "ci_high": high, "n": n, "verdict": why}


def _no_estimate(claim: Claim, settings: ClaimSettings) -> str:
    if claim.measure == "fast":
        return f"inconclusive (the curves do not share speedups ≥ {settings.fast_speedup:g}×)"
    if claim.measure == "slow":
        return f"inconclusive (the curves do not share speedups ≤ {settings.slow_speedup:g}×)"
    return "inconclusive (no paired seeds)"


def claims_both_ways(curves: pd.DataFrame, exits: pd.DataFrame, operating_points: pd.DataFrame,
                     settings: ClaimSettings | None = None) -> pd.DataFrame:
    """The speed–accuracy claims (3 and 4) checked on the envelope and on the held-out operating points, one
    block each (column ``operating_points``), whichever of the two claims.csv uses."""
    settings = settings or ClaimSettings()
    frames = []
    for mode in OPERATING_POINT_MODES:
        checked = check_claims(curves, exits, replace(settings, operating_points=mode), operating_points)
        speed = checked[checked["claim"].isin([c.id for c in CLAIMS if c.measure in HELD_OUT_NAMES])]
        frames.append(speed.assign(operating_points=mode))
    return pd.concat(frames, ignore_index=True)[["operating_points", *CLAIM_COLUMNS]]


# --------------------------------------------------------------------------------------------------------------
# text


def format_estimate(row: pd.Series | dict) -> str:
    """"+2.1 [+0.4, +3.8]" (points); just the estimate without an interval; "–" without an estimate."""
    estimate, low, high = row["estimate"], row["ci_low"], row["ci_high"]
    if pd.isna(estimate):
        return "–"
    if pd.isna(low) or pd.isna(high):
        return f"{estimate:+.1f}"
    return f"{estimate:+.1f} [{low:+.1f}, {high:+.1f}]"


def format_over(row: pd.Series | dict) -> str:
    """"3 seeds", "1 task", or "–" when nothing was paired."""
    n, unit = int(row["n"]), str(row["n_of"])
    return "–" if n == 0 else f"{n} {unit if n > 1 else unit.rstrip('s')}"


def format_paper(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.1f}"


def claims_markdown(claims: pd.DataFrame, settings: ClaimSettings, notice: str = "") -> str:
    """claims.md: the pooled verdicts first, then every task × model × budget."""
    level = f"{settings.level * 100:g}%"
    lines = ["# The paper's claims", ""]
    if notice:
        lines += [f"**{notice}**", ""]
    lines += [f"Differences in points of the task's primary metric, seed-paired; {level} Student-t interval in "
              "brackets. Per task × model × budget the interval is over seeds; the pooled row averages each task's "
              f"settings and takes the interval over tasks. Speed–accuracy claims use the {settings.exit_rule} "
              f"exit rule; fast = speedups ≥ {settings.fast_speedup:g}×, slow = ≤ {settings.slow_speedup:g}×, "
              f"comparable = within ± {settings.margin:g} point. They read "
              + ("the held-out operating points (thresholds chosen on the calibration split, scored on the "
                 "evaluation split)" if settings.operating_points == "held-out" else
                 "the evaluation curves (every threshold measured on the evaluation examples: the paper's "
                 "envelope; envelope_gap.csv says how optimistic)") + ".", ""]
    pooled = claims[claims["scope"] == "pooled"]
    lines += ["| Claim | Statement | Paper | Estimate [interval] | Over | Verdict |",
              "|:---|:---|---:|---:|---:|:---|"]
    for _, row in pooled.iterrows():
        lines.append(f"| {row['claim']} | {row['statement']} | {format_paper(row['paper'])} | "
                     f"{format_estimate(row)} | {format_over(row)} | **{row['verdict']}** |")
    settings_rows = claims[claims["scope"] == "setting"]
    if not settings_rows.empty:
        lines += ["", "## Per task, model and budget", "",
                  "| Claim | Task | Model | Budget | Comparison | Estimate [interval] | Seeds | Verdict |",
                  "|:---|:---|:---|---:|:---|---:|---:|:---|"]
        for _, row in settings_rows.iterrows():
            lines.append(f"| {row['claim']} | {row['task']} | {row['model']} | {row['budget']} | "
                         f"{row['comparison'].replace('-', '−')} | {format_estimate(row)} | {row['n']} | "
                         f"{row['verdict']} |")
    return "\n".join(lines) + "\n"
