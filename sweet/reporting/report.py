"""``results/<grid>/report.html``: a grid's results, laid out as a paper's results section.

The first page says what the grid is, what ran (and, for a partial grid, which runs are missing and why) and
whether each of the paper's claims reproduced. Then one section per kind of result, each opened by what the
paper claims about it, with the tables and the figures (and the captions written with them, from
``figures/index.json``). A section with nothing to show is left out. One self-contained, byte-reproducible file:
the PNG figures are embedded, nothing is timestamped.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup, escape

from sweet.io import write_text
from sweet.reporting.claims import format_estimate, format_over, format_paper
from sweet.reporting.collect import GROUP_KEYS, display_name, methods_in_order, read_table
from sweet.reporting.statistics import points_scale
from sweet.reporting.tables import (
    AUC_SUMMARY,
    CLAIMS_CSV,
    CLAIMS_OPERATING_POINTS,
    ENVELOPE_GAP,
    GRID,
    INDIVIDUAL_EXITS,
    LATENCY,
    METHODS_CSV,
    MISSING_RUNS,
    RISK_CONTROL_COMMON,
    RISK_CONTROL_SUMMARY,
    RUNS,
    SPEEDUP_SUMMARY,
    STATUS,
    TRAINING_LOSS,
    exit_table_blocks,
)

TEMPLATE = "report.html.j2"
VERDICT_CLASS = {"reproduced": "good", "contradicted": "bad"}
MISSING_SHOWN = 20  # missing runs listed on the first page; all of them are in tables/missing_runs.txt
CLAIMS_METHOD = ("Each claim compares two methods, paired by seed (same training subset and initial weights). "
                 "Differences are in points of the task's primary metric. Per task × model × budget the estimate "
                 "is the mean over seeds with a {level} Student-t interval; the pooled row (above) averages each "
                 "task's settings and takes the interval over tasks. A claim is reproduced when its interval lies "
                 "on the paper's side of 0 (for “comparable”: inside the margin), contradicted when it lies on the "
                 "other side, and inconclusive otherwise; with one seed there is no interval, hence no verdict.")


def make_report(tables_dir: str | Path, figures_dir: str | Path, out: str | Path) -> Path:
    """Write the report of the grid whose tables and figures are given; returns its path."""
    tables, figures, out = Path(tables_dir), Path(figures_dir), Path(out)
    grid = json.loads((tables / GRID).read_text()) if (tables / GRID).is_file() else {}
    runs = read_table(tables / RUNS)
    status = (tables / STATUS).read_text().strip()
    claims = read_table(tables / CLAIMS_CSV)
    index = json.loads((figures / "index.json").read_text())
    figure_list = [_figure(entry, figures, out.parent) for entry in index["figures"]]

    context = {
        "title": f"SWEET reproduction: grid “{grid['name']}”" if grid.get("name") else "SWEET reproduction",
        "status": status,
        "partial": status.startswith("PARTIAL"),
        "grid_rows": _grid_rows(grid, runs),
        "ran": _html(_what_ran(runs)),
        "missing": _first_lines((tables / MISSING_RUNS).read_text().splitlines()),
        "provenance": _provenance(runs),
        "claims": _claim_rows(claims[claims["scope"] == "pooled"]),
        "claims_method": CLAIMS_METHOD.format(level=_level(claims)),
        "level": _level(claims),
        "sections": _sections(tables, claims, figure_list, index.get("strategy", "confidence")),
    }
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("sweet.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    write_text(out, environment.get_template(TEMPLATE).render(**context))
    return out


# --------------------------------------------------------------------------------------------------------------
# first page


def _grid_rows(grid: dict, runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, value) rows describing the grid; from grid.json, or from the runs when it is absent."""
    if not grid:
        return [("runs", str(len(runs)))]
    models = ", ".join(f"{m} (exits after layers {', '.join(map(str, grid['exit_layers'][m]))})"
                       for m in grid["models"])
    rows = [("tasks", ", ".join(grid["tasks"])), ("models", models),
            ("training budgets", ", ".join(f"{b:,}" for b in grid["budgets"])),
            ("methods", ", ".join(display_name(m) for m in methods_in_order(grid["methods"]))),
            ("seeds", ", ".join(map(str, grid["seeds"]))),
            ("runs", f"{len(runs)} (tasks × models × budgets × methods × seeds)")]
    for model, spec in grid["training"].items():
        keys = ("learning_rate", "batch_size", "epochs", "max_length")
        rows.append((f"training, {model}", ", ".join(f"{k.replace('_', ' ')} {spec[k]}" for k in keys if k in spec)))
    calibration = ("the evaluation set (the reference's protocol)" if grid.get("calibrate_on") == "eval" else
                   f"{grid.get('calibration_size')} unused training examples")
    rows.append(("temperature scaling on", calibration))
    return rows


def _what_ran(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished seeds / seeds of the grid, per task × model × budget and method."""
    if runs.empty:
        return pd.DataFrame()
    frame = runs.assign(finished=runs["status"] == "finished")
    counts = frame.groupby([*GROUP_KEYS, "method"], sort=False).agg(done=("finished", "sum"), of=("seed", "size"))
    counts["cell"] = [f"{d} / {o}" for d, o in zip(counts["done"], counts["of"])]
    table = counts["cell"].unstack("method")
    table = table[methods_in_order(table.columns)].fillna("–")
    table.columns = [display_name(m) for m in table.columns]
    return table.reset_index()


def _first_lines(lines: list[str], shown: int = MISSING_SHOWN) -> list[str]:
    if len(lines) <= shown:
        return lines
    return [*lines[:shown], f"… and {len(lines) - shown} more, listed in tables/{MISSING_RUNS}"]


def _provenance(runs: pd.DataFrame) -> str:
    finished = runs[(runs["status"] == "finished") & runs["git_commit"].fillna("").ne("")]
    if finished.empty:
        return ""
    commits = finished["git_commit"].value_counts().sort_index()
    versions = finished[["torch", "transformers"]].fillna("").drop_duplicates()
    libs = "; ".join(f"torch {t}, transformers {x}" for t, x in versions.itertuples(index=False))
    if len(commits) == 1:
        return f"Every finished run was trained at commit {commits.index[0]} ({libs})."
    listed = ", ".join(f"{c} ({n} runs)" for c, n in commits.items())
    return f"The finished runs come from {len(commits)} commits: {listed} ({libs})."


def _level(claims: pd.DataFrame) -> str:
    return f"{claims['level'].iloc[0] * 100:g}%" if not claims.empty else "95%"


def _claim_rows(pooled: pd.DataFrame) -> list[dict]:
    return [{"claim": r["claim"], "statement": r["statement"], "paper": format_paper(r["paper"]),
             "estimate": format_estimate(r), "over": format_over(r),
             "verdict": r["verdict"], "class": VERDICT_CLASS.get(r["verdict"], "open")}
            for _, r in pooled.iterrows()]




# --------------------------------------------------------------------------------------------------------------
# result sections


def _sections(tables: Path, claims: pd.DataFrame, figure_list: list[dict], strategy: str) -> list[dict]:
    by_section: dict[str, list[dict]] = {}
    for figure in figure_list:
        by_section.setdefault(figure["section"], []).append(figure)
    sections = []
    per_setting = claims[claims["scope"] == "setting"]
    if not per_setting.empty:
        sections.append({"title": "The claims, per task, model and budget", "intro": [],
                         "tables": [_html(_claims_table(per_setting))], "figures": []})
    exits = read_table(tables / INDIVIDUAL_EXITS)
    if not exits.empty or "individual_exits" in by_section:
        blocks = [_html(_exit_block(header, rows), caption=f"{task} · {model} · budget {budget} — {metric}; "
                        "mean ± std over seeds")
                  for (task, model, budget), metric, header, rows in exit_table_blocks(exits)]
        sections.append({"title": "Individual exits", "intro": [
            _claim_text("1", "2", claims),
            "Each exit answers every evaluation example alone. EE's exits share the backbone, so the later exits' "
            "gradients pull the early layers away from what the early exits need; MM's members and SWEET's blocks "
            "learn from their own exit only. The paper finds both above EE, most clearly at the early exits."],
            "tables": blocks, "figures": by_section.get("individual_exits", [])})
    if "training_loss" in by_section:
        sections.append({"title": "Training dynamics", "intro": [
            "Each exit's training loss over the optimizer steps, as logged during fine-tuning "
            f"(tables/{TRAINING_LOSS}). EE trains every exit through the shared layers at once, so an early exit's "
            "loss also moves with what the later exits ask of those layers; SWEET's blocks learn from their own exit "
            "only, and MM's members are separate models. These are losses on the training batches, not scores: "
            "the individual exits' evaluation scores are above."],
            "tables": [], "figures": by_section["training_loss"]})
    if "speed_accuracy" in by_section:
        auc = read_table(tables / AUC_SUMMARY)
        sections.append({"title": "Speed–accuracy trade-off", "intro": [
            _claim_text("3-fast-ee", "3-fast-mm", claims), _claim_text("3-slow", "4", claims),
            f"Curves use the {strategy} exit rule unless a panel says otherwise; the table gives each method's mean "
            "score over the speedup range all methods share (normalised AUC)."],
            "tables": [_html(_auc_table(auc, strategy), caption="Normalised AUC: mean score over the speedup range "
                             "shared by every method and seed; mean ± std over seeds")] if not auc.empty else [],
            "figures": by_section["speed_accuracy"]})
    methods = _methods_section(tables)
    if methods is not None:
        sections.append(methods)
    held_out = _held_out_section(tables, strategy, by_section.get("risk_control", []))
    if held_out is not None:
        sections.append(held_out)
    latency = _latency_section(tables, by_section.get("latency", []))
    if latency is not None:
        sections.append(latency)
    if "gradient_conflict" in by_section:
        sections.append({"title": "Gradient conflict", "intro": [
            "The paper's explanation of EE's weaker exits: during EE fine-tuning the later exits' gradients point "
            "against the earlier exits' on the layers they share. Negative cosines below are that conflict; SWEET "
            "removes it by letting each block learn from its own exit only."],
            "tables": [], "figures": by_section["gradient_conflict"]})
    sections.append({"title": "How the numbers are computed", "intro": [
        "Every score is computed from one batched pass that stores every exit's logits for every evaluation "
        "example, with per-exit temperatures fitted on a calibration split (never on the evaluation set): each "
        "threshold of each exit rule follows exactly from the stored logits.",
        "Speedup = the full model's layers ÷ the layers run, averaged over examples (the paper's accounting; MM "
        "pays for every member it runs). A seed's curve is its Pareto front, interpolated linearly in speedup and "
        "never extrapolated; a speed range's score is the curve's mean over it (normalised AUC).",
        "All method differences are paired by seed, with Student-t intervals: with 2–5 seeds a bootstrap interval "
        "covers far less than it claims."], "tables": [], "figures": []})
    return sections


def _read_if_present(path: Path) -> pd.DataFrame:
    return read_table(path) if path.is_file() else pd.DataFrame()


def _points(value: float, scale: float, sign: bool = False) -> str:
    return "–" if pd.isna(value) else (f"{value * scale:+.1f}" if sign else f"{value * scale:.1f}")


def _measure_name(row: pd.Series) -> str:
    """A methods.csv row's measure as a column heading."""
    if row["measure"] == "exit":
        return f"exit {int(row['exit'])} (layer {int(row['exit_layer'])})"
    if row["measure"] == "exit_average":
        return "mean over exits"
    if row["measure"] == "auc":
        return f"AUC {row['speedup_min']:.2g}–{row['speedup_max']:.2g}×"
    return f"at {row['speedup']:g}×"


def _method_cell(row: pd.Series, scale: float) -> Markup:
    """"76.7 ± 2.3" over "Δ +4.9 [−1.2, +11.0]" (no Δ for EE, nor without EE)."""
    if pd.isna(row["mean"]):
        return Markup("–")
    top = f"{row['mean'] * scale:.1f}" + ("" if pd.isna(row["std"]) else f" ± {row['std'] * scale:.1f}")
    if pd.isna(row["delta_vs_ee"]):
        return escape(top)
    delta = format_estimate({"estimate": row["delta_vs_ee"] * scale, "ci_low": row["ci_low"] * scale,
                             "ci_high": row["ci_high"] * scale})
    return escape(top) + Markup("<br>") + escape(f"Δ {delta}")


def methods_blocks(methods: pd.DataFrame) -> list[tuple[tuple, str, pd.DataFrame]]:
    """Per task × model × budget: (setting, caption, table) with one row per method and one column per
    measure of methods.csv, each cell its mean ± std over seeds over its Δ vs EE with the interval, in points."""
    if methods.empty:
        return []
    scale = points_scale(methods["mean"])
    level = f"{methods['level'].iloc[0] * 100:g}%"
    blocks = []
    for key, block in methods.groupby(GROUP_KEYS, sort=False):
        block = block.assign(column=[_measure_name(r) for _, r in block.iterrows()],
                             cell=[_method_cell(r, scale) for _, r in block.iterrows()])
        columns = list(dict.fromkeys(block["column"]))  # methods.csv's order: exits, mean, AUC, speedups
        order = methods_in_order(block["method"])
        wide = block.pivot_table(index="method", columns="column", values="cell", aggfunc="first")
        wide = wide.reindex(index=order, columns=columns)
        table = pd.DataFrame({"method": [display_name(m) for m in wide.index],
                              **{c: list(wide[c]) for c in columns}})
        rules = sorted(set(block["strategy"].dropna()) - {""})
        has_ee = "ee" in set(block["method"])
        task, model, budget = key
        caption = (f"{task} · {model} · budget {budget} — {block['metric'].iloc[0]}"
                   f"{' (points)' if scale == 100.0 else ''}: mean ± std over seeds; "
                   + (f"Δ: seed-paired difference to EE, {level} Student-t interval over seeds" if has_ee
                      else "no EE runs, so no Δ")
                   + (f"; AUC and fixed speedups on the {', '.join(rules)} exit rule" if rules else ""))
        blocks.append((key, caption, table))
    return blocks


def _methods_section(tables: Path) -> dict | None:
    """Every method of the grid against EE (tables/methods.csv), one table per setting."""
    methods = _read_if_present(tables / METHODS_CSV)
    blocks = methods_blocks(methods)
    if not blocks:
        return None
    html = [Markup(table.to_html(index=False, escape=False, na_rep="–", border=0, classes="numbers")
                   .replace("<thead>", f"<caption>{escape(caption)}</caption>\n  <thead>", 1))
            for _, caption, table in blocks]
    return {"title": "Every method against EE", "intro": [
        "Each method of the grid on the measures the claims read: each exit's own score and their mean, the "
        "normalised AUC over the speedup range every method and seed of the setting shares, and the score at "
        "the held-out operating points' target speedups (the evaluation curve, interpolated on each seed's "
        "Pareto front, never extrapolated). Under each value, the difference to EE, paired by seed, with its "
        f"Student-t interval: with one paired seed there is no interval. tables/{METHODS_CSV} holds the same "
        "numbers, one row per setting × method × measure."], "tables": html, "figures": []}


def _held_out_section(tables: Path, strategy: str, figures: list[dict]) -> dict | None:
    """Held-out operating points against the envelope, the claims both ways, and risk-controlled thresholds."""
    gap = _read_if_present(tables / ENVELOPE_GAP)
    both = _read_if_present(tables / CLAIMS_OPERATING_POINTS)
    risk = _read_if_present(tables / RISK_CONTROL_SUMMARY)
    if gap.empty and risk.empty:
        return None
    out = []
    gap = gap[gap["strategy"] == strategy] if not gap.empty else gap
    if not gap.empty:
        scale = 100.0 if pd.concat([gap["envelope_mean"], gap["held_out_mean"]]).abs().max() <= 1.0 else 1.0
        level = f"{gap['level'].iloc[0] * 100:g}%"
        table = pd.DataFrame({
            **{k: gap[k] for k in GROUP_KEYS}, "method": gap["method"].map(display_name),
            "target": [f"{t:g}×" for t in gap["target_speedup"]],
            "envelope": [_points(v, scale) for v in gap["envelope_mean"]],
            "held-out": [_points(v, scale) for v in gap["held_out_mean"]],
            f"envelope − held-out [{level} interval]": [
                format_estimate({"estimate": m * scale, "ci_low": lo * scale, "ci_high": hi * scale})
                for m, lo, hi in zip(gap["gap_mean"], gap["ci_low"], gap["ci_high"])],
            "held-out speedup (min)": [("–" if pd.isna(m) else f"{m:.2f}× ({lo:.2f}×)")
                                       for m, lo in zip(gap["eval_speedup_mean"], gap["eval_speedup_min"])],
            "seeds": [f"{n} of {r}" if n != r else f"{n}" for n, r in zip(gap["n_seeds"], gap["n_reached"])]})
        out.append(_html(table, caption=f"{strategy} exit rule. Envelope: the evaluation curve's score at the "
                         f"target (what {SPEEDUP_SUMMARY} and the paper report); held-out: the threshold with the "
                         "best calibration-split score among those at least that fast there, scored on the "
                         f"evaluation split; the gap is paired within each seed, mean with a {level} Student-t "
                         "interval over seeds, in points; mean and lowest evaluation speedup of the held-out "
                         "thresholds"))
    if not both.empty:
        pooled = both[both["scope"] == "pooled"]
        table = pd.DataFrame({
            "claim": pooled["claim"], "operating points": pooled["operating_points"], "measure": pooled["measure"],
            "estimate [interval], points": [format_estimate(r) for _, r in pooled.iterrows()],
            "over": [format_over(r) for _, r in pooled.iterrows()], "verdict": pooled["verdict"]})
        out.append(_html(table, caption="The speed–accuracy claims read on the envelope (the evaluation curves) "
                         f"and on the held-out operating points; {CLAIMS_CSV} uses the one config claims."
                         "operating_points names"))
    risk = risk[risk["strategy"] == strategy] if not risk.empty else risk
    footing = risk["footing"] if "footing" in risk.columns else pd.Series("own-last-exit", index=risk.index)
    common, risk = risk[footing == "common-target"], risk[footing != "common-target"]
    if not common.empty:
        scale = 100.0
        out.append(_html(pd.DataFrame({
            **{k: common[k] for k in GROUP_KEYS}, "method": common["method"].map(display_name),
            "offset (points)": [f"{o * scale:g}" for o in common["offset"]],
            "target accuracy (mean)": [_points(t, scale) for t in common["target_accuracy_mean"]],
            "certified": [f"{c} of {n}" for c, n in zip(common["n_certified"], common["n_seeds"])],
            "certified speedup": ["–" if pd.isna(m) else f"{m:.2f}×" for m in common["certified_speedup_mean"]],
            "evaluation score": [_points(v, scale) for v in common["certified_score_mean"]],
            "certified seeds below the target on evaluation": common["n_eval_above_epsilon"]}),
            caption=f"Risk control on a common footing, {strategy} exit rule: the error rate held to one target "
                    "accuracy for every method of a setting, the best last exit among its methods on the "
                    "calibration split (per seed) less the offset; certified speedup and evaluation score: "
                    "means over the seeds that certified a threshold (a method whose own last exit is below the "
                    f"target is not certified: {RISK_CONTROL_COMMON}'s why). This is the table to compare "
                    "methods on."))
    if not risk.empty:
        delta = float(risk["delta"].iloc[0])
        table = pd.DataFrame({
            **{k: risk[k] for k in GROUP_KEYS}, "method": risk["method"].map(display_name), "risk": risk["risk"],
            "ε": [f"{e:g}" for e in risk["epsilon"]],
            "certified": [f"{c} of {n}" for c, n in zip(risk["n_certified"], risk["n_seeds"])],
            "speedup": [f"{m:.2f}×" for m in risk["eval_speedup_mean"]],
            "evaluation risk (max)": [f"{m:.4f} ({x:.4f})" for m, x in zip(risk["eval_risk_mean"],
                                                                          risk["eval_risk_max"])],
            "seeds with evaluation risk > ε": risk["n_eval_above_epsilon"]})
        out.append(_html(table, caption=f"Risk control, {strategy} exit rule: per tolerance ε, the seeds whose "
                         "calibration split certified a threshold (risk ≤ ε with probability ≥ "
                         f"{1 - delta:g} over the calibration draw), the mean evaluation speedup of the chosen "
                         "thresholds (uncertified seeds run the full model), and the evaluation split's risk. Both "
                         "risks are relative to each method's own full model (its last exit): a weaker last exit "
                         "is a lower bar, so these speedups are not a ranking of methods"))
    return {"title": "Held-out operating points and risk control", "intro": [
        "The envelope reads each threshold's score off the evaluation examples themselves and keeps the best: no "
        "deployed model can choose its threshold that way. Held-out operating points choose it on the "
        "calibration split and score it on the evaluation split; the gap is how optimistic the envelope is.",
        "Risk control chooses the fastest threshold whose disagreement with the last exit (or accuracy drop "
        "against it) is certified not to exceed ε, by a finite-sample test on the calibration split "
        "(Learn-then-Test; exact binomial test or betting bound, thresholds tested in a fixed sequence from the "
        "slowest). That guarantee is relative to each method's own full model, so it does not rank methods: a "
        "method with a weaker last exit meets the same ε against a lower bar. To compare methods, the error rate "
        "itself is held to one target for every method of a setting (the best last exit among the setting's "
        "methods on the calibration split, less the config's risk_control.error_offsets), and the certified trade-off "
        "figure puts every certified policy at its evaluation accuracy and speedup."], "tables": out,
        "figures": figures}


def _latency_section(tables: Path, figures: list[dict]) -> dict | None:
    """Measured latency (config latency:): per setting × method × device × batch size × source, the mean over seeds
    and operating points of ms per example, measured and theoretical speedup."""
    latency = _read_if_present(tables / LATENCY)
    if latency.empty:
        return None
    latency = latency.assign(risk=latency["risk"].fillna(""))
    keys = [*GROUP_KEYS, "method", "device", "batch_size", "source"]
    summary = (latency.groupby(keys, sort=False, dropna=False)
               .agg(points=("ms_per_example", "size"), ms=("ms_per_example", "mean"),
                    measured=("measured_speedup", "mean"), theoretical=("theoretical_speedup", "mean"))
               .reset_index())
    table = pd.DataFrame({
        **{k: summary[k] for k in [*GROUP_KEYS, "device", "batch_size"]},
        "method": summary["method"].map(display_name), "operating points": summary["source"],
        "timed": summary["points"], "ms per example": [f"{v:.3g}" for v in summary["ms"]],
        "measured speedup": [f"{v:.2f}×" for v in summary["measured"]],
        "theoretical speedup": [f"{v:.2f}×" for v in summary["theoretical"]]})
    return {"title": "Measured latency", "intro": [
        "Each run's early-exit policy timed on the device of the job that evaluated it (sweet/latency.py: the "
        "compiled segments on CUDA, plain segments on a CPU) at its held-out and risk-controlled thresholds, "
        "against its full model (the last exit alone; MM: its last member alone) at the same batch size, on the "
        "same evaluation examples; median over repetitions. The theoretical speedup is the layer count's on those "
        "examples: where the measured one falls short, the device pays for exit heads, host reads and shapes."],
        "tables": [_html(table, caption="Mean over seeds, exit rules and operating points of each source; every "
                         f"row is in tables/{LATENCY}")], "figures": figures}


def _claim_text(first: str, second: str, claims: pd.DataFrame) -> str:
    pooled = claims[claims["scope"] == "pooled"].set_index("claim")
    parts = []
    for claim_id in (first, second):
        if claim_id in pooled.index:
            row = pooled.loc[claim_id]
            parts.append(f"Claim {claim_id}: {row['statement']} — {format_estimate(row)} points, {row['verdict']}.")
    return " ".join(parts)


def _claims_table(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "claim": rows["claim"], "task": rows["task"], "model": rows["model"], "budget": rows["budget"],
        "comparison": rows["comparison"].str.replace("-", "−"),
        f"estimate [{_level(rows)} interval], points": [format_estimate(r) for _, r in rows.iterrows()],
        "seeds": rows["n"], "verdict": rows["verdict"]})


def _exit_block(header: list[str], rows: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=header)


def _auc_table(auc: pd.DataFrame, strategy: str) -> pd.DataFrame:
    auc = auc[auc["strategy"] == strategy]
    scale = 100.0 if auc["auc_mean"].abs().max() <= 1.0 else 1.0
    cells = [f"{m * scale:.1f}" + ("" if pd.isna(s) else f" ± {s * scale:.1f}")
             for m, s in zip(auc["auc_mean"], auc["auc_std"])]
    table = auc.assign(cell=cells, range=[f"{lo:.2g}–{hi:.2g}×" for lo, hi in zip(auc["speedup_min"],
                                                                                 auc["speedup_max"])])
    wide = table.pivot_table(index=[*GROUP_KEYS, "range"], columns="method", values="cell", aggfunc="first",
                             sort=False)
    wide = wide[methods_in_order(wide.columns)]
    wide.columns = [display_name(m) for m in wide.columns]
    return wide.reset_index().rename(columns={"range": "shared speedups"})


def _html(frame: pd.DataFrame, caption: str = "") -> str:
    if frame.empty:
        return ""
    html = frame.to_html(index=False, na_rep="–", border=0, classes="numbers")
    if caption:
        html = html.replace("<thead>", f"<caption>{escape(caption)}</caption>\n  <thead>", 1)
    return Markup(html)


def _figure(entry: dict, figures: Path, report_dir: Path) -> dict:
    """A figure of the index, with its PNG embedded (or, without a PNG, a link to its first file)."""
    pngs = [f for f in entry["files"] if f.endswith(".png")]
    source = ""
    if pngs:
        source = "data:image/png;base64," + base64.b64encode((figures / pngs[0]).read_bytes()).decode("ascii")
    link = Path(os.path.relpath(figures / entry["files"][0], report_dir)).as_posix()
    return {"section": entry["section"], "src": source, "link": link, "caption": entry["caption"]}

