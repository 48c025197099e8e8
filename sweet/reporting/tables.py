"""Every file of a grid's tables folder (``results/<grid>/tables/``), from one registry: ``TABLES``.

``write_tables`` builds them all from the collected runs and replaces the folder in one rename, so the folder is
always one consistent set. Beside the tables: ``runs.csv`` (every run of the grid and where it stands),
``missing_runs.txt`` (one line per run without results, and why), ``status.txt`` (one line: complete, or
PARTIAL) and ``grid.json`` (the grid as it was defined).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweet.io import atomic_dir, write_csv, write_json, write_text
from sweet.plan.settings import slug
from sweet.plan.status import RunStatus
from sweet.reporting.claims import ClaimSettings, check_claims, claims_both_ways, claims_markdown
from sweet.reporting.collect import (
    GROUP_KEYS,
    Collected,
    CommonTargetSettings,
    collect,
    common_target_rows,
    display_name,
    methods_in_order,
)
from sweet.reporting.statistics import (
    DEFAULT_SPEEDUPS,
    METHOD_TARGETS,
    auc_summary,
    envelope_gap,
    exit_average_per_seed,
    gradient_conflict_summary,
    individual_exits_summary,
    methods_summary,
    oracle_summary,
    pairwise_differences,
    points_scale,
    risk_control_summary,
    speedup_summary,
)


@dataclass
class TableInputs:
    """What every table is built from."""

    collected: Collected
    grid: dict = field(default_factory=dict)  # sweet.plan.layout.grid_spec (at least {"name": ...}); {} for ad hoc runs
    speedups: Sequence[float] = DEFAULT_SPEEDUPS
    claims: ClaimSettings = field(default_factory=ClaimSettings)
    # methods.csv's fixed speedups: the config's operating_points.targets (the workflow passes them)
    targets: Sequence[float] = METHOD_TARGETS

    @property
    def notice(self) -> str:
        """The partial-grid line, or "" when every run finished."""
        line = status_line(self.collected.runs, self.grid.get("name"))
        return line if line.startswith("PARTIAL") else ""


Builder = Callable[[TableInputs], "pd.DataFrame | str | dict"]


def status_line(runs: pd.DataFrame, grid: str | None = None) -> str:
    """One line: "complete: …" or "PARTIAL: k of n runs … finished; …" with the reasons counted."""
    of_grid = f" of grid '{grid}'" if grid else ""
    total, finished = len(runs), int((runs["status"] == "finished").sum())
    if finished == total:
        return f"complete: all {total} runs{of_grid} finished."
    counts = runs.loc[runs["status"] != "finished", "status"].value_counts()
    why = ", ".join(f"{counts[s]} {s}" for s in ("failed", "not finished", "never started", "other settings")
                    if s in counts)
    return (f"PARTIAL: {finished} of {total} runs{of_grid} finished; these tables leave out the other "
            f"{total - finished} ({why}), listed with the log to read in {MISSING_RUNS}.")


def revision_warning(runs: pd.DataFrame) -> str:
    """A line when the finished runs of one model were trained on more than one revision of its backbone (a hub
    branch that moved between fetches), else ""."""
    if "backbone_revision" not in runs.columns:
        return ""
    finished = runs[(runs["status"] == "finished") & runs["backbone_revision"].fillna("").ne("")]
    mixed = []
    for model, frame in finished.groupby("model", sort=True):
        counts = frame["backbone_revision"].value_counts()
        if len(counts) > 1:
            shares = ", ".join(f"{rev[:12]}: {n} run{'s' if n > 1 else ''}" for rev, n in sorted(counts.items()))
            mixed.append(f"{model} ({shares})")
    if not mixed:
        return ""
    return ("REVISIONS DIFFER: runs of " + "; ".join(mixed) + " were trained on different revisions of their "
            "backbone; pin one with models.<name>.revision: <commit> (a pinned revision is part of the run id)")


def missing_runs_text(runs: pd.DataFrame) -> str:
    """One line per run without results: why, and the log to read."""
    missing = runs[runs["status"] != "finished"].fillna("")
    fields = ("run", "status", "stopped_at", "log", "detail")
    return "".join(RunStatus(*(str(row[f]) for f in fields)).describe() + "\n" for _, row in missing.iterrows())


# --------------------------------------------------------------------------------------------------------------
# the paper's per-exit table, as Markdown and LaTeX


def _cell(mean: float, std: float, scale: float, pm: str) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(std):
        return f"{mean * scale:.1f}"
    return f"{mean * scale:.1f}{pm}{std * scale:.1f}"


def exit_table_blocks(exits_df: pd.DataFrame, pm: str = " ± ") -> list[tuple[tuple, str, list[str], list[list[str]]]]:
    """(setting, metric label, header, rows) per task × model × budget; rows = exits, then Average."""
    summary = individual_exits_summary(exits_df)
    averages = exit_average_per_seed(exits_df)
    scale = points_scale(exits_df["score"])
    unit = " (%)" if scale == 100.0 else ""
    blocks = []
    for group, block in summary.groupby(GROUP_KEYS, sort=False):
        methods = methods_in_order(block["method"])
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
        blocks.append((group, f"{block['metric'].iloc[0]}{unit}", header, rows))
    return blocks


def individual_exits_markdown(exits_df: pd.DataFrame, notice: str = "") -> str:
    """The paper's per-exit table: one block per task × model × budget; cells mean ± std over seeds."""
    lines = ["# Individual exits", ""]
    if notice:
        lines += [f"**{notice}**", ""]
    lines += ["Each exit's own score (every example answered by that exit), mean ± std over seeds.", ""]
    for (task, model, budget), metric, header, rows in exit_table_blocks(exits_df):
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
    blocks = exit_table_blocks(exits_df, r" $\pm$ ")
    names = [display_name(m) for m in methods_in_order(exits_df["method"])] if not exits_df.empty else []
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
# the registry: file name → what it holds. Adding a table is one entry here.


def _claims(inputs: TableInputs) -> pd.DataFrame:
    return check_claims(inputs.collected.curves, inputs.collected.exits, inputs.claims,
                        inputs.collected.operating_points)


# The names of the files in results/<grid>/tables/, one constant each: TABLES below writes them, and the readers
# (figures, report, the CLI) import them from here rather than spelling the names again.
CURVES = "curves.csv"
INDIVIDUAL_EXITS = "individual_exits.csv"
GRADIENT_CONFLICT = "gradient_conflict.csv"
TRAINING_LOSS = "training_loss.csv"
TRAINING_STAGES = "training_stages.csv"
INDIVIDUAL_EXITS_SUMMARY_CSV = "individual_exits_summary.csv"
INDIVIDUAL_EXITS_SUMMARY_MD = "individual_exits_summary.md"
INDIVIDUAL_EXITS_SUMMARY_TEX = "individual_exits_summary.tex"
SPEEDUP_SUMMARY = "speedup_summary.csv"
AUC_SUMMARY = "auc_summary.csv"
ORACLE_SUMMARY = "oracle_summary.csv"
PAIRWISE_SUMMARY = "pairwise_summary.csv"
METHODS_CSV = "methods.csv"
GRADIENT_CONFLICT_SUMMARY = "gradient_conflict_summary.csv"
GRADIENT_CONFLICT_BY_STEP = "gradient_conflict_by_step.csv"
CLAIMS_CSV = "claims.csv"
CLAIMS_MD = "claims.md"
CLAIMS_OPERATING_POINTS = "claims_operating_points.csv"
OPERATING_POINTS = "operating_points.csv"
ENVELOPE_GAP = "envelope_gap.csv"
RISK_CONTROL = "risk_control.csv"
RISK_CONTROL_COMMON = "risk_control_common.csv"
RISK_CONTROL_SUMMARY = "risk_control_summary.csv"
RUNS = "runs.csv"
LATENCY = "latency.csv"
MISSING_RUNS = "missing_runs.txt"
STATUS = "status.txt"
GRID = "grid.json"

TABLES: dict[str, Builder] = {
    CURVES: lambda i: i.collected.curves,
    INDIVIDUAL_EXITS: lambda i: i.collected.exits,
    GRADIENT_CONFLICT: lambda i: i.collected.conflict,
    TRAINING_LOSS: lambda i: i.collected.training_loss,
    TRAINING_STAGES: lambda i: i.collected.training_stages,
    INDIVIDUAL_EXITS_SUMMARY_CSV: lambda i: individual_exits_summary(i.collected.exits),
    INDIVIDUAL_EXITS_SUMMARY_MD: lambda i: individual_exits_markdown(i.collected.exits, i.notice),
    INDIVIDUAL_EXITS_SUMMARY_TEX: lambda i: individual_exits_latex(i.collected.exits),
    SPEEDUP_SUMMARY: lambda i: speedup_summary(i.collected.curves, i.speedups),
    AUC_SUMMARY: lambda i: auc_summary(i.collected.curves),
    ORACLE_SUMMARY: lambda i: oracle_summary(i.collected.curves),
    PAIRWISE_SUMMARY: lambda i: pairwise_differences(i.collected.curves, i.collected.exits, i.speedups,
                                                     i.claims.level),
    # every method of the grid against EE, on the claims' exit rule and measures (the report's methods section)
    METHODS_CSV: lambda i: methods_summary(i.collected.curves, i.collected.exits, i.claims.exit_rule, i.targets,
                                           i.claims.level),
    GRADIENT_CONFLICT_SUMMARY: lambda i: gradient_conflict_summary(i.collected.conflict),
    GRADIENT_CONFLICT_BY_STEP: lambda i: gradient_conflict_summary(i.collected.conflict, by_step=True),
    CLAIMS_CSV: _claims,
    CLAIMS_MD: lambda i: claims_markdown(_claims(i), i.claims, i.notice),
    CLAIMS_OPERATING_POINTS: lambda i: claims_both_ways(i.collected.curves, i.collected.exits,
                                                        i.collected.operating_points, i.claims),
    OPERATING_POINTS: lambda i: i.collected.operating_points,
    ENVELOPE_GAP: lambda i: envelope_gap(i.collected.operating_points, i.claims.level),
    RISK_CONTROL: lambda i: i.collected.risk_control,
    # the error risk against one target per setting and seed (computed at aggregation from the runs' logits)
    RISK_CONTROL_COMMON: lambda i: i.collected.common_target,
    RISK_CONTROL_SUMMARY: lambda i: risk_control_summary(i.collected.risk_control, i.collected.common_target),
    RUNS: lambda i: i.collected.runs,
    # only when some run measured its latency (config latency:)
    LATENCY: lambda i: None if i.collected.latency.empty else i.collected.latency,
    MISSING_RUNS: lambda i: missing_runs_text(i.collected.runs),
    STATUS: lambda i: "".join(line + "\n" for line in (status_line(i.collected.runs, i.grid.get("name")),
                                                          revision_warning(i.collected.runs)) if line),
    GRID: lambda i: i.grid,
}


def write_tables(out_dir: str | Path, inputs: TableInputs) -> dict[str, Path]:
    """Write every table of ``TABLES`` into ``out_dir``, replacing the folder as a whole; returns name → path."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        for name, build in TABLES.items():
            content = build(inputs)
            if content is None:
                continue
            if isinstance(content, pd.DataFrame):
                write_csv(tmp / name, content)
            elif isinstance(content, dict):
                write_json(tmp / name, content)
            else:
                write_text(tmp / name, content)
    return {name: out / name for name in TABLES if (out / name).exists()}



def aggregate(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    grid: dict | None = None,
    speedups: Sequence[float] = DEFAULT_SPEEDUPS,
    claims: ClaimSettings | None = None,
    logs_root: str | Path | None = None,
    targets: Sequence[float] = METHOD_TARGETS,
    common_target: CommonTargetSettings | None = None,
) -> dict[str, Path]:
    """Collect the runs and write every table into ``out_dir``; returns file name → path.

    ``grid`` is the grid's definition (sweet.plan.layout.grid_spec) when the runs are a grid's: the tables then name
    it, and runs that left nothing behind get their model's configuration name. ``common_target``: hold every
    method of a setting to one error target (risk_control_common.csv; None: that table is empty)."""
    model_names = {slug(m): m for m in (grid or {}).get("models", [])}
    expected = {run["calibrated_dir"]: run["run_id"] for run in (grid or {}).get("runs", [])}
    collected = collect(run_dirs, logs_root, model_names, expected)
    if common_target is not None:
        collected.common_target = common_target_rows(collected, common_target)
    return write_tables(out_dir, TableInputs(collected, grid or {}, speedups, claims or ClaimSettings(), targets))
