"""The numbers behind the tables and claims: per-exit summaries, scores at fixed speedups, normalised AUC, and
seed-paired method differences with Student-t intervals.

Choices that shape the numbers (the README's output section and the report's notes say the same):

* **Score at a fixed speedup.** A seed's curve is a cloud of (speedup, score) operating points, one per threshold.
  We keep its Pareto front (no other threshold is at least as fast and strictly better) and interpolate linearly
  in speedup between front points. Below the front's slowest point (but still inside the curve's speedup range)
  the value is the front's best score, since that score is reachable at a higher speedup. Outside the curve's
  speedup range the value is NaN: we never extrapolate. Mean and sample std (ddof=1; NaN for one seed) are over
  the seeds whose value is defined.
* **AUC.** The same per-seed function, integrated over a speedup range and divided by its width: a mean score.
  ``auc_summary`` uses the range shared by *every* method and seed of a task × model × budget × exit rule, so
  methods are compared on the same speedups and paired across seeds. The ``oracle`` strategy is one point per
  run, so it has no AUC or interpolated score; ``oracle_summary`` summarises it.
* **Intervals.** Differences between methods are paired by seed (same training subset, same initial weights)
  and summarised by their mean and a Student-t interval, mean ± t(n−1) · sd / √n. With the 2–5 seeds a grid
  affords, a percentile bootstrap covers far less than its nominal 95% (with 2 seeds it is the range of the two
  differences); the t interval is wide when it should be, and exact on hand-made numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sweet.reporting.collect import GROUP_KEYS, RUN_KEYS, display_name, empty_frame, sort_frame

PAIRS = [("sweet", "ee"), ("mm", "ee"), ("sweet", "mm")]
DEFAULT_SPEEDUPS = (1.5, 2.0, 3.0, 4.0)
LEVEL = 0.95


def points_scale(*scores: pd.Series) -> float:
    """Scores stored as fractions are reported in points (×100, the paper's convention); others as they are."""
    values = pd.concat([s.dropna().abs() for s in scores]) if scores else pd.Series(dtype=float)
    return 100.0 if values.empty or values.max() <= 1.0 else 1.0


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite values: the two-sided Student-t interval of their mean. With one
    value the bounds are NaN; with none, everything is."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(v.std(ddof=1)) / np.sqrt(n)
    return mean, mean - half, mean + half, n


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna()
    return (float(v.mean()) if len(v) else float("nan"), float(v.std()) if len(v) > 1 else float("nan"), len(v))


# --------------------------------------------------------------------------------------------------------------
# individual exits


def individual_exits_summary(exits_df: pd.DataFrame) -> pd.DataFrame:
    """Mean/std over seeds of each exit's own score, and the seed-paired difference to EE at the same exit."""
    columns = [*GROUP_KEYS, "method", "exit", "exit_layer", "metric", "score_mean", "score_std", "n_seeds",
               "delta_vs_ee", "n_paired"]
    if exits_df.empty:
        return empty_frame(columns)
    keys = [*GROUP_KEYS, "method", "exit"]
    summary = (
        exits_df.groupby(keys, sort=False)
        .agg(exit_layer=("exit_layer", "first"), metric=("metric", "first"), score_mean=("score", "mean"),
             score_std=("score", "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    ee = exits_df[exits_df["method"] == "ee"][[*GROUP_KEYS, "exit", "seed", "score"]].rename(
        columns={"score": "ee_score"}
    )
    paired = exits_df.merge(ee, on=[*GROUP_KEYS, "exit", "seed"], how="inner")
    paired["delta"] = paired["score"] - paired["ee_score"]
    deltas = (
        paired.groupby(keys, sort=False)
        .agg(delta_vs_ee=("delta", "mean"), n_paired=("seed", "nunique"))
        .reset_index()
    )
    summary = summary.merge(deltas, on=keys, how="left")
    summary["n_paired"] = summary["n_paired"].fillna(0).astype(int)
    return sort_frame(summary[columns], keys)


def exit_average_per_seed(exits_df: pd.DataFrame, early_only: bool = False) -> pd.DataFrame:
    """Per run: the mean of its exits' own scores (the paper's "average" row); ``early_only`` leaves out the last
    exit (the full model for EE and SWEET, the largest member for MM)."""
    frame = exits_df
    if early_only and not frame.empty:
        last = frame.groupby(RUN_KEYS, sort=False)["exit"].transform("max")
        frame = frame[frame["exit"] < last]
    if frame.empty:
        return empty_frame([*RUN_KEYS, "score"])
    return frame.groupby(RUN_KEYS, sort=False).agg(score=("score", "mean")).reset_index()


# --------------------------------------------------------------------------------------------------------------
# curves: Pareto front, interpolation, AUC


def pareto_front(speedup: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Operating points no other point beats (at least as fast and strictly better), by increasing speedup."""
    speedup = np.asarray(speedup, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(speedup) & np.isfinite(score)
    x, y = speedup[ok], score[ok]
    if x.size == 0:
        return x, y
    order = np.lexsort((-y, -x))  # fastest first; among equal speedups the best score first
    keep, best = [], -np.inf
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    keep = np.asarray(keep[::-1])
    return x[keep], y[keep]


def interpolate_curve(speedup: np.ndarray, score: np.ndarray, at: Sequence[float] | np.ndarray) -> np.ndarray:
    """A seed's score at speedups ``at``: linear on its Pareto front, NaN outside its speedup range."""
    speedup = np.asarray(speedup, dtype=np.float64)
    at = np.asarray(at, dtype=np.float64)
    finite = speedup[np.isfinite(speedup) & np.isfinite(np.asarray(score, dtype=np.float64))]
    out = np.full(at.shape, np.nan)
    if finite.size == 0:
        return out
    xs, ys = pareto_front(speedup, score)
    lo, hi = float(finite.min()), float(finite.max())
    tol = 1e-9 * max(1.0, abs(hi))
    inside = (at >= lo - tol) & (at <= hi + tol)
    # np.interp holds the first value constant on the left, which is the documented left extension
    out[inside] = np.interp(at[inside], xs, ys)
    return out


def curve_auc(speedup: np.ndarray, score: np.ndarray, lo: float, hi: float) -> float:
    """Mean score over [lo, hi] of the interpolated curve (exact for the piecewise-linear front); NaN if empty."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return float("nan")
    xs, _ = pareto_front(speedup, score)
    knots = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    values = interpolate_curve(speedup, score, knots)
    if np.isnan(values).any():
        return float("nan")
    area = float(np.sum((knots[1:] - knots[:-1]) * (values[1:] + values[:-1]) / 2.0))
    return area / (hi - lo)


def curves_without_oracle(curves_df: pd.DataFrame) -> pd.DataFrame:
    return curves_df[curves_df["strategy"] != "oracle"]


def speedup_per_seed(curves_df: pd.DataFrame, speedups: Sequence[float] = DEFAULT_SPEEDUPS) -> pd.DataFrame:
    """One row per run × exit rule × fixed speedup: that seed's interpolated score (NaN outside its range)."""
    rows = []
    for key, run in curves_without_oracle(curves_df).groupby([*RUN_KEYS, "strategy"], sort=False):
        values = interpolate_curve(run["speedup"].to_numpy(), run["score"].to_numpy(), list(speedups))
        for s, v in zip(speedups, values):
            rows.append({**dict(zip([*RUN_KEYS, "strategy"], key)), "metric": run["metric"].iloc[0],
                         "speedup": float(s), "score": float(v)})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "strategy", "metric", "speedup", "score"])


def speedup_summary(curves_df: pd.DataFrame, speedups: Sequence[float] = DEFAULT_SPEEDUPS) -> pd.DataFrame:
    """Score at fixed speedups: interpolated on each seed's curve, then mean/std over the seeds where defined."""
    per_seed = speedup_per_seed(curves_df, speedups)
    keys = [*GROUP_KEYS, "method", "strategy", "speedup"]
    rows = []
    for key, group in per_seed.groupby(keys, sort=False):
        mean, std, n = _mean_std(group["score"])
        rows.append({**dict(zip(keys, key)), "metric": group["metric"].iloc[0], "score_mean": mean,
                     "score_std": std, "n_seeds": n, "n_runs": group["seed"].nunique()})
    columns = [*keys, "metric", "score_mean", "score_std", "n_seeds", "n_runs"]
    return sort_frame(pd.DataFrame(rows, columns=columns), keys)


def shared_ranges(curves_df: pd.DataFrame) -> pd.DataFrame:
    """Per task × model × budget × exit rule: the speedup range every method and seed covers."""
    curves = curves_without_oracle(curves_df)
    per_run = curves.groupby([*RUN_KEYS, "strategy"], sort=False)["speedup"].agg(["min", "max"]).reset_index()
    return (
        per_run.groupby([*GROUP_KEYS, "strategy"], sort=False)
        .agg(speedup_min=("min", "max"), speedup_max=("max", "min"))
        .reset_index()
    )


def auc_per_seed(curves_df: pd.DataFrame, lowest: float | None = None, highest: float | None = None) -> pd.DataFrame:
    """Per run × exit rule: the normalised AUC over its setting's shared speedup range, optionally narrowed to
    [``lowest``, ``highest``] (claim 3's fast and slow regions). NaN where the narrowed range is empty."""
    columns = [*RUN_KEYS, "strategy", "metric", "auc", "speedup_min", "speedup_max"]
    curves = curves_without_oracle(curves_df)
    if curves.empty:
        return pd.DataFrame(columns=columns)
    ranges = shared_ranges(curves).set_index([*GROUP_KEYS, "strategy"])
    rows = []
    for key, run in curves.groupby([*RUN_KEYS, "strategy"], sort=False):
        ident = dict(zip([*RUN_KEYS, "strategy"], key))
        lo, hi = (float(v) for v in ranges.loc[tuple(ident[k] for k in [*GROUP_KEYS, "strategy"])])
        lo = lo if lowest is None else max(lo, lowest)
        hi = hi if highest is None else min(hi, highest)
        auc = curve_auc(run["speedup"].to_numpy(), run["score"].to_numpy(), lo, hi)
        rows.append({**ident, "metric": run["metric"].iloc[0], "auc": auc, "speedup_min": lo, "speedup_max": hi})
    return pd.DataFrame(rows, columns=columns)


def auc_summary(curves_df: pd.DataFrame) -> pd.DataFrame:
    """Normalised area under score-vs-speedup over the range shared by all methods (and seeds) of a group."""
    per_seed = auc_per_seed(curves_df)
    keys = [*GROUP_KEYS, "method", "strategy"]
    rows = []
    for key, group in per_seed.groupby(keys, sort=False):
        mean, std, n = _mean_std(group["auc"])
        rows.append({**dict(zip(keys, key)), "metric": group["metric"].iloc[0], "auc_mean": mean, "auc_std": std,
                     "speedup_min": group["speedup_min"].iloc[0], "speedup_max": group["speedup_max"].iloc[0],
                     "n_seeds": n})
    columns = [*keys, "metric", "auc_mean", "auc_std", "speedup_min", "speedup_max", "n_seeds"]
    return sort_frame(pd.DataFrame(rows, columns=columns), keys)


def oracle_summary(curves_df: pd.DataFrame) -> pd.DataFrame:
    """The oracle point (each example at its earliest correct exit): the headroom no exit rule can beat."""
    keys = [*GROUP_KEYS, "method"]
    columns = [*keys, "metric", "score_mean", "score_std", "speedup_mean", "speedup_std", "n_seeds"]
    oracle = curves_df[curves_df["strategy"] == "oracle"]
    rows = []
    for key, group in oracle.groupby(keys, sort=False):
        s_mean, s_std, n = _mean_std(group["score"])
        x_mean, x_std, _ = _mean_std(group["speedup"])
        rows.append({**dict(zip(keys, key)), "metric": group["metric"].iloc[0], "score_mean": s_mean,
                     "score_std": s_std, "speedup_mean": x_mean, "speedup_std": x_std, "n_seeds": n})
    return sort_frame(pd.DataFrame(rows, columns=columns), keys)


# --------------------------------------------------------------------------------------------------------------
# seed-paired differences


def paired_seed_differences(values: pd.DataFrame, value: str, a: str, b: str) -> pd.Series:
    """Per seed present for both methods: ``a``'s value minus ``b``'s (``values`` holds one setting)."""
    wide = values.pivot_table(index="seed", columns="method", values=value, aggfunc="first")
    if a not in wide.columns or b not in wide.columns:
        return pd.Series(dtype=float)
    return (wide[a] - wide[b]).dropna()


def _paired_rows(values: pd.DataFrame, value: str, extra: dict, level: float) -> list[dict]:
    """For each setting and each method pair: the seed-paired mean difference and its t interval."""
    rows = []
    for key, group in values.groupby(GROUP_KEYS, sort=False):
        for a, b in PAIRS:
            d = paired_seed_differences(group, value, a, b)
            if d.empty and not ({a, b} <= set(group["method"])):
                continue
            mean, low, high, n = t_interval(d.to_numpy(), level)
            rows.append({**dict(zip(GROUP_KEYS, key)), **extra, "comparison": f"{display_name(a)}-{display_name(b)}",
                         "method_a": a, "method_b": b, "diff_mean": mean, "ci_low": low, "ci_high": high,
                         "n_seeds": n})
    return rows


PAIRWISE_COLUMNS = [*GROUP_KEYS, "strategy", "measure", "speedup", "exit", "comparison", "method_a", "method_b",
                    "diff_mean", "ci_low", "ci_high", "n_seeds"]


def pairwise_differences(
    curves_df: pd.DataFrame,
    exits_df: pd.DataFrame | None = None,
    speedups: Sequence[float] = DEFAULT_SPEEDUPS,
    level: float = LEVEL,
) -> pd.DataFrame:
    """SWEET−EE, MM−EE, SWEET−MM: seed-paired mean difference and its Student-t interval (NaN with one seed).

    ``measure`` is ``score_at_speedup`` (``speedup`` set), ``auc`` (per exit rule), ``exit`` (an individual exit,
    ``exit`` set; strategy empty) or ``exit_average`` (the mean over exits, the paper's headline per-exit gain).
    """
    rows: list[dict] = []
    at_speed = speedup_per_seed(curves_df, speedups)
    for (strategy, s), part in at_speed.groupby(["strategy", "speedup"], sort=False):
        rows += _paired_rows(part, "score", {"strategy": strategy, "measure": "score_at_speedup", "speedup": s}, level)
    for strategy, part in auc_per_seed(curves_df).groupby("strategy", sort=False):
        rows += _paired_rows(part, "auc", {"strategy": strategy, "measure": "auc"}, level)
    if exits_df is not None and not exits_df.empty:
        for exit_index, part in exits_df.groupby("exit", sort=False):
            rows += _paired_rows(part, "score", {"strategy": "", "measure": "exit", "exit": int(exit_index)}, level)
        rows += _paired_rows(exit_average_per_seed(exits_df), "score", {"strategy": "", "measure": "exit_average"},
                             level)
    frame = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    frame["comparison_rank"] = frame["comparison"].map(
        {f"{display_name(a)}-{display_name(b)}": i for i, (a, b) in enumerate(PAIRS)})
    frame = sort_frame(frame, [*GROUP_KEYS, "measure", "strategy", "speedup", "exit", "comparison_rank"])
    return frame.drop(columns="comparison_rank")


# --------------------------------------------------------------------------------------------------------------
# gradient conflict


def gradient_conflict_summary(conflict_df: pd.DataFrame, by_step: bool = False) -> pd.DataFrame:
    """Cosine between block k's own-exit gradient and each later exit's (or their sum's), pooled over seeds
    (and over steps unless ``by_step``)."""
    keys = [*GROUP_KEYS, "method", "block", "other"] + (["step"] if by_step else [])
    columns = [*keys, "cosine_mean", "cosine_std", "n", "n_seeds"]
    frame = conflict_df.dropna(subset=["cosine"]) if not conflict_df.empty else conflict_df
    if frame.empty:
        return empty_frame(columns)
    frame = frame.assign(other=frame["other"].astype(str))
    summary = (
        frame.groupby(keys, sort=False)
        .agg(cosine_mean=("cosine", "mean"), cosine_std=("cosine", "std"), n=("cosine", "size"),
             n_seeds=("seed", "nunique"))
        .reset_index()
    )
    return sort_frame(summary[columns], [*GROUP_KEYS, "method", "block", "other", "step"])


# --------------------------------------------------------------------------------------------------------------
# held-out operating points and risk control (sweet.operating_points, sweet.risk: one CSV of each per run)

ENVELOPE_GAP_COLUMNS = [*GROUP_KEYS, "method", "strategy", "target_speedup", "metric", "envelope_mean",
                        "held_out_mean", "gap_mean", "ci_low", "ci_high", "level", "n_seeds", "n_reached",
                        "eval_speedup_mean", "eval_speedup_min"]


def envelope_gap(operating_points: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per setting × method × exit rule × target: how much the envelope (the evaluation curve's score at the
    target, what the field reports) exceeds the held-out score (the threshold chosen on the calibration split,
    scored on the evaluation split). The gap is paired within each seed (same run, same evaluation examples),
    mean and Student-t interval over the seeds where both are defined; in the scores' units, like
    pairwise_summary.csv. ``n_reached``: seeds whose calibration curve reached the target at all."""
    if operating_points.empty:
        return empty_frame(ENVELOPE_GAP_COLUMNS)
    keys = [*GROUP_KEYS, "method", "strategy", "target_speedup"]
    rows = []
    for key, group in operating_points.groupby(keys, sort=False):
        both = group.dropna(subset=["envelope_score", "eval_score"])
        mean, low, high, n = t_interval((both["envelope_score"] - both["eval_score"]).to_numpy(), level)
        speed = both["eval_speedup"]
        rows.append({**dict(zip(keys, key)), "metric": group["metric"].iloc[0] if "metric" in group else "",
                     "envelope_mean": float(both["envelope_score"].mean()) if n else np.nan,
                     "held_out_mean": float(both["eval_score"].mean()) if n else np.nan,
                     "gap_mean": mean, "ci_low": low, "ci_high": high, "level": level, "n_seeds": n,
                     "n_reached": int(group["eval_score"].notna().sum()),
                     "eval_speedup_mean": float(speed.mean()) if n else np.nan,
                     "eval_speedup_min": float(speed.min()) if n else np.nan})
    return sort_frame(pd.DataFrame(rows, columns=ENVELOPE_GAP_COLUMNS), keys)


# footing: "own-last-exit" (risk_control.csv: each run against its own last exit, ε as configured) or
# "common-target" (risk_control_common.csv: the error risk against one target accuracy per setting and seed,
# ε = 1 − target, so epsilon is the mean over seeds; offset and target_accuracy_mean say what the target was)
FOOTINGS = ("own-last-exit", "common-target")
RISK_SUMMARY_COLUMNS = [*GROUP_KEYS, "method", "strategy", "footing", "risk", "offset", "epsilon", "delta", "n_seeds",
                        "n_certified", "eval_speedup_mean", "eval_speedup_std", "certified_speedup_mean",
                        "eval_risk_mean", "eval_risk_max", "n_eval_above_epsilon", "eval_score_mean",
                        "certified_score_mean", "target_accuracy_mean"]


def _risk_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    certified = frame["certified"].astype(str).str.lower() == "true"
    # an uncertified seed runs the full model: 0 risk for the relative risks, but for the error risk its last exit
    # may be above ε, which breaks no guarantee, so only certified seeds count as above ε
    frame = frame.assign(certified=certified,
                         above=certified & (frame["eval_risk"].astype(float) > frame["epsilon"].astype(float)),
                         certified_speedup=frame["eval_speedup"].where(certified),
                         certified_score=frame["eval_score"].where(certified))
    summary = (
        frame.groupby(keys, sort=False, dropna=False)
        .agg(epsilon_mean=("epsilon", "mean"), delta=("delta", "first"), n_seeds=("seed", "nunique"),
             n_certified=("certified", "sum"), eval_speedup_mean=("eval_speedup", "mean"),
             eval_speedup_std=("eval_speedup", "std"), certified_speedup_mean=("certified_speedup", "mean"),
             eval_risk_mean=("eval_risk", "mean"), eval_risk_max=("eval_risk", "max"),
             n_eval_above_epsilon=("above", "sum"), eval_score_mean=("eval_score", "mean"),
             certified_score_mean=("certified_score", "mean"))
        .reset_index()
    )
    summary["n_certified"] = summary["n_certified"].astype(int)
    summary["n_eval_above_epsilon"] = summary["n_eval_above_epsilon"].astype(int)
    return summary


def risk_control_summary(risk_control: pd.DataFrame, common_target: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per setting × method × exit rule × footing × risk × ε (or offset): over seeds, how many certified a
    threshold, the speedup and score the thresholds deliver on the evaluation split (``eval_speedup_mean``,
    ``eval_score_mean``: an uncertified seed runs the full model, 1× or MM's full cost; ``certified_speedup_mean``,
    ``certified_score_mean``: over the certified seeds only), and the evaluation risk (``n_eval_above_epsilon``:
    certified seeds whose evaluation risk exceeds ε, which the guarantee allows at rate δ for the expected risk,
    and the evaluation split's sampling adds to).

    Own-last-exit rows are relative to each method's own full model: a weaker last exit is a lower bar, so they do
    not rank methods. Common-target rows hold every method of a setting to one target accuracy and do."""
    parts = []
    if not risk_control.empty:
        own = _risk_rows(risk_control, [*GROUP_KEYS, "method", "strategy", "risk", "epsilon"])
        parts.append(own.assign(footing=FOOTINGS[0], offset=np.nan, target_accuracy_mean=np.nan))
    if common_target is not None and not common_target.empty:
        common = _risk_rows(common_target, [*GROUP_KEYS, "method", "strategy", "risk", "offset"])
        target = (common_target.groupby([*GROUP_KEYS, "method", "strategy", "risk", "offset"], sort=False)
                  ["target_accuracy"].mean().rename("target_accuracy_mean").reset_index())
        common = common.merge(target, on=[*GROUP_KEYS, "method", "strategy", "risk", "offset"], how="left")
        parts.append(common.assign(footing=FOOTINGS[1], epsilon=common["epsilon_mean"]))
    if not parts:
        return empty_frame(RISK_SUMMARY_COLUMNS)
    summary = pd.concat(parts, ignore_index=True)
    return sort_frame(summary[RISK_SUMMARY_COLUMNS],
                      [*GROUP_KEYS, "method", "strategy", "footing", "risk", "offset", "epsilon"])


# --------------------------------------------------------------------------------------------------------------
# every method of a grid against EE (methods.csv)

BASELINE = "ee"  # what every method's Δ is against: the standard early-exit fine-tuning
# The config's operating_points.targets when it has none of its own (sweet.operating_points.DEFAULT_TARGETS,
# which imports this module, so the value is repeated rather than imported)
METHOD_TARGETS = (1.5, 2.0, 3.0)
METHOD_MEASURES = ("exit", "exit_average", "auc", "score_at_speedup")  # the table's order within a method
METHODS_COLUMNS = [*GROUP_KEYS, "method", "label", "measure", "strategy", "speedup", "exit", "exit_layer", "metric",
                   "mean", "std", "n_seeds", "delta_vs_ee", "ci_low", "ci_high", "n_paired", "level",
                   "speedup_min", "speedup_max"]
_PER_SEED_COLUMNS = [*RUN_KEYS, "measure", "strategy", "speedup", "exit", "exit_layer", "metric", "value",
                     "speedup_min", "speedup_max"]


def method_measures_per_seed(curves_df: pd.DataFrame, exits_df: pd.DataFrame, strategy: str = "confidence",
                             speedups: Sequence[float] = METHOD_TARGETS) -> pd.DataFrame:
    """Per run, every measure methods.csv summarises (column ``value``, in the scores' units): each exit's own
    score, their mean (the claims' ``exit_average``), the normalised AUC of the ``strategy`` exit rule over the
    range every method and seed of the setting shares (the claims' ``auc``), and the score at each of
    ``speedups`` on that rule's curve (speedup_summary.csv's interpolation)."""
    frames = []
    if exits_df is not None and not exits_df.empty:
        frames.append(exits_df[[*RUN_KEYS, "exit", "exit_layer", "metric", "score"]]
                      .rename(columns={"score": "value"}).assign(measure="exit", strategy=""))
        metric = exits_df.groupby(RUN_KEYS, sort=False)["metric"].first().reset_index()
        average = exit_average_per_seed(exits_df).merge(metric, on=RUN_KEYS, how="left")
        frames.append(average.rename(columns={"score": "value"}).assign(measure="exit_average", strategy=""))
    rule = curves_df[curves_df["strategy"] == strategy] if not curves_df.empty else curves_df
    if not rule.empty:
        frames.append(auc_per_seed(rule).rename(columns={"auc": "value"}).assign(measure="auc"))
        frames.append(speedup_per_seed(rule, speedups).rename(columns={"score": "value"})
                      .assign(measure="score_at_speedup"))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_frame(_PER_SEED_COLUMNS)
    return pd.concat(frames, ignore_index=True).reindex(columns=_PER_SEED_COLUMNS)


def methods_summary(curves_df: pd.DataFrame, exits_df: pd.DataFrame, strategy: str = "confidence",
                    speedups: Sequence[float] = METHOD_TARGETS, level: float = LEVEL,
                    reference: str = BASELINE) -> pd.DataFrame:
    """Every method of every setting on every measure of ``method_measures_per_seed``: mean and sample std over
    the seeds where it is defined, and the seed-paired difference to EE (``delta_vs_ee``, the mean over seeds
    both have) with its Student-t interval (``t_interval``, as pairwise_summary.csv). EE's own row, and every
    row of a setting without EE, has no Δ (NaN, ``n_paired`` 0); with one paired seed the interval is NaN.
    ``reference``: another method to take the differences against (the columns keep their names; methods.csv is
    always against EE, ``bench/methods_vs.py`` uses this)."""
    per_seed = method_measures_per_seed(curves_df, exits_df, strategy, speedups)
    if per_seed.empty:
        return empty_frame(METHODS_COLUMNS)
    keys = [*GROUP_KEYS, "measure", "strategy", "speedup", "exit"]
    rows = []
    # dropna=False: a per-exit measure has no speedup, a curve measure no exit
    for key, group in per_seed.groupby(keys, sort=False, dropna=False):
        ident = dict(zip(keys, key))
        for method, runs in group.groupby("method", sort=False):
            mean, std, n = _mean_std(runs["value"])
            if method == reference:
                delta, low, high, paired = np.nan, np.nan, np.nan, 0
            else:
                delta, low, high, paired = t_interval(
                    paired_seed_differences(group, "value", method, reference).to_numpy(), level)
            rows.append({**ident, "method": method, "label": display_name(method),
                         "exit_layer": runs["exit_layer"].iloc[0], "metric": runs["metric"].iloc[0], "mean": mean,
                         "std": std, "n_seeds": n, "delta_vs_ee": delta, "ci_low": low, "ci_high": high,
                         "n_paired": paired, "level": level, "speedup_min": runs["speedup_min"].iloc[0],
                         "speedup_max": runs["speedup_max"].iloc[0]})
    frame = pd.DataFrame(rows, columns=METHODS_COLUMNS)
    frame["measure_rank"] = frame["measure"].map({m: i for i, m in enumerate(METHOD_MEASURES)})
    frame = sort_frame(frame, [*GROUP_KEYS, "method", "measure_rank", "exit", "speedup"])
    return frame.drop(columns="measure_rank")
