"""The paper's tables from the per-run CSVs: per-exit scores, scores at fixed speedups, normalised AUC, paired
method differences with bootstrap intervals, and gradient-conflict summaries.

Everything here reads the contracted per-run CSVs (``curves.csv``, ``individual_exits.csv`` and the optional
``gradient_conflict.csv``) and never a model, so tables can be rebuilt from ``results/`` alone and on a partly
finished grid (absent runs are listed in ``missing_runs.txt``, not fatal).

Choices that shape the numbers (also stated in the README's output section):

* **Score at a fixed speedup.** A seed's curve is a cloud of (speedup, score) operating points, one per threshold.
  We keep its Pareto front (no other threshold is at least as fast and strictly better) and interpolate linearly
  in speedup between front points. Below the front's slowest point (but still inside the curve's speedup range)
  the value is the front's best score, since that score is reachable at a higher speedup. Outside the curve's
  speedup range the value is NaN — we never extrapolate. Mean and sample std (ddof=1; NaN for one seed) are over
  the seeds whose value is defined.
* **AUC.** The same per-seed function, integrated over the speedup range shared by *every* method and seed of a
  task × model × budget × exit-rule group and divided by the range width: a mean score, comparable across methods
  and paired across seeds. The ``oracle`` strategy is one point per run, so it has no AUC or interpolated score;
  it is summarised in ``oracle_summary.csv``.
* **Paired differences** (``pairwise_summary.csv``): SWEET−EE, MM−EE and SWEET−MM, per seed present in both
  methods, then the mean and a 95% percentile-bootstrap interval over seeds (resampling seeds with replacement,
  a fixed RNG seed per row so the file is reproducible and independent of row order; NaN with one seed).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sweet.errors import UserError
from sweet.io import write_csv, write_text

RUN_KEYS = ["task", "model", "budget", "method", "seed"]
GROUP_KEYS = ["task", "model", "budget"]
CURVE_COLUMNS = [*RUN_KEYS, "strategy", "threshold", "score", "metric", "speedup", "layer_fraction", "flops_fraction"]
EXIT_COLUMNS = [*RUN_KEYS, "exit", "exit_layer", "score", "metric"]
CONFLICT_COLUMNS = [*RUN_KEYS, "step", "block", "exit", "other", "cosine"]
METHOD_ORDER = ["ee", "sweet", "mm"]
DISPLAY = {"ee": "EE", "sweet": "SWEET", "mm": "MM"}
PAIRS = [("sweet", "ee"), ("mm", "ee"), ("sweet", "mm")]
DEFAULT_SPEEDUPS = (1.5, 2.0, 3.0, 4.0)
STRING_COLUMNS = {"task": str, "model": str, "method": str, "metric": str, "strategy": str, "other": str}

SUMMARY_FILES = {
    "curves": "curves.csv",
    "exits": "individual_exits.csv",
    "exits_summary": "individual_exits_summary.csv",
    "speedup": "speedup_summary.csv",
    "auc": "auc_summary.csv",
    "oracle": "oracle_summary.csv",
    "pairwise": "pairwise_summary.csv",
    "conflict": "gradient_conflict.csv",
    "conflict_summary": "gradient_conflict_summary.csv",
    "conflict_steps": "gradient_conflict_by_step.csv",
}


def display_name(method: str) -> str:
    return DISPLAY.get(method, method)


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _sort(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Deterministic order: the paper's method order (EE, SWEET, MM), everything else by value."""
    keys = [k for k in keys if k in frame.columns]
    if frame.empty or not keys:
        return frame.reset_index(drop=True)

    def key(col: pd.Series) -> pd.Series:
        if col.name == "method":
            return col.map(lambda m: f"{method_rank(m):03d}{m}")
        if col.name == "other":
            # later exit indices numerically, then their sum
            return col.map(lambda o: "1" if str(o) == "sum" else f"0{int(float(o)):06d}")
        return col

    return frame.sort_values(list(keys), key=key, kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# collecting runs


def _read_run_csv(path: Path, required: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={k: v for k, v in STRING_COLUMNS.items()}, keep_default_na=True)
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)}; rerun the stage that writes it")
    return frame


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.concat(frames, ignore_index=True)


def discover_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root``: any folder holding a run output or its ``splits.json`` (a started run)."""
    root = Path(root)
    found = {p.parent for name in ("curves.csv", "individual_exits.csv", "splits.json") for p in root.rglob(name)}
    return sorted(found, key=str)


def collect(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Concatenate the per-run CSVs; a run without ``curves.csv`` or ``individual_exits.csv`` is reported missing.

    Returns ``(curves, individual_exits, gradient_conflict, missing)``, each frame sorted by run identity so the
    result does not depend on the order the folders were given or listed in.
    """
    dirs = sorted({Path(d) for d in run_dirs}, key=str)
    curves, exits, conflicts, missing = [], [], [], []
    for run in dirs:
        curve_path, exit_path = run / "curves.csv", run / "individual_exits.csv"
        if not (curve_path.is_file() and exit_path.is_file()):
            missing.append(str(run))
            continue
        curves.append(_read_run_csv(curve_path, CURVE_COLUMNS))
        exits.append(_read_run_csv(exit_path, EXIT_COLUMNS))
        conflict_path = run / "gradient_conflict.csv"
        if conflict_path.is_file():
            conflicts.append(_read_run_csv(conflict_path, CONFLICT_COLUMNS))
    curves_df = _concat(curves, CURVE_COLUMNS)
    exits_df = _concat(exits, EXIT_COLUMNS)
    conflict_df = _concat(conflicts, CONFLICT_COLUMNS)
    _check_unique(exits_df, [*RUN_KEYS, "exit"], "individual_exits.csv")
    curves_df = _sort(curves_df, [*RUN_KEYS, "strategy", "threshold", "speedup"])
    exits_df = _sort(exits_df, [*RUN_KEYS, "exit"])
    if not conflict_df.empty:
        conflict_df["other"] = conflict_df["other"].astype(str).str.replace(r"\.0$", "", regex=True)
    conflict_df = _sort(conflict_df, [*RUN_KEYS, "step", "block", "other"])
    return curves_df, exits_df, conflict_df, missing


def _check_unique(frame: pd.DataFrame, keys: list[str], name: str) -> None:
    if frame.empty:
        return
    dup = frame[frame.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        ident = " ".join(f"{k}={first[k]}" for k in RUN_KEYS)
        raise UserError(
            f"{name}: the run {ident} appears in more than one run folder; pass each run once (check --runs)"
        )


# --------------------------------------------------------------------------------------------------------------
# individual exits


def individual_exits_summary(exits_df: pd.DataFrame) -> pd.DataFrame:
    """Mean/std over seeds of each exit's own score, and the seed-paired difference to EE at the same exit."""
    columns = [*GROUP_KEYS, "method", "exit", "exit_layer", "metric", "score_mean", "score_std", "n_seeds",
               "delta_vs_ee", "n_paired"]
    if exits_df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
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
    return _sort(summary[columns], keys)


def _exit_average_per_seed(exits_df: pd.DataFrame) -> pd.DataFrame:
    """Per run: the mean of its exits' scores (the paper's "average" row)."""
    return exits_df.groupby(RUN_KEYS, sort=False).agg(score=("score", "mean")).reset_index()


def _scale(values: pd.Series) -> tuple[float, str]:
    """Scores stored as fractions are shown as percentages (the paper's convention)."""
    finite = values.dropna().abs()
    return (100.0, " (%)") if finite.empty or finite.max() <= 1.0 else (1.0, "")


def _cell(mean: float, std: float, scale: float, pm: str) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(std):
        return f"{mean * scale:.1f}"
    return f"{mean * scale:.1f}{pm}{std * scale:.1f}"


def _exit_table_blocks(exits_df: pd.DataFrame, pm: str) -> list[tuple[tuple, str, list[str], list[list[str]]]]:
    """(group, metric label, header, rows) per task × model × budget, rows = exits + Average."""
    summary = individual_exits_summary(exits_df)
    averages = _exit_average_per_seed(exits_df)
    scale, unit = _scale(exits_df["score"])
    blocks = []
    for group, block in summary.groupby(GROUP_KEYS, sort=False):
        methods = sorted(block["method"].unique(), key=lambda m: (method_rank(m), m))
        header = ["Exit (layer)", *[display_name(m) for m in methods]]
        rows = []
        for exit_index, at_exit in block.groupby("exit", sort=True):
            by_method = at_exit.set_index("method")
            layer = int(at_exit["exit_layer"].iloc[0])
            rows.append(
                [f"{int(exit_index)} ({layer})"]
                + [
                    _cell(by_method.at[m, "score_mean"], by_method.at[m, "score_std"], scale, pm)
                    if m in by_method.index else "–"
                    for m in methods
                ]
            )
        avg = averages[(averages[GROUP_KEYS] == pd.Series(dict(zip(GROUP_KEYS, group)))).all(axis=1)]
        avg_row = ["Average"]
        for m in methods:
            s = avg.loc[avg["method"] == m, "score"]
            avg_row.append(_cell(s.mean(), s.std(), scale, pm))
        rows.append(avg_row)
        metric = f"{block['metric'].iloc[0]}{unit}"
        blocks.append((group, metric, header, rows))
    return blocks


def individual_exits_markdown(exits_df: pd.DataFrame) -> str:
    """The paper's per-exit table: one block per task × model × budget; cells mean ± std over seeds."""
    lines = ["# Individual exits", "",
             "Each exit's own score (every example answered by that exit), mean ± std over seeds.", ""]
    for (task, model, budget), metric, header, rows in _exit_table_blocks(exits_df, " ± "):
        lines += [f"## {task} · {model} · budget {budget} — {metric}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in rows:
            label = f"**{row[0]}**" if row[0] == "Average" else row[0]
            lines.append("| " + " | ".join([label, *row[1:]]) + " |")
        lines.append("")
    return "\n".join(lines)


def _tex(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def individual_exits_latex(exits_df: pd.DataFrame) -> str:
    """Booktabs LaTeX of the same table (one tabular; blocks separated by rules, headed by task/model/budget)."""
    blocks = _exit_table_blocks(exits_df, r" $\pm$ ")
    methods = sorted(exits_df["method"].unique(), key=lambda m: (method_rank(m), m)) if not exits_df.empty else []
    names = [display_name(m) for m in methods]
    ncols = 1 + len(names)
    out = [r"% requires \usepackage{booktabs}", r"\begin{tabular}{l" + "c" * len(names) + "}", r"\toprule",
           " & ".join(["Exit (layer)", *names]) + r" \\"]
    for (task, model, budget), metric, header, rows in blocks:
        out += [r"\midrule",
                rf"\multicolumn{{{ncols}}}{{l}}{{\textit{{{_tex(str(task))} / {_tex(str(model))} / "
                rf"budget {budget} --- {_tex(metric)}}}}} \\",
                r"\midrule"]
        index = {h: i for i, h in enumerate(header)}
        for row in rows:
            cells = [row[index[n]] if n in index else "--" for n in names]
            cells = [c.replace("–", "--") for c in cells]
            label = r"\textbf{Average}" if row[0] == "Average" else row[0]
            if row[0] == "Average":
                out.append(r"\cmidrule(lr){1-" + str(ncols) + "}")
            out.append(" & ".join([label, *cells]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# curves: interpolation, AUC


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


def _front_value(xs: np.ndarray, ys: np.ndarray, lo: float, hi: float, at: np.ndarray) -> np.ndarray:
    at = np.asarray(at, dtype=np.float64)
    out = np.full(at.shape, np.nan)
    if xs.size == 0:
        return out
    tol = 1e-9 * max(1.0, abs(hi))
    inside = (at >= lo - tol) & (at <= hi + tol)
    # np.interp holds the first value constant on the left, which is the documented left extension
    out[inside] = np.interp(at[inside], xs, ys)
    return out


def interpolate_curve(speedup: np.ndarray, score: np.ndarray, at: Sequence[float] | np.ndarray) -> np.ndarray:
    """A seed's score at speedups ``at``: linear on its Pareto front, NaN outside its speedup range."""
    speedup = np.asarray(speedup, dtype=np.float64)
    finite = speedup[np.isfinite(speedup) & np.isfinite(np.asarray(score, dtype=np.float64))]
    if finite.size == 0:
        return np.full(np.shape(at), np.nan)
    xs, ys = pareto_front(speedup, score)
    return _front_value(xs, ys, float(finite.min()), float(finite.max()), np.asarray(at, dtype=np.float64))


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


def _curves_without_oracle(curves_df: pd.DataFrame) -> pd.DataFrame:
    return curves_df[curves_df["strategy"] != "oracle"]


def _mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna()
    return (float(v.mean()) if len(v) else float("nan"), float(v.std()) if len(v) > 1 else float("nan"), len(v))


def speedup_per_seed(curves_df: pd.DataFrame, speedups: Sequence[float] = DEFAULT_SPEEDUPS) -> pd.DataFrame:
    """One row per run × exit rule × fixed speedup: that seed's interpolated score (NaN outside its range)."""
    rows = []
    for key, run in _curves_without_oracle(curves_df).groupby([*RUN_KEYS, "strategy"], sort=False):
        values = interpolate_curve(run["speedup"].to_numpy(), run["score"].to_numpy(), list(speedups))
        for s, v in zip(speedups, values):
            rows.append({**dict(zip([*RUN_KEYS, "strategy"], key)), "metric": run["metric"].iloc[0],
                         "speedup": float(s), "score": float(v)})
    columns = [*RUN_KEYS, "strategy", "metric", "speedup", "score"]
    return pd.DataFrame(rows, columns=columns)


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
    return _sort(pd.DataFrame(rows, columns=columns), keys)


def shared_ranges(curves_df: pd.DataFrame) -> pd.DataFrame:
    """Per task × model × budget × exit rule: the speedup range every method and seed covers."""
    curves = _curves_without_oracle(curves_df)
    per_run = curves.groupby([*RUN_KEYS, "strategy"], sort=False)["speedup"].agg(["min", "max"]).reset_index()
    ranges = (
        per_run.groupby([*GROUP_KEYS, "strategy"], sort=False)
        .agg(speedup_min=("min", "max"), speedup_max=("max", "min"))
        .reset_index()
    )
    return ranges


def auc_per_seed(curves_df: pd.DataFrame) -> pd.DataFrame:
    columns = [*RUN_KEYS, "strategy", "metric", "auc", "speedup_min", "speedup_max"]
    curves = _curves_without_oracle(curves_df)
    if curves.empty:
        return pd.DataFrame(columns=columns)
    ranges = shared_ranges(curves).set_index([*GROUP_KEYS, "strategy"])
    rows = []
    for key, run in curves.groupby([*RUN_KEYS, "strategy"], sort=False):
        ident = dict(zip([*RUN_KEYS, "strategy"], key))
        lo, hi = ranges.loc[tuple(ident[k] for k in [*GROUP_KEYS, "strategy"])]
        auc = curve_auc(run["speedup"].to_numpy(), run["score"].to_numpy(), float(lo), float(hi))
        rows.append({**ident, "metric": run["metric"].iloc[0], "auc": auc, "speedup_min": float(lo),
                     "speedup_max": float(hi)})
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
    return _sort(pd.DataFrame(rows, columns=columns), keys)


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
    return _sort(pd.DataFrame(rows, columns=columns), keys)


# --------------------------------------------------------------------------------------------------------------
# paired comparisons


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of seed-paired differences; NaN with fewer than two seeds."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _paired_rows(
    values: pd.DataFrame, keys: list[str], value: str, extra: dict, n_resamples: int, seed: int
) -> list[dict]:
    """For each group in ``keys`` (which must not include method/seed) and each method pair: paired stats."""
    rows = []
    for key, group in values.groupby(keys, sort=False):
        wide = group.pivot_table(index="seed", columns="method", values=value, aggfunc="first")
        for a, b in PAIRS:
            if a not in wide.columns or b not in wide.columns:
                continue
            d = (wide[a] - wide[b]).dropna()
            low, high = bootstrap_ci(d.to_numpy(), n_resamples, seed)
            rows.append({**dict(zip(keys, key)), **extra, "comparison": f"{display_name(a)}-{display_name(b)}",
                         "method_a": a, "method_b": b,
                         "diff_mean": float(d.mean()) if len(d) else float("nan"),
                         "ci_low": low, "ci_high": high, "n_seeds": int(len(d))})
    return rows


PAIRWISE_COLUMNS = [*GROUP_KEYS, "strategy", "measure", "speedup", "exit", "comparison", "method_a", "method_b",
                    "diff_mean", "ci_low", "ci_high", "n_seeds"]


def pairwise_differences(
    curves_df: pd.DataFrame,
    exits_df: pd.DataFrame | None = None,
    speedups: Sequence[float] = DEFAULT_SPEEDUPS,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """SWEET−EE, MM−EE, SWEET−MM: seed-paired mean difference and 95% bootstrap interval.

    ``measure`` is ``score_at_speedup`` (``speedup`` set), ``auc`` (per exit rule), ``exit`` (an individual exit,
    ``exit`` set; strategy empty) or ``exit_average`` (the mean over exits, the paper's headline per-exit gain).
    """
    rows: list[dict] = []
    at_speed = speedup_per_seed(curves_df, speedups)
    for (strategy, s), part in at_speed.groupby(["strategy", "speedup"], sort=False):
        rows += _paired_rows(part, GROUP_KEYS, "score", {"strategy": strategy, "measure": "score_at_speedup",
                                                         "speedup": s}, n_resamples, seed)
    aucs = auc_per_seed(curves_df)
    for strategy, part in aucs.groupby("strategy", sort=False):
        rows += _paired_rows(part, GROUP_KEYS, "auc", {"strategy": strategy, "measure": "auc"}, n_resamples, seed)
    if exits_df is not None and not exits_df.empty:
        for exit_index, part in exits_df.groupby("exit", sort=False):
            rows += _paired_rows(part, GROUP_KEYS, "score", {"strategy": "", "measure": "exit",
                                                             "exit": int(exit_index)}, n_resamples, seed)
        rows += _paired_rows(_exit_average_per_seed(exits_df), GROUP_KEYS, "score",
                             {"strategy": "", "measure": "exit_average"}, n_resamples, seed)
    frame = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
    frame["comparison_rank"] = frame["comparison"].map(
        {f"{display_name(a)}-{display_name(b)}": i for i, (a, b) in enumerate(PAIRS)})
    frame = _sort(frame, [*GROUP_KEYS, "measure", "strategy", "speedup", "exit", "comparison_rank"])
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
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = frame.assign(other=frame["other"].astype(str))
    summary = (
        frame.groupby(keys, sort=False)
        .agg(cosine_mean=("cosine", "mean"), cosine_std=("cosine", "std"), n=("cosine", "size"),
             n_seeds=("seed", "nunique"))
        .reset_index()
    )
    return _sort(summary[columns], [*GROUP_KEYS, "method", "block", "other", "step"])


# --------------------------------------------------------------------------------------------------------------
# entry points


def aggregate(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    speedups: Sequence[float] = DEFAULT_SPEEDUPS,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write every table of ``results/tables`` from the given run folders; returns name → path written."""
    out = Path(out_dir)
    curves, exits, conflicts, missing = collect(run_dirs)
    tables = {
        "curves": curves,
        "exits": exits,
        "exits_summary": individual_exits_summary(exits),
        "speedup": speedup_summary(curves, speedups),
        "auc": auc_summary(curves),
        "oracle": oracle_summary(curves),
        "pairwise": pairwise_differences(curves, exits, speedups, n_resamples, seed),
        "conflict": conflicts,
        "conflict_summary": gradient_conflict_summary(conflicts),
        "conflict_steps": gradient_conflict_summary(conflicts, by_step=True),
    }
    written: dict[str, Path] = {}
    for name, frame in tables.items():
        written[name] = out / SUMMARY_FILES[name]
        write_csv(written[name], frame)
    written["exits_md"] = out / "individual_exits_summary.md"
    write_text(written["exits_md"], individual_exits_markdown(exits))
    written["exits_tex"] = out / "individual_exits_summary.tex"
    write_text(written["exits_tex"], individual_exits_latex(exits))
    written["missing"] = out / "missing_runs.txt"
    write_text(written["missing"], "".join(f"{m}\n" for m in missing))
    return written


def _speedups_arg(value: str) -> list[float]:
    try:
        speedups = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--speedups: {value!r} is not a comma-separated list of numbers") from None
    if not speedups or any(s <= 0 for s in speedups):
        raise argparse.ArgumentTypeError("--speedups: give positive numbers, e.g. 1.5,2,3,4")
    return speedups


def cmd_aggregate(args: argparse.Namespace) -> None:
    runs: list[Path] = [Path(r) for r in (args.runs or [])]
    if args.runs_file:
        path = Path(args.runs_file)
        if not path.is_file():
            raise UserError(f"--runs-file: {path} does not exist; give a file with one run folder per line")
        runs += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    if args.runs_root:
        runs += discover_runs(args.runs_root)
    if not runs:
        raise UserError("aggregate: no runs given; pass --runs RUN_DIR..., --runs-file FILE or --runs-root DIR")
    written = aggregate(runs, args.out, args.speedups, args.bootstrap, args.bootstrap_seed)
    missing = [line for line in written["missing"].read_text().splitlines() if line]
    if missing:
        print(f"aggregate: {len(missing)} of {len(set(runs))} runs not finished; listed in {written['missing']}")


def cmd_figures(args: argparse.Namespace) -> None:
    from sweet.plots import make_figures

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"--formats: {args.formats!r}; use a comma-separated subset of png,pdf,svg")
    make_figures(args.tables, args.out, strategy=args.strategy, formats=formats)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``aggregate`` and ``figures`` subcommands on the CLI's subparsers."""
    p = subparsers.add_parser("aggregate", help="the paper's tables from per-run CSVs (results/tables/)")
    p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                   help="run folders (results/runs/<task>/<model>/b<budget>/<method>/s<seed>); "
                        "those without curves.csv/individual_exits.csv are listed in missing_runs.txt")
    p.add_argument("--runs-file", help="a file listing run folders, one per line (for long grids)")
    p.add_argument("--runs-root", help="also take every run folder found under this folder")
    p.add_argument("--out", required=True, help="output folder, e.g. results/tables")
    p.add_argument("--speedups", type=_speedups_arg, default=list(DEFAULT_SPEEDUPS),
                   help="fixed speedups for speedup_summary.csv (default 1.5,2,3,4)")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples of seeds (default 10000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="RNG seed of the bootstrap (default 0)")
    p.set_defaults(func=cmd_aggregate)

    p = subparsers.add_parser("figures", help="speed-accuracy, individual-exit and gradient-conflict figures")
    p.add_argument("--tables", required=True, help="the folder `aggregate` wrote, e.g. results/tables")
    p.add_argument("--out", required=True, help="output folder, e.g. results/figures")
    p.add_argument("--strategy", default="confidence",
                   help="exit rule of the main speed-accuracy figures (default confidence; all rules also "
                        "appear in the *__allrules figures)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated file formats (default png,pdf)")
    p.set_defaults(func=cmd_figures)
