"""The per-run CSVs of a set of runs, concatenated into tidy frames, and where every run stands.

Everything downstream (statistics, tables, claims, figures, report) reads these frames or the tables written from
them, never a model: tables can be rebuilt from ``results/`` alone, and from a partly finished grid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sweet import methods as method_registry
from sweet.errors import UserError
from sweet.plan import layout
from sweet.plan.layout import is_calibrated, run_fields, run_file, training_dir
from sweet.plan.status import RunStatus, run_status

RUN_KEYS = ["task", "model", "budget", "method", "seed"]
GROUP_KEYS = ["task", "model", "budget"]  # a setting: one speed–accuracy figure, one block of a table
CURVE_COLUMNS = [*RUN_KEYS, "strategy", "threshold", "score", "metric", "speedup", "layer_fraction", "flops_fraction"]
EXIT_COLUMNS = [*RUN_KEYS, "exit", "exit_layer", "score", "metric"]
CONFLICT_COLUMNS = [*RUN_KEYS, "step", "block", "exit", "other", "cosine"]
# Each exit's training loss at each logging step, from the runs' training records (MM: member k is exit k)
TRAINING_LOSS_COLUMNS = [*RUN_KEYS, "run_id", "step", "exit", "exit_layer", "loss"]
# Multi-stage methods (DeeBERT): where each stage lies on the run's step axis, which continues across stages. A
# table of its own, so training_loss.csv keeps its columns (and its bytes) for single-stage grids.
TRAINING_STAGE_COLUMNS = [*RUN_KEYS, "run_id", "stage_index", "stage", "step_min", "step_max"]
# Per run, beside logits.npz (python -m sweet operating-points; runs finished before it existed have neither)
OPERATING_POINT_COLUMNS = [*RUN_KEYS, "strategy", "target_speedup", "threshold", "calibration_speedup",
                           "calibration_score", "eval_speedup", "eval_score", "envelope_score"]
RISK_CONTROL_COLUMNS = [*RUN_KEYS, "strategy", "risk", "epsilon", "delta", "threshold", "certified", "why",
                        "calibration_risk", "upper_bound", "eval_risk", "eval_speedup", "eval_score"]
# Computed at aggregation from the runs' stored logits (common_target_rows below): the `error` risk against one
# target accuracy per setting and seed, the best last exit among the setting's methods less an offset
COMMON_TARGET_COLUMNS = [*RUN_KEYS, "strategy", "risk", "offset", "reference_accuracy", "reference_method",
                         "target_accuracy", "last_exit_accuracy", "epsilon", "delta", "threshold", "certified", "why",
                         "calibration_risk", "upper_bound", "eval_risk", "eval_speedup", "eval_score", "metric"]
# Per run when the grid asks for it (config latency:; python -m sweet latency, sweet/latency.py): written without
# RUN_KEYS (the run's folder says them); tables/latency.csv has them first.
LATENCY_RUN_COLUMNS = ["strategy", "threshold", "source", "risk", "epsilon", "target_speedup", "batch_size", "device",
                       "examples", "ms_per_example", "measured_speedup", "theoretical_speedup", "full_model",
                       "compiled"]
LATENCY_COLUMNS = [*RUN_KEYS, *LATENCY_RUN_COLUMNS]
# What every run's CSVs carry besides RUN_KEYS (sweet.plan.layout.Run.meta), so results/ CSVs filter by settings.
SETTINGS_KEYS = ["run_id", "settings", "calibration"]
RUN_COLUMNS = [*RUN_KEYS, *SETTINGS_KEYS, "status", "stopped_at", "log", "detail", "backbone_revision",
               "git_commit", "torch", "transformers", "run"]
STRING_COLUMNS = {"task": str, "model": str, "method": str, "metric": str, "strategy": str, "other": str,
                  "status": str, "stopped_at": str, "log": str, "detail": str, "git_commit": str, "run": str,
                  "run_id": str, "settings": str, "calibration": str, "backbone_revision": str,
                  "risk": str, "why": str, "stage": str, "reference_method": str, "source": str, "device": str,
                  "full_model": str}
# The registry's order and labels (sweet.methods): EE, SWEET, MM first, as in the paper; a method the registry
# does not know (an old or hand-made run) sorts after every registered one and is shown by its name.
METHOD_ORDER = list(method_registry.names())
DISPLAY = {name: method.label for name, method in method_registry.METHODS.items()}


def display_name(method: str) -> str:
    return DISPLAY.get(method, method)


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def is_per_exit(method: str) -> bool:
    """One model per exit (Multi-Model's layout); False for a method the registry does not know."""
    known = method_registry.METHODS.get(method)
    return known is not None and known.per_exit


def methods_in_order(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=lambda m: (method_rank(m), m))


def sort_frame(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
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


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV that `aggregate` wrote (identity columns kept as strings, "other" exits as "2", "sum")."""
    frame = pd.read_csv(path, dtype=STRING_COLUMNS, keep_default_na=True)
    if "other" in frame.columns:
        frame["other"] = frame["other"].astype(str).str.replace(r"\.0$", "", regex=True)
    return frame


# --------------------------------------------------------------------------------------------------------------
@dataclass
class Collected:
    """Every finished run's rows, and one status row per run given (finished or not)."""

    curves: pd.DataFrame
    exits: pd.DataFrame
    conflict: pd.DataFrame
    runs: pd.DataFrame
    operating_points: pd.DataFrame = field(default_factory=lambda: empty_frame(OPERATING_POINT_COLUMNS))
    risk_control: pd.DataFrame = field(default_factory=lambda: empty_frame(RISK_CONTROL_COLUMNS))
    common_target: pd.DataFrame = field(default_factory=lambda: empty_frame(COMMON_TARGET_COLUMNS))
    training_loss: pd.DataFrame = field(default_factory=lambda: empty_frame(TRAINING_LOSS_COLUMNS))
    training_stages: pd.DataFrame = field(default_factory=lambda: empty_frame(TRAINING_STAGE_COLUMNS))
    latency: pd.DataFrame = field(default_factory=lambda: empty_frame(LATENCY_COLUMNS))

    @property
    def missing(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "finished"]


def discover_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root``: every calibrated folder (``cal-…``, or any folder holding a run's curves), and
    every started run (its ``splits.json``) that has none yet."""
    root = Path(root)
    found = {p.parent for name in (layout.CURVES, layout.EXITS, layout.CALIBRATION_SPLIT) for p in root.rglob(name)}
    trained = {p.parent for p in root.rglob(layout.SPLITS)}
    found |= {run for run in trained if run not in found and not any(f.parent == run for f in found)}
    return sorted(found, key=str)


def collect(
    run_dirs: Iterable[str | Path], logs_root: str | Path | None = None, model_names: dict[str, str] | None = None,
    expected_ids: dict[str, str] | None = None,
) -> Collected:
    """Concatenate the finished runs' CSVs; say for every run whether it finished and, if not, why.

    ``run_dirs`` are calibrated run folders (sweet.plan.status). ``logs_root`` is where the steps' logs are
    (results/logs beside results/runs by default); ``model_names`` maps model folder names back to configuration
    names (microsoft--deberta-base → microsoft/deberta-base) for runs that left no CSV to read them from;
    ``expected_ids`` (folder → run id, a grid's) makes a folder that records another run id count as missing,
    never as the grid's. Frames are sorted by run identity, so the result does not depend on the order the
    folders were given in.
    """
    dirs = sorted({Path(d) for d in run_dirs}, key=str)
    expected = {Path(k).as_posix(): v for k, v in (expected_ids or {}).items()}
    curves, exits, conflicts, statuses = [], [], [], []
    points: list[pd.DataFrame] = []
    risks: list[pd.DataFrame] = []
    losses: list[pd.DataFrame] = []
    stages: list[pd.DataFrame] = []
    latencies: list[pd.DataFrame] = []
    for run in dirs:
        status = run_status(run, logs_root, expected.get(run.as_posix()))
        identity = _identity_from_path(run, model_names or {})
        if status.finished:
            run_exits = _read_run_csv(run / layout.EXITS, EXIT_COLUMNS)
            curves.append(_read_run_csv(run / layout.CURVES, CURVE_COLUMNS))
            exits.append(run_exits)
            conflict_path = run_file(run, layout.GRADIENT_CONFLICT)
            if conflict_path.is_file():
                conflicts.append(_read_run_csv(conflict_path, CONFLICT_COLUMNS))
            for name, found in ((layout.OPERATING_POINTS, points), (layout.RISK_CONTROL, risks)):
                if (run / name).is_file():
                    found.append(_read_run_csv(run / name, OPERATING_POINT_COLUMNS if found is points
                                               else RISK_CONTROL_COLUMNS))
            if not run_exits.empty:
                identity.update({k: run_exits[k].iloc[0] for k in [*RUN_KEYS, *SETTINGS_KEYS]
                                 if k in run_exits.columns})
            losses.append(training_loss_rows(run, {k: identity[k] for k in [*RUN_KEYS, "run_id"]}))
            if (run / layout.LATENCY).is_file():
                latency = _read_run_csv(run / layout.LATENCY, LATENCY_RUN_COLUMNS)
                latencies.append(latency.assign(**{k: identity[k] for k in RUN_KEYS})[LATENCY_COLUMNS])
            stages.append(training_stage_rows(run, {k: identity[k] for k in [*RUN_KEYS, "run_id"]}))
        statuses.append(_status_row(run, status, identity))
    curves_df = _concat(curves, CURVE_COLUMNS)
    exits_df = _concat(exits, EXIT_COLUMNS)
    conflict_df = _concat(conflicts, CONFLICT_COLUMNS)
    _check_unique(exits_df, [*RUN_KEYS, "exit"], layout.EXITS)
    if not conflict_df.empty:
        conflict_df["other"] = conflict_df["other"].astype(str).str.replace(r"\.0$", "", regex=True)
    runs_df = pd.DataFrame(statuses, columns=RUN_COLUMNS) if statuses else empty_frame(RUN_COLUMNS)
    return Collected(
        curves=sort_frame(curves_df, [*RUN_KEYS, "strategy", "threshold", "speedup"]),
        exits=sort_frame(exits_df, [*RUN_KEYS, "exit"]),
        conflict=sort_frame(conflict_df, [*RUN_KEYS, "step", "block", "other"]),
        runs=runs_df,  # by folder
        operating_points=sort_frame(_concat(points, OPERATING_POINT_COLUMNS),
                                    [*RUN_KEYS, "strategy", "target_speedup"]),
        risk_control=sort_frame(_concat(risks, RISK_CONTROL_COLUMNS), [*RUN_KEYS, "strategy", "risk", "epsilon"]),
        training_loss=sort_frame(_concat(losses, TRAINING_LOSS_COLUMNS), [*RUN_KEYS, "exit", "step"]),
        training_stages=sort_frame(_concat(stages, TRAINING_STAGE_COLUMNS), [*RUN_KEYS, "stage_index"]),
        latency=sort_frame(_concat(latencies, LATENCY_COLUMNS),
                           [*RUN_KEYS, "batch_size", "source", "strategy", "risk", "epsilon", "target_speedup"]),
    )


def training_loss_rows(run: str | Path, meta: dict) -> pd.DataFrame:
    """One row per logging step × exit of a run's training: each exit's mean training loss over the steps since
    the previous log (``loss_exit_<k>`` in the Trainer's log history, ``sweet.train.ExitTrainer.log``).

    EE/SWEET: the run's ``train_metrics.json``; MM: ``members/member_<k>.json``, whose single exit is the model's
    exit k. A run without a training record (hand-made, or copied without it) has no rows.
    """
    members = sorted(training_dir(run).glob(layout.MEMBER_METRICS.format(k="*")), key=_member_index)
    rows = []
    if members:
        for path in members:
            record = _read_record(path)
            rows += _loss_rows(record, meta, member=int(record.get("member") or _member_index(path)))
    elif run_file(run, layout.TRAIN_METRICS).is_file():
        rows = _loss_rows(_read_record(run_file(run, layout.TRAIN_METRICS)), meta)
    return pd.DataFrame(rows, columns=TRAINING_LOSS_COLUMNS) if rows else empty_frame(TRAINING_LOSS_COLUMNS)


def training_stage_rows(run: str | Path, meta: dict) -> pd.DataFrame:
    """One row per training stage of a multi-stage run: the first and last logged step of its entries (their
    ``stage`` key; ``sweet.train`` continues the step axis across stages). Single-stage runs have no rows."""
    rows: list[dict] = []
    if run_file(run, layout.TRAIN_METRICS).is_file():
        spans: dict[str, list[int]] = {}
        for entry in _read_record(run_file(run, layout.TRAIN_METRICS)).get("log_history") or []:
            if "step" in entry and entry.get("stage"):
                spans.setdefault(str(entry["stage"]), []).append(int(entry["step"]))
        rows = [{**meta, "stage_index": i, "stage": name, "step_min": min(steps), "step_max": max(steps)}
                for i, (name, steps) in enumerate(spans.items(), start=1)]  # in the order they were logged
    return pd.DataFrame(rows, columns=TRAINING_STAGE_COLUMNS) if rows else empty_frame(TRAINING_STAGE_COLUMNS)


# --------------------------------------------------------------------------------------------------------------
def _read_run_csv(path: Path, required: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=STRING_COLUMNS, keep_default_na=True)
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)}; rerun the stage that writes it")
    return frame


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_frame(columns)
    return pd.concat(frames, ignore_index=True)


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


def _identity_from_path(run: Path, model_names: dict[str, str]) -> dict:
    """The run's identity as its folder's path names it (sweet.plan.layout.run_fields; blank where it is laid out
    otherwise)."""
    fields = run_fields(run)
    if fields is None:
        calibration = run.name if is_calibrated(run) else ""
        return {**dict.fromkeys(RUN_KEYS, ""), "run_id": "", "settings": "", "calibration": calibration}
    return {"task": fields["task"], "model": model_names.get(fields["model"], fields["model"]),
            "budget": fields["budget"], "method": fields["method"], "seed": fields["seed"],
            "run_id": fields["run_id"], "settings": "", "calibration": fields["calibration"]}


def _member_index(path: Path) -> int:
    match = re.fullmatch(r"member_(\d+)\.json", path.name)
    return int(match.group(1)) if match else 0


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable training record ({err}); rerun the run's training") from None
    return record if isinstance(record, dict) else {}


_EXIT_LOSS = re.compile(r"^loss_exit_(\d+)$")


def _loss_rows(record: dict, meta: dict, member: int | None = None) -> list[dict]:
    """The record's ``loss_exit_<j>`` entries as rows; an MM member's only exit (j = 1) is the model's exit
    ``member``. Entries without them (the end-of-training summary, runs from before per-exit logs) add nothing."""
    layers = record.get("exit_layers") or []
    rows = []
    for entry in record.get("log_history") or []:
        if "step" not in entry:
            continue
        for key, loss in entry.items():
            match = _EXIT_LOSS.match(key)
            if match is None or loss is None:
                continue
            k = member if member is not None else int(match.group(1))
            rows.append({**meta, "step": int(entry["step"]), "exit": k,
                         "exit_layer": int(layers[k - 1]) if len(layers) >= k else None, "loss": float(loss)})
    return rows


def _status_row(run: Path, status: RunStatus, identity: dict) -> dict:
    record = _training_record(run) if status.finished else {}
    provenance = record.get("provenance") or {}
    versions = provenance.get("versions") or {}
    return {**identity, "status": status.status, "stopped_at": status.step, "log": status.log, "detail": status.detail,
            "backbone_revision": record.get("backbone_revision") or "",
            "git_commit": provenance.get("git_commit", ""), "torch": versions.get("torch") or "",
            "transformers": versions.get("transformers") or "", "run": run.as_posix()}


def _training_record(run: Path) -> dict:
    """The run's training record (MM: its first member's): library versions, git commit, backbone revision."""
    for record in (run_file(run, layout.TRAIN_METRICS), training_dir(run) / layout.MEMBER_METRICS.format(k=1)):
        if record.is_file():
            try:
                return json.loads(record.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
    return {}


@dataclass(frozen=True)
class CommonTargetSettings:
    """The config's risk_control block as the aggregation uses it, and the threshold grid the runs' curves use."""

    offsets: tuple[float, ...]
    delta: float
    thresholds: int = 11
    dense: int = 101


def common_target_rows(collected: Collected, settings: CommonTargetSettings) -> pd.DataFrame:
    """The `error` risk of every finished run held to one target per setting × seed (sweet.risk.common_target_rows):
    the reference is the best last exit on the calibration split among the methods of that setting and seed. Read
    from each run's calibration_logits.npz and logits.npz; runs without them (evaluated before calibration logits
    were kept) or calibrated on the evaluation set (no guarantee holds) take no part, not even in the reference.
    Tables of a partly finished grid take the reference among the runs finished so far: it can rise as more
    finish, and every common-target row of that setting and seed changes with it."""
    from sweet.curves import load_logits
    from sweet.data import compute_metrics
    from sweet.risk import common_reference, last_exit_accuracy
    from sweet.risk import common_target_rows as rows_of_run

    if not settings.offsets:
        return empty_frame(COMMON_TARGET_COLUMNS)
    finished = collected.runs[collected.runs["status"] == "finished"]
    metric_of = {tuple(map(str, k)): m for k, m in collected.curves.groupby(RUN_KEYS, sort=False)["metric"]
                 .first().items()} if not collected.curves.empty else {}
    loaded: dict[tuple, tuple[dict, dict]] = {}
    for _, run in finished.iterrows():
        folder = Path(run["run"])
        files = run_file(folder, layout.CALIBRATION_LOGITS), run_file(folder, layout.LOGITS)
        if not all(f.is_file() for f in files):
            continue
        calibration, evaluation = (load_logits(f) for f in files)
        if str(calibration.get("calibrate_on", "pool")) == "eval":
            continue
        loaded[tuple(run[k] for k in RUN_KEYS)] = calibration, evaluation
    frames = []
    setting_seed = [*GROUP_KEYS, "seed"]
    groups: dict[tuple, list[tuple]] = {}
    for key in loaded:
        groups.setdefault(tuple(key[RUN_KEYS.index(k)] for k in setting_seed), []).append(key)
    for keys in groups.values():
        keys = sorted(keys, key=lambda k: (method_rank(k[RUN_KEYS.index("method")]), k[RUN_KEYS.index("method")]))
        accuracies = {k[RUN_KEYS.index("method")]: last_exit_accuracy(loaded[k][0]) for k in keys}
        reference_method, reference = common_reference(accuracies)
        for key in keys:
            metric = str(metric_of.get(tuple(map(str, key)), "accuracy"))
            rows = rows_of_run(*loaded[key], reference_method, reference, [metric], metric, compute_metrics,
                               settings.offsets, settings.delta, settings.thresholds, settings.dense)
            frames.append(rows.assign(**dict(zip(RUN_KEYS, key)))[COMMON_TARGET_COLUMNS])
    return sort_frame(_concat(frames, COMMON_TARGET_COLUMNS), [*RUN_KEYS, "strategy", "offset"])
