"""The paper's figures, drawn from a grid's tables (``results/<grid>/tables``, never from a model), each with a
caption written from the same data, so the caption says what the figure shows (its setting, exit rule, seeds,
whether it has an oracle point or reference thresholds). ``index.json`` lists every figure with its caption, for
the report.

* ``speed_accuracy/<task>__<model>__b<budget>.{png,pdf}``: score vs. speedup for one exit rule (confidence by
  default), one line per method = mean over seeds of each seed's Pareto-front curve on a common speedup grid,
  band = ± one std over seeds, markers = the reference thresholds (the paper's 11, seed-averaged), stars = the oracle point
  (every example at its earliest correct exit). ``..__allrules`` has one panel per exit rule; ``overview`` facets
  the whole grid.
* ``individual_exits/<task>__<model>__b<budget>.{png,pdf}``: each exit's own score per exit layer, error bars =
  std over seeds.
* ``risk_control/<task>__<model>__b<budget>.{png,pdf}``: the evaluation speedup of the risk-controlled
  threshold against the tolerance ε, one panel per risk, one line per method.
* ``risk_control/<task>__<model>__b<budget>__tradeoff.{png,pdf}``: the certified policies' evaluation score
  against their evaluation speedup, one line per method through every risk and ε (the common error target's
  among them), beside each method's envelope curve: the trade-off to compare methods on.
* ``training_loss/<task>__<model>__b<budget>.{png,pdf}``: each exit's training loss over optimizer steps, one
  panel per exit, one line per method = mean over seeds, band = ± one std (MM: exit k is member k); a multi-stage
  method (DeeBERT) on its step axis continued across stages, a dotted line where each later stage begins.
* ``gradient_conflict/<task>__<model>__b<budget>.{png,pdf}`` (runs with the probe only): block × exit heat map
  of the mean cosine (seeds and steps pooled) and the cosine of block k's own-exit gradient with the sum of the
  later exits' gradients over training steps.

Files are written atomically and byte-reproducibly (no timestamps, fixed SVG hash salt), with the registry's
colour and marker per method (``sweet.methods``) so every method looks the same in every figure.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from sweet.exits import EXIT_RULES
from sweet.io import atomic_dir, atomic_path, write_json, write_text
from sweet.methods import METHODS
from sweet.reporting.collect import (
    GROUP_KEYS,
    RUN_KEYS,
    display_name,
    is_per_exit,
    methods_in_order,
    read_table,
)
from sweet.reporting.statistics import gradient_conflict_summary, interpolate_curve
from sweet.reporting.tables import (
    CURVES,
    GRADIENT_CONFLICT,
    INDIVIDUAL_EXITS,
    LATENCY,
    RISK_CONTROL,
    RISK_CONTROL_COMMON,
    STATUS,
    TRAINING_LOSS,
    TRAINING_STAGES,
)

# The registry's colour (Okabe–Ito where it has room: colour-blind safe) and marker per method, so the figures
# survive grey-scale printing and a method looks the same in every figure. Methods the registry does not know
# get colours and markers no registered method uses, so they never pass for one.
PALETTE = {name: method.color for name, method in METHODS.items()}
MARKERS = {name: method.marker for name, method in METHODS.items()}
PAPER_METHODS = ("ee", "sweet", "mm")  # the paper's figures tell these three apart by colour alone
EXTRA_COLOURS = [c for c in ("#F0E442", "#8C564B", "#BCBD22", "#17BECF", "#1F3A93", "#7F3C8D")
                 if c not in PALETTE.values()]
EXTRA_MARKERS = [m for m in ("d", "<", ">", "8", "p", "H", "1", "2") if m not in MARKERS.values()]
ORACLE_COLOUR = "#6E6E6E"
STRATEGY_NAMES = {name: rule.label for name, rule in EXIT_RULES.items()}  # in the registry's order
SPEEDUP_LABEL = "Speedup (×, full-model layers / layers used)"
GRID_POINTS = 160
RC = {
    "svg.hashsalt": "sweet",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "savefig.dpi": 150,
}
METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
            "svg": {"Date": None, "Creator": None}}


def colour(method: str) -> str:
    if method in PALETTE:
        return PALETTE[method]
    return EXTRA_COLOURS[sum(map(ord, method)) % len(EXTRA_COLOURS)]  # by name: the same in every figure


def marker(method: str) -> str:
    if method in MARKERS:
        return MARKERS[method]
    return EXTRA_MARKERS[sum(map(ord, method)) % len(EXTRA_MARKERS)]


def per_exit_names(methods: Sequence[str]) -> str:
    """The per-exit methods among ``methods`` as one subject ("MM", "MM and X"), "" when there are none."""
    labels = [display_name(m) for m in methods_in_order(methods) if is_per_exit(m)]
    return " and ".join(labels)


def _methods(frame: pd.DataFrame) -> list[str]:
    return methods_in_order(frame["method"])


def _metric_axis(frame: pd.DataFrame, column: str = "score") -> tuple[float, str]:
    """(scale, y label): fractions are shown as percentages."""
    metric = str(frame["metric"].dropna().iloc[0]) if "metric" in frame and frame["metric"].notna().any() else "score"
    values = frame[column].dropna().abs()
    percent = values.empty or values.max() <= 1.0
    name = metric.replace("_", " ")
    name = name[:1].upper() + name[1:]
    return (100.0, f"{name} (%)") if percent else (1.0, name)


def _stem(task: str, model: str, budget: object) -> str:
    return f"{task}__{str(model).replace('/', '--')}__b{budget}"


def _save(fig: Figure, stem: Path, formats: Sequence[str]) -> list[Path]:
    written = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        # the SVG ids are hashes salted per process unless fixed, which is read when saving
        with atomic_path(path, suffix=f".{fmt}") as tmp, mpl.rc_context({"svg.hashsalt": RC["svg.hashsalt"]}):
            fig.savefig(tmp, format=fmt, metadata=METADATA.get(fmt), bbox_inches="tight")
        written.append(path)
    return written


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _speedup_axis(ax, lo: float, hi: float, compact: bool = False) -> None:
    """Log-2 speedup axis with plain "2×" ticks: equal ratios get equal room, 1× to 12× stays readable."""
    ax.set_xscale("log", base=2)
    powers = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
    candidates = powers if compact else [0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    ticks = [t for t in candidates if lo / 1.06 <= t <= hi * 1.06]
    if len(ticks) > 9:
        ticks = [t for t in ticks if t in powers]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    lo, hi = min([lo, *ticks]), max([hi, *ticks])
    pad = (hi / lo) ** 0.03 if hi > lo else 1.1
    ax.set_xlim(lo / pad, hi * pad)


# --------------------------------------------------------------------------------------------------------------
# speed–accuracy


def seed_band(runs: pd.DataFrame, points: int = GRID_POINTS) -> pd.DataFrame:
    """Mean and std over seeds of the seeds' interpolated curves, on a grid over the range all seeds cover."""
    per_seed = [(g["speedup"].to_numpy(), g["score"].to_numpy()) for _, g in runs.groupby("seed", sort=True)]
    per_seed = [(x, y) for x, y in per_seed if np.isfinite(x).any()]
    if not per_seed:
        return pd.DataFrame(columns=["speedup", "mean", "std", "n"])
    lo = max(float(np.nanmin(x)) for x, _ in per_seed)
    hi = min(float(np.nanmax(x)) for x, _ in per_seed)
    if not hi > lo:
        return pd.DataFrame(columns=["speedup", "mean", "std", "n"])
    grid = np.geomspace(lo, hi, points)
    values = np.vstack([interpolate_curve(x, y, grid) for x, y in per_seed])
    n = np.isfinite(values).sum(axis=0)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if len(per_seed) > 1 else np.full(grid.shape, np.nan)
    return pd.DataFrame({"speedup": grid, "mean": mean, "std": std, "n": n})


def _reference_points(runs: pd.DataFrame) -> pd.DataFrame:
    if "reference_threshold" not in runs.columns:
        return runs.iloc[0:0]
    ref = runs[runs["reference_threshold"].fillna(0).astype(int) == 1]
    return ref.groupby("threshold", sort=True).agg(speedup=("speedup", "mean"), score=("score", "mean")).reset_index()


def _draw_speed_accuracy(
    ax, block: pd.DataFrame, strategy: str, scale: float, oracle: bool = True, compact: bool = False
) -> None:
    curves = block[block["strategy"] == strategy]
    xs: list[float] = []
    for method in _methods(curves):
        runs = curves[curves["method"] == method]
        band = seed_band(runs)
        c = colour(method)
        if not band.empty:
            ax.plot(band["speedup"], band["mean"] * scale, color=c, lw=1.8, label=display_name(method), zorder=3)
            if band["std"].notna().any():
                ax.fill_between(band["speedup"], (band["mean"] - band["std"]) * scale,
                                (band["mean"] + band["std"]) * scale, color=c, alpha=0.18, lw=0, zorder=2)
            xs += [float(band["speedup"].min()), float(band["speedup"].max())]
        ref = _reference_points(runs)
        if not ref.empty:
            ax.plot(ref["speedup"], ref["score"] * scale, ls="none", marker=marker(method), ms=4.5, mfc="white",
                    mec=c, mew=1.2, zorder=4, label=None if not band.empty else display_name(method))
            xs += [float(ref["speedup"].min()), float(ref["speedup"].max())]
    if oracle:
        points = block[block["strategy"] == "oracle"]
        for method in _methods(points):
            p = points[points["method"] == method]
            ax.errorbar(p["speedup"].mean(), p["score"].mean() * scale,
                        yerr=p["score"].std() * scale if len(p) > 1 else None,
                        marker="*", ms=11, mfc=colour(method), mec=ORACLE_COLOUR, mew=0.8, color=ORACLE_COLOUR,
                        ls="none", capsize=2, zorder=5)
            xs.append(float(p["speedup"].mean()))
    xs = [x for x in xs if np.isfinite(x) and x > 0]
    if xs:
        _speedup_axis(ax, min(xs), max(xs), compact)
    ax.grid(True, which="major", lw=0.5, alpha=0.5)


def _reference_count(curves: pd.DataFrame) -> int:
    """How many of the reference grid's thresholds a run's curve marks (the paper's 11 unless configured)."""
    if "reference_threshold" not in curves:
        return 0
    ref = curves[(curves["reference_threshold"].fillna(0) == 1) & (curves["strategy"] != "oracle")]
    return int(ref.groupby([*RUN_KEYS, "strategy"])["threshold"].nunique().max()) if not ref.empty else 0


def _seeds_phrase(frame: pd.DataFrame, spread: str) -> str:
    """"band = ± 1 std over 3 seeds" or, with a single seed, "one seed, no band"."""
    n = frame.groupby("method")["seed"].nunique()
    if n.max() <= 1:
        return f"one seed, no {spread}"
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}–{n.max()}"
    return f"{spread} = ± 1 std over {seeds} seeds"


def _legend_handles(methods: Sequence[str], oracle: bool, references: int) -> list:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour(m), lw=1.8, marker=marker(m), mfc="white", mec=colour(m), ms=4.5,
                      label=display_name(m)) for m in methods]
    if references:
        handles.append(Line2D([], [], color="none", marker="o", mfc="white", mec="black", ms=4.5,
                              label=f"{references} reference thresholds"))
    if oracle:
        handles.append(Line2D([], [], color="none", marker="*", mfc="white", mec=ORACLE_COLOUR, ms=11,
                              label="oracle (earliest correct exit)"))
    return handles


def _title(task: str, model: str, budget: object) -> str:
    return f"{task} · {model} · {budget} training examples"


def speed_accuracy_figure(block: pd.DataFrame, strategy: str = "confidence") -> Figure | None:
    """One task × model × budget: score vs. speedup for one exit rule, seed bands, reference marks, oracle."""
    curves = block[block["strategy"] == strategy]
    if curves.empty:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    scale, ylabel = _metric_axis(block)
    fig = _new_figure(5.6, 3.9)
    ax = fig.add_subplot()
    _draw_speed_accuracy(ax, block, strategy, scale)
    ax.set_xlabel(SPEEDUP_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{_title(task, model, budget)}\n{STRATEGY_NAMES.get(strategy, strategy)} exit rule; "
                 f"{_seeds_phrase(curves, 'band')}")
    has_oracle = (block["strategy"] == "oracle").any()
    ax.legend(handles=_legend_handles(_methods(curves), has_oracle, _reference_count(curves)), loc="best",
              frameon=True, framealpha=0.9)
    return fig


def _strategies(block: pd.DataFrame) -> list[str]:
    """The exit rules in the block, the paper's first."""
    strategies = [s for s in STRATEGY_NAMES if (block["strategy"] == s).any()]
    return strategies + sorted(set(block["strategy"]) - set(strategies) - {"oracle"})


def speed_accuracy_allrules_figure(block: pd.DataFrame) -> Figure | None:
    """One panel per exit rule (sweet.exits.EXIT_RULES) for one task × model × budget."""
    strategies = _strategies(block)
    if not strategies:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    scale, ylabel = _metric_axis(block)
    ncols = min(len(strategies), 2)
    nrows = math.ceil(len(strategies) / ncols)
    fig = _new_figure(4.4 * ncols, 3.3 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    for ax, strategy in zip(axes.flat, strategies):
        _draw_speed_accuracy(ax, block, strategy, scale, compact=ncols > 1)
        ax.set_title(f"{STRATEGY_NAMES.get(strategy, strategy)} exit rule")
        ax.set_xlabel(SPEEDUP_LABEL)
    for ax in axes.flat[len(strategies):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel)
    fig.suptitle(f"{_title(task, model, budget)}; {_seeds_phrase(block, 'band')}")
    fig.legend(handles=_legend_handles(_methods(block), (block["strategy"] == "oracle").any(),
                                       _reference_count(block)),
               loc="outside lower center", ncols=5, frameon=False)
    return fig


def overview_figure(curves: pd.DataFrame, strategy: str = "confidence") -> Figure | None:
    """The whole grid: rows = tasks, columns = model × budget; same axes conventions as the single figures."""
    curves = curves[curves["strategy"].isin([strategy, "oracle"])]
    if not (curves["strategy"] == strategy).any():
        return None
    tasks = sorted(curves["task"].unique())
    columns = sorted({(m, b) for m, b in zip(curves["model"], curves["budget"])}, key=lambda mb: (mb[0], mb[1]))
    scale, ylabel = _metric_axis(curves)
    fig = _new_figure(3.5 * len(columns) + 0.4, 2.8 * len(tasks) + 0.7)
    axes = fig.subplots(len(tasks), len(columns), squeeze=False)
    for i, task in enumerate(tasks):
        for j, (model, budget) in enumerate(columns):
            ax = axes[i, j]
            block = curves[(curves["task"] == task) & (curves["model"] == model) & (curves["budget"] == budget)]
            if not (block["strategy"] == strategy).any():
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes,
                        color=ORACLE_COLOUR)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _draw_speed_accuracy(ax, block, strategy, scale, compact=True)
            ax.set_title(f"{task} · {model} · {budget} ex.", fontsize=9)
            if i == len(tasks) - 1:
                ax.set_xlabel("Speedup (×)")
            if j == 0:
                ax.set_ylabel(ylabel)
    fig.suptitle(f"Speed–accuracy trade-off, {STRATEGY_NAMES.get(strategy, strategy)} exit rule "
                 f"({_seeds_phrase(curves[curves['strategy'] == strategy], 'band')})")
    fig.legend(handles=_legend_handles(_methods(curves), (curves["strategy"] == "oracle").any(),
                                       _reference_count(curves)),
               loc="outside lower center", ncols=5, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------------------
# individual exits


def individual_exits_figure(block: pd.DataFrame) -> Figure | None:
    """Each exit's own score by exit layer, one line per method, error bars = std over seeds."""
    if block.empty:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    scale, ylabel = _metric_axis(block)
    stats = (block.groupby(["method", "exit"], sort=False)
             .agg(layer=("exit_layer", "first"), mean=("score", "mean"), std=("score", "std"),
                  n=("seed", "nunique")).reset_index())
    exits = sorted(stats["exit"].unique())
    layers = stats.groupby("exit")["layer"].first()
    methods = _methods(stats)
    fig = _new_figure(max(4.6, 1.1 * len(exits) + 2.2), 3.6)
    ax = fig.add_subplot()
    width = 0.09
    for i, method in enumerate(methods):
        s = stats[stats["method"] == method].sort_values("exit")
        offset = (i - (len(methods) - 1) / 2) * width  # dodge so error bars never overlap
        ax.errorbar(s["exit"] + offset, s["mean"] * scale, yerr=(s["std"] * scale).fillna(0).to_numpy(),
                    color=colour(method), marker=marker(method), ms=5, lw=1.6, capsize=3,
                    label=display_name(method))
    ax.set_xticks(exits, [f"{int(layers[e])}" for e in exits])
    ax.set_xlim(min(exits) - 0.4, max(exits) + 0.4)
    ax.set_xlabel("Exit after layer (MM: depth of the member)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{_title(task, model, budget)}\neach exit's own score; {_seeds_phrase(block, 'error bars')}")
    ax.grid(True, axis="y", lw=0.5, alpha=0.5)
    ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return fig


# --------------------------------------------------------------------------------------------------------------
# gradient conflict


def _other_label(other: str) -> str:
    return "sum of later" if other == "sum" else f"exit {other}"


def gradient_conflict_figure(block: pd.DataFrame) -> Figure | None:
    """Heat map block × later exit of the mean cosine (seeds, steps pooled) and, per block, the cosine with the
    sum of later exits' gradients over training steps; one row per method that recorded the probe."""
    block = block.dropna(subset=["cosine"])
    if block.empty:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    pooled = gradient_conflict_summary(block)
    steps = gradient_conflict_summary(block, by_step=True)
    methods = _methods(pooled)
    vmax = max(0.1, float(np.ceil(pooled["cosine_mean"].abs().max() * 10) / 10))
    others = list(dict.fromkeys(pooled["other"]))  # already in exit order with "sum" last
    blocks = sorted(pooled["block"].unique())
    fig = _new_figure(4.0 + 0.8 * len(others) + 4.4, 0.6 + max(3.4, 0.55 * len(blocks) + 1.6) * len(methods))
    axes = fig.subplots(len(methods), 2, squeeze=False, width_ratios=[1.0 + 0.2 * len(others), 1.6])
    block_colours = sns.color_palette("crest", n_colors=max(len(blocks), 2))
    for row, method in zip(axes, methods):
        heat_ax, line_ax = row
        p = pooled[pooled["method"] == method]
        grid = p.pivot(index="block", columns="other", values="cosine_mean").reindex(index=blocks, columns=others)
        grid.index = [f"block {b}" for b in grid.index]
        grid.columns = [_other_label(o) for o in grid.columns]
        # seaborn 0.13 calls a Colormap method that matplotlib 3.11 marks as pending removal
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(grid, ax=heat_ax, cmap="RdBu", vmin=-vmax, vmax=vmax, center=0, annot=True, fmt=".2f",
                        annot_kws={"fontsize": 8}, linewidths=0.5, linecolor="white",
                        cbar_kws={"label": "cosine similarity"})
        heat_ax.set_xlabel("loss gradient of")
        heat_ax.set_ylabel("block k, vs. its own exit k")
        heat_ax.tick_params(axis="x", rotation=30)
        heat_ax.tick_params(axis="y", rotation=0)
        heat_ax.set_title(f"{display_name(method)}: mean cosine, seeds and steps pooled")
        s = steps[(steps["method"] == method) & (steps["other"] == "sum")]
        if s.empty:  # the probe without a "sum" column: fall back to the next exit
            s = steps[steps["method"] == method]
            s = s[s["other"] == s.groupby("block")["other"].transform("first")]
        for b, colour_b in zip(blocks, block_colours):
            sb = s[s["block"] == b].sort_values("step")
            if sb.empty:
                continue
            line_ax.plot(sb["step"], sb["cosine_mean"], marker="o", ms=3, lw=1.5, color=colour_b, label=f"block {b}")
            if sb["cosine_std"].notna().any():
                line_ax.fill_between(sb["step"], sb["cosine_mean"] - sb["cosine_std"],
                                     sb["cosine_mean"] + sb["cosine_std"], color=colour_b, alpha=0.15, lw=0)
        line_ax.axhline(0, color="black", lw=0.8)
        line_ax.set_xlabel("training step")
        line_ax.set_ylabel("cosine: own exit vs. sum of later")
        line_ax.set_title(f"{display_name(method)}: over training (band = ± 1 std over seeds)")
        line_ax.grid(True, lw=0.5, alpha=0.5)
        line_ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    fig.suptitle(f"Gradient conflict · {_title(task, model, budget)} (negative = conflicting)")
    return fig


# --------------------------------------------------------------------------------------------------------------
# training dynamics


def _training_loss_stats(block: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each method's exit loss at each logged step."""
    return (block.dropna(subset=["loss"]).groupby(["method", "exit", "step"], sort=True)
            .agg(mean=("loss", "mean"), std=("loss", "std"), layer=("exit_layer", "first"), n=("seed", "nunique"))
            .reset_index())


def _exit_title(exit_index: int, layer: object) -> str:
    return f"exit {exit_index}" + ("" if pd.isna(layer) else f" (after layer {int(layer)})")


def stage_boundaries(stages: pd.DataFrame | None) -> dict[str, list[float]]:
    """Per multi-stage method: the steps where each later stage begins (halfway between one stage's last logged
    step and the next one's first, averaged over seeds: the stages' lengths are the same for every seed unless a
    budget's epochs differ)."""
    if stages is None or stages.empty:
        return {}
    out: dict[str, list[float]] = {}
    for method, part in stages.groupby("method", sort=False):
        spans = part.groupby("stage_index", sort=True).agg(lo=("step_min", "mean"), hi=("step_max", "mean"))
        out[str(method)] = [(hi + lo_next) / 2 for hi, lo_next in zip(spans["hi"].iloc[:-1], spans["lo"].iloc[1:])]
    return {m: b for m, b in out.items() if b}


def training_loss_figure(block: pd.DataFrame, stages: pd.DataFrame | None = None) -> Figure | None:
    """One task × model × budget: each exit's training loss over optimizer steps, one panel per exit (shared
    axes, so exits compare at a glance), one line per method = mean over seeds, band = ± one std. A multi-stage
    method (``stages``: its rows of training_stages.csv) is drawn on its continued step axis, with a dotted line
    where each later stage begins."""
    stats = _training_loss_stats(block)
    if stats.empty:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    exits = sorted(stats["exit"].unique())
    ncols = min(len(exits), 4)
    nrows = math.ceil(len(exits) / ncols)
    fig = _new_figure(3.0 * ncols + 0.4, 2.6 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    methods = _methods(stats)
    # Beyond the paper's three, colours alone come close (two blues, two oranges): markers tell the lines apart.
    # The paper's three keep their plain lines, so their figure stays as it was.
    marked = bool(set(methods) - set(PAPER_METHODS))
    boundaries = stage_boundaries(stages)
    for ax, exit_index in zip(axes.flat, exits):
        at_exit = stats[stats["exit"] == exit_index]
        for method in methods:
            s = at_exit[at_exit["method"] == method]
            if s.empty:
                continue
            c = colour(method)
            style = {"marker": marker(method), "ms": 4, "markevery": max(1, len(s) // 6)} if marked else {}
            ax.plot(s["step"], s["mean"], color=c, lw=1.6, zorder=3, **style)
            for step in boundaries.get(method, []):
                ax.axvline(step, color=c, ls=":", lw=1.0, zorder=1)
            if s["std"].notna().any():
                ax.fill_between(s["step"], s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                                color=c, alpha=0.18, lw=0, zorder=2)
        ax.set_title(_exit_title(exit_index, at_exit["layer"].dropna().iloc[0] if at_exit["layer"].notna().any()
                                 else None))
        ax.grid(True, lw=0.5, alpha=0.5)
    for ax in axes.flat[len(exits):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for row in axes:
        row[0].set_ylabel("training loss")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour(m), lw=1.6, label=display_name(m),
                      **({"marker": marker(m), "ms": 4} if marked else {})) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    fig.suptitle(f"Training loss per exit · {_title(task, model, budget)}; {_seeds_phrase(block, 'band')}")
    return fig


# --------------------------------------------------------------------------------------------------------------
# risk control

RISK_NAMES = {"disagreement": "disagreement with the last exit", "accuracy-drop": "accuracy drop vs. the last exit",
              "error": "error rate"}


def risk_control_figure(block: pd.DataFrame, strategy: str = "confidence") -> Figure | None:
    """One task × model × budget: the evaluation speedup of the risk-controlled threshold against the tolerance
    ε, one panel per risk, one line per method (mean over seeds; error bars = std; hollow = some seed certified
    nothing at that ε and runs the full model)."""
    block = block[block["strategy"] == strategy]
    if block.empty:
        return None
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    risks = [r for r in RISK_NAMES if (block["risk"] == r).any()] + sorted(set(block["risk"]) - set(RISK_NAMES))
    fig = _new_figure(3.4 * len(risks) + 0.6, 3.5)
    axes = fig.subplots(1, len(risks), sharey=True, squeeze=False)[0]
    certified = block["certified"].astype(str).str.lower() == "true"
    frame = block.assign(certified=certified)
    for ax, risk in zip(axes, risks):
        part = frame[frame["risk"] == risk]
        for method in _methods(part):
            s = (part[part["method"] == method].groupby("epsilon", sort=True)
                 .agg(mean=("eval_speedup", "mean"), std=("eval_speedup", "std"), all_certified=("certified", "all"))
                 .reset_index())
            c = colour(method)
            ax.errorbar(s["epsilon"] * 100, s["mean"], yerr=s["std"].fillna(0).to_numpy(), color=c, lw=1.6,
                        capsize=3, label=display_name(method), zorder=3)
            for filled in (True, False):
                pts = s[s["all_certified"] == filled]
                ax.plot(pts["epsilon"] * 100, pts["mean"], ls="none", marker=marker(method), ms=5.5, mec=c,
                        mfc=c if filled else "white", zorder=4)
        ax.set_xscale("log")
        ticks = sorted(part["epsilon"].unique() * 100)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(f"Tolerance ε (points of {risk})")
        ax.set_title(RISK_NAMES.get(risk, risk))
        ax.axhline(1.0, color=ORACLE_COLOUR, lw=0.8, ls=":")
        ax.grid(True, lw=0.5, alpha=0.5)
    axes[0].set_ylabel("Certified speedup on the evaluation split (×)")
    axes[0].legend(loc="upper left", frameon=True, framealpha=0.9)
    delta = float(block["delta"].iloc[0])
    fig.suptitle(f"{_title(task, model, budget)}\n{STRATEGY_NAMES.get(strategy, strategy)} exit rule, risk ≤ ε "
                 f"with probability ≥ {1 - delta:g}; {_seeds_phrase(block, 'error bars')}", fontsize=10)
    return fig


def risk_control_caption(block: pd.DataFrame, strategy: str = "confidence") -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    block = block[block["strategy"] == strategy]
    delta = float(block["delta"].iloc[0])
    return (f"Risk-controlled early exit, {_title(task, model, budget)}, {STRATEGY_NAMES.get(strategy, strategy)} "
            f"exit rule ({_seed_counts(block)}). For each tolerance ε the threshold is the fastest one certified on "
            f"the calibration split (fixed-sequence testing from the slowest threshold; exact binomial test for "
            f"disagreement, betting bound for the accuracy drop), so that the risk is at most ε with probability at "
            f"least {1 - delta:g} over the calibration draw; y: the speedup that threshold gives on the evaluation "
            f"split, mean over seeds, {_spread(block, 'error bar')}. Hollow markers: at least one seed certified "
            "no threshold and answers every example at the last exit (1×; MM: its full cost, below 1×). Dotted: "
            "the full model. Both risks are relative to each method's own full model (its last exit), so a method "
            "whose last exit is weaker meets the same ε against a lower bar: this figure is not a ranking of "
            "methods; the certified trade-off figure (…__tradeoff) compares them at equal accuracy.")


def _certified_points(frame: pd.DataFrame | None, strategy: str, keys: list[str]) -> pd.DataFrame:
    """Per method × ``keys``: the mean evaluation speedup and score over the seeds that certified a threshold."""
    columns = ["method", *keys, "eval_speedup", "eval_score", "n"]
    if frame is None or frame.empty:
        return pd.DataFrame(columns=columns)
    certified = frame[(frame["strategy"] == strategy) & (frame["certified"].astype(str).str.lower() == "true")]
    if certified.empty:
        return pd.DataFrame(columns=columns)
    return (certified.groupby(["method", *keys], sort=True)
            .agg(eval_speedup=("eval_speedup", "mean"), eval_score=("eval_score", "mean"), n=("seed", "nunique"))
            .reset_index())


def risk_tradeoff_figure(
    curves: pd.DataFrame, own: pd.DataFrame | None, common: pd.DataFrame | None, strategy: str = "confidence"
) -> Figure | None:
    """One task × model × budget: each certified policy's evaluation score against its evaluation speedup (mean
    over the seeds that certified it), one line per method through all its risks and ε, sorted by speedup;
    filled markers = the common error target (the same target accuracy for every method), hollow = a risk
    relative to the method's own last exit. Thin dashed lines: the methods' envelope curves (mean over seeds)."""
    own_points = _certified_points(own, strategy, ["risk", "epsilon"]).assign(common=False)
    common_points = _certified_points(common, strategy, ["risk", "offset"]).assign(common=True)
    points = pd.concat([p for p in (own_points, common_points) if not p.empty], ignore_index=True) \
        if not (own_points.empty and common_points.empty) else own_points
    if points.empty:
        return None
    task, model, budget = (curves[k].iloc[0] for k in GROUP_KEYS)
    scale, ylabel = _metric_axis(curves)
    fig = _new_figure(5.6, 4.1)
    ax = fig.add_subplot()
    envelope = curves[curves["strategy"] == strategy]
    xs = list(points["eval_speedup"].astype(float))
    for method in methods_in_order(set(points["method"]) | set(envelope["method"])):
        c = colour(method)
        band = seed_band(envelope[envelope["method"] == method])
        if not band.empty:
            ax.plot(band["speedup"], band["mean"] * scale, color=c, lw=1.0, ls="--", alpha=0.6, zorder=2)
            xs += [float(band["speedup"].min()), float(band["speedup"].max())]
        mine = points[points["method"] == method].sort_values("eval_speedup", kind="mergesort")
        if mine.empty:
            continue
        ax.plot(mine["eval_speedup"], mine["eval_score"] * scale, color=c, lw=1.6, label=display_name(method),
                zorder=3)
        for is_common in (True, False):
            pts = mine[mine["common"] == is_common]
            ax.plot(pts["eval_speedup"], pts["eval_score"] * scale, ls="none", marker=marker(method), ms=5.5,
                    mec=c, mfc=c if is_common else "white", zorder=4)
    xs = [x for x in xs if np.isfinite(x) and x > 0]
    if xs:
        _speedup_axis(ax, min(xs), max(xs))
    ax.grid(True, which="major", lw=0.5, alpha=0.5)
    ax.set_xlabel("Speedup on the evaluation split (×, full-model layers / layers used)")
    ax.set_ylabel(f"{ylabel}, evaluation split")
    ax.legend(loc="best", frameon=True, framealpha=0.9)
    ax.set_title(f"{_title(task, model, budget)}\ncertified policies, {STRATEGY_NAMES.get(strategy, strategy)} exit "
                 "rule (filled: common error target; dashed: envelope)", fontsize=10)
    return fig


def risk_tradeoff_caption(
    curves: pd.DataFrame, own: pd.DataFrame | None, common: pd.DataFrame | None, strategy: str = "confidence"
) -> str:
    task, model, budget = (curves[k].iloc[0] for k in GROUP_KEYS)
    frames = [f[f["strategy"] == strategy] for f in (own, common) if f is not None and not f.empty]
    seeds = _seed_counts(pd.concat(frames, ignore_index=True)) if frames else "no seeds"
    text = (f"The certified accuracy–speed trade-off, {_title(task, model, budget)}, "
            f"{STRATEGY_NAMES.get(strategy, strategy)} exit rule ({seeds}). Each point is a risk-controlled "
            "threshold: x its speedup and y its score on the evaluation split, the mean over the seeds that "
            "certified it (seeds that certified nothing run the full model and are left out). One line per method "
            "through all its risks and tolerances, in order of speed; read it as that method's certified "
            "trade-off and compare methods at equal accuracy.")
    if common is not None and not common.empty:
        offsets = ", ".join(f"{o * 100:g}" for o in sorted(common["offset"].unique()))
        text += (f" Filled markers: the error rate held to one target for every method, {offsets} points below "
                 "the best last exit among the setting's methods on the calibration split (per seed).")
    text += (" Hollow markers: disagreement with, or accuracy drop against, the method's own last exit, each "
             "relative to that method's own full model. Dashed: each method's envelope (the evaluation curve's "
             "Pareto front, mean over seeds), which no deployed threshold reaches with certainty.")
    return text


# --------------------------------------------------------------------------------------------------------------
# captions: written from the data each figure is drawn from


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seed_counts(frame: pd.DataFrame) -> str:
    """"EE 3, SWEET 3, MM 2 seeds", "3 seeds per method" or, for one method, "3 seeds"."""
    counts = frame.groupby("method")["seed"].nunique()
    if len(counts) == 1:
        return _plural(int(counts.iloc[0]), "seed")
    if counts.nunique() == 1:
        return f"{_plural(int(counts.iloc[0]), 'seed')} per method"
    return ", ".join(f"{display_name(m)} {int(counts[m])}" for m in methods_in_order(counts.index)) + " seeds"


def _spread(frame: pd.DataFrame, what: str) -> str:
    """"the band is ± 1 standard deviation over seeds", or "one seed, so no band"."""
    if frame.groupby("method")["seed"].nunique().max() > 1:
        return f"the {what} is ± 1 standard deviation over seeds"
    return f"one seed, so no {what}"


def _speed_accuracy_conventions(block: pd.DataFrame, strategy: str) -> str:
    curves = block[block["strategy"] == strategy] if strategy else block[block["strategy"] != "oracle"]
    _, ylabel = _metric_axis(block)
    parts = [f"x: speedup over the full model (its layers ÷ the layers used, log scale); y: {ylabel[:1].lower()}"
             f"{ylabel[1:]}. Each line is the mean over seeds of each seed's Pareto-optimal curve; "
             f"{_spread(curves, 'band')}"]
    references = _reference_count(curves)
    if references:
        parts.append(f"hollow markers: the {references} thresholds of the paper's reference grid, seed-averaged")
    if (block["strategy"] == "oracle").any():
        parts.append("stars: the oracle (every example leaves at its earliest correct exit), headroom no exit rule "
                     "reaches")
    text = "; ".join(parts) + "."
    per_exit = per_exit_names(curves["method"])
    if per_exit:
        text += (f" {per_exit}'s curve starts below 1×: with every member needed, running the members in sequence "
                 "costs more than the full model.")
    return text


def speed_accuracy_caption(block: pd.DataFrame, strategy: str = "confidence") -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    curves = block[block["strategy"] == strategy]
    return (f"Speed–accuracy trade-off, {_title(task, model, budget)}, {STRATEGY_NAMES.get(strategy, strategy)} "
            f"exit rule ({_seed_counts(curves)}). {_speed_accuracy_conventions(block, strategy)}")


def speed_accuracy_allrules_caption(block: pd.DataFrame) -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    rules = [STRATEGY_NAMES.get(s, s) for s in _strategies(block)]
    return (f"Speed–accuracy trade-off, {_title(task, model, budget)}, one panel per exit rule "
            f"({', '.join(rules)}; {_seed_counts(block)}). {_speed_accuracy_conventions(block, '')}")


def overview_caption(curves: pd.DataFrame, strategy: str = "confidence") -> str:
    rule = curves[curves["strategy"] == strategy]
    settings = rule[GROUP_KEYS].drop_duplicates()
    tasks = curves["task"].nunique()
    columns = len({(m, b) for m, b in zip(curves["model"], curves["budget"])})
    text = (f"Speed–accuracy trade-off over the whole grid ({_plural(len(settings), 'setting')}; rows: "
            f"{_plural(tasks, 'task')}, columns: {_plural(columns, 'model × budget combination')}), "
            f"{STRATEGY_NAMES.get(strategy, strategy)} exit rule. {_speed_accuracy_conventions(curves, strategy)}")
    if len(settings) < tasks * columns:
        text += " Panels marked \"no finished runs\" have no run of that combination yet."
    return text


def individual_exits_caption(block: pd.DataFrame) -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    _, ylabel = _metric_axis(block)
    return (f"Individual exits, {_title(task, model, budget)} ({_seed_counts(block)}): each exit's own "
            f"{ylabel[:1].lower()}{ylabel[1:]} (every evaluation example answered by that exit) by the layer the "
            f"exit sits after (MM: the depth of its member model). Points: mean over seeds; "
            f"{_spread(block, 'error bar')} (methods are offset sideways so bars do not overlap).")


def training_loss_caption(block: pd.DataFrame, stages: pd.DataFrame | None = None) -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    block = block.dropna(subset=["loss"])
    exits = block["exit"].nunique()
    text = (f"Training dynamics, {_title(task, model, budget)} ({_seed_counts(block)}): each exit's training loss "
            "(cross-entropy on the training batches, plus the learned-to-exit term when learned_exit is on; the mean "
            f"over each logging interval) against the optimizer step, one panel per exit ({_plural(exits, 'exit')}, "
            f"shared axes). Lines: mean over seeds; {_spread(block, 'band')}.")
    per_exit = per_exit_names(block["method"])
    if per_exit:
        text += f" {per_exit}'s exit k is its member k, a separate model trained alone on the same examples."
    if stages is not None and not stages.empty:
        named = []
        for method in methods_in_order(stages["method"]):
            order = stages[stages["method"] == method].groupby("stage_index", sort=True)["stage"].first()
            named.append(f"{display_name(method)}: {' → '.join(order)}")
        text += (" Dotted vertical lines (in the method's colour): where a multi-stage method moves to its next "
                 f"training stage, on one step axis continued across its stages ({'; '.join(named)}).")
    return text


def gradient_conflict_caption(block: pd.DataFrame) -> str:
    task, model, budget = (block[k].iloc[0] for k in GROUP_KEYS)
    block = block.dropna(subset=["cosine"])
    methods = ", ".join(display_name(m) for m in _methods(block))
    steps = sorted(block["step"].unique())
    every = f"every {int(steps[1] - steps[0])} steps" if len(steps) > 1 else "once"
    return (f"Gradient conflict during {methods} training, {_title(task, model, budget)} ({_seed_counts(block)}; "
            f"probed {every}). Block k is the layers between exit k−1 and exit k. Left: mean cosine similarity "
            "between the gradient of block k's own exit loss and that of each later exit (and of their sum), seeds "
            "and steps pooled; red = negative = the later exits pull block k against its own exit. Right: the "
            f"cosine with the sum of the later exits' gradients over training, one line per block; "
            f"{_spread(block, 'band')}.")


def latency_figure(latency: pd.DataFrame) -> Figure | None:
    """Measured against theoretical (layer-count) speedup of every timed operating point, one panel per device ×
    batch size, one colour per method, the y = x line: below it, the device pays what the layer count does not
    (exit heads, host reads, shapes)."""
    points = latency[latency["source"] != "full"]
    if points.empty:
        return None
    panels = list(points.groupby(["device", "batch_size"], sort=True))
    fig = _new_figure(3.6 * len(panels) + 0.6, 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, ((device, batch_size), part) in zip(axes, panels):
        hi = max(1.0, float(part[["measured_speedup", "theoretical_speedup"]].max().max())) * 1.08
        ax.plot([0, hi], [0, hi], color=ORACLE_COLOUR, lw=0.8, ls=":", label="y = x")
        for method in _methods(part):
            rows = part[part["method"] == method]
            ax.plot(rows["theoretical_speedup"], rows["measured_speedup"], ls="none", marker=marker(method), ms=5,
                    color=colour(method), alpha=0.8, label=display_name(method))
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("Theoretical speedup (layers, ×)")
        ax.set_title(f"{device}\nbatch {batch_size}", fontsize=9)
        ax.grid(True, lw=0.5, alpha=0.5)
    axes[0].set_ylabel("Measured speedup (×)")
    axes[0].legend(loc="upper left", frameon=True, framealpha=0.9)
    return fig


def latency_caption(latency: pd.DataFrame) -> str:
    points = latency[latency["source"] != "full"]
    runs = len(points.drop_duplicates(RUN_KEYS))
    return ("Measured against theoretical speedup of every timed operating point (held-out and risk-controlled "
            f"thresholds, every exit rule; {_plural(len(points), 'point')} from {_plural(runs, 'run')}), each timed "
            "against the same run's full model (its last exit alone; MM: its last member) on the same device and "
            "batch size; dotted: y = x.")


# --------------------------------------------------------------------------------------------------------------
# entry point

SECTIONS = ("speed_accuracy", "individual_exits", "training_loss", "gradient_conflict", "risk_control", "latency")


def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    frame = read_table(path)
    return frame if not frame.empty else None


def _blocks(frame: pd.DataFrame):
    yield from frame.groupby(GROUP_KEYS, sort=True)


def make_figures(
    tables_dir: str | Path, out_dir: str | Path, strategy: str = "confidence", formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Draw every figure the tables support into ``out_dir`` (replaced as a whole), with ``index.json`` (each
    figure's section, files and caption) and the tables' ``status.txt``; returns the figure files written. The
    sub-folders (SECTIONS) always exist."""
    tables, out = Path(tables_dir), Path(out_dir)
    entries: list[dict] = []
    with atomic_dir(out) as tmp, mpl.rc_context(RC), sns.axes_style("ticks"):
        for section in SECTIONS:
            (tmp / section).mkdir()

        def save(fig: Figure | None, section: str, stem: str, caption: str) -> None:
            if fig is not None:
                files = _save(fig, tmp / section / stem, formats)
                entries.append({"section": section, "files": [f"{section}/{f.name}" for f in files],
                                "caption": caption})

        curves = _read(tables / CURVES)
        if curves is not None:
            curves = curves.sort_values([*RUN_KEYS, "strategy", "speedup"], kind="mergesort")
            save(overview_figure(curves, strategy), "speed_accuracy", "overview", overview_caption(curves, strategy))
            for key, block in _blocks(curves):
                save(speed_accuracy_figure(block, strategy), "speed_accuracy", _stem(*key),
                     speed_accuracy_caption(block, strategy))
                save(speed_accuracy_allrules_figure(block), "speed_accuracy", _stem(*key) + "__allrules",
                     speed_accuracy_allrules_caption(block))
        exits = _read(tables / INDIVIDUAL_EXITS)
        if exits is not None:
            for key, block in _blocks(exits):
                save(individual_exits_figure(block), "individual_exits", _stem(*key), individual_exits_caption(block))
        losses = _read(tables / TRAINING_LOSS)
        stages = _read(tables / TRAINING_STAGES)
        if losses is not None:
            for key, block in _blocks(losses):
                in_block = None if stages is None else stages[
                    (stages[GROUP_KEYS] == pd.Series(dict(zip(GROUP_KEYS, key)))).all(axis=1)]
                save(training_loss_figure(block, in_block), "training_loss", _stem(*key),
                     training_loss_caption(block, in_block))
        conflicts = _read(tables / GRADIENT_CONFLICT)
        if conflicts is not None:
            for key, block in _blocks(conflicts):
                save(gradient_conflict_figure(block), "gradient_conflict", _stem(*key),
                     gradient_conflict_caption(block))
        risk = _read(tables / RISK_CONTROL)
        if risk is not None:
            for key, block in _blocks(risk):
                if (block["strategy"] == strategy).any():
                    save(risk_control_figure(block, strategy), "risk_control", _stem(*key),
                         risk_control_caption(block, strategy))
        common = _read(tables / RISK_CONTROL_COMMON)
        if curves is not None and (risk is not None or common is not None):
            for key, block in _blocks(curves):
                own_block, common_block = (None if f is None else f[(f[GROUP_KEYS] == pd.Series(
                    dict(zip(GROUP_KEYS, key)))).all(axis=1)] for f in (risk, common))
                save(risk_tradeoff_figure(block, own_block, common_block, strategy), "risk_control",
                     _stem(*key) + "__tradeoff", risk_tradeoff_caption(block, own_block, common_block, strategy))
        latency = _read(tables / LATENCY)
        if latency is not None:
            save(latency_figure(latency), "latency", "measured_vs_theoretical", latency_caption(latency))
        write_json(tmp / "index.json", {"strategy": strategy, "figures": entries})
        if (tables / STATUS).is_file():
            write_text(tmp / STATUS, (tables / STATUS).read_text())
    return [out / f for entry in entries for f in entry["files"]]
