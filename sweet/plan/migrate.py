"""Runs trained before run ids: recognised from what they recorded, and moved into today's layout.

Before run ids, a run lived in ``results/runs/<task>/<model>/b<budget>/<method>/s<seed>/`` whatever its settings.
Such a folder is *this configuration's* run when its training record says it was trained as the configuration
asks now: the same method, exit layers, seed, budget, pooling, backbone (and pinned revision), training options
(as run identities compare them) and exit heads. ``python -m sweet migrate-runs`` moves those into their run-id
folders (training files in the run folder, calibration and evaluation in the calibration subfolder they were
made with), adds the new identity columns to their CSVs and keeps every file's modification time, so the workflow
sees finished runs and trains nothing. A folder that does not match stays where it is, with the reason printed.

The Snakefile refuses to plan while a grid has runs that this would move (so they are never silently retrained).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweet import methods
from sweet.plan import layout
from sweet.plan.layout import (
    HEAD_CHANGED_ARCHITECTURES,
    LOGS,
    RUN_JSON,
    Run,
    grid_runs,
    step_log,
    training_identity,
)
from sweet.plan.settings import Model

TRAINING_FILES = (layout.TRAIN_METRICS, layout.GRADIENT_CONFLICT, layout.MEMBERS, layout.MODEL)
# Runs of the layout before run ids never kept the calibration split's logits, so they get no operating points
# (the workflow does not ask for them: workflow/rules/grids.smk).
CALIBRATED_FILES = (layout.TEMPERATURES, layout.CALIBRATION_LOGITS, layout.LOGITS, layout.CURVES, layout.EXITS)
CSV_WITH_META = (layout.CURVES, layout.EXITS, layout.GRADIENT_CONFLICT)
TRAINING_STEPS = ("split", "train", "combine")
CALIBRATED_STEPS = ("calibrate", "evaluate", "curves")  # the steps the layout before run ids had
# The methods the layout before run ids had: the registry's others never had a run there (a folder of their name
# at that place is nobody's old run, so it is never examined or moved).
LEGACY_METHODS = ("ee", "sweet", "mm")


@dataclass(frozen=True)
class Candidate:
    """A folder of the layout before run ids, at the place a configured run would have been."""

    run: Run
    legacy: Path
    why_not: str  # "" when it is the configured run and can be moved
    calibration: str  # the calibration subfolder its evaluation belongs in (from its splits.json)


def candidates(
    config: dict, models: dict[str, Model], gpus: int = 0, grids: list[str] | None = None, root: str | Path = ".",
) -> list[Candidate]:
    """Every old-layout folder where the named grids (all by default) have a run not yet in the new layout."""
    root = Path(root)
    seen: set[str] = set()
    found = []
    for grid in grids or sorted(config["grids"]):
        for run in grid_runs(config, grid, models, gpus):
            if run.method not in LEGACY_METHODS:
                continue
            legacy = root / run.legacy_dir
            if run.legacy_dir in seen or not legacy.is_dir() or (root / run.dir / RUN_JSON).exists():
                continue
            seen.add(run.legacy_dir)
            found.append(_examine(run, legacy, models[run.model], gpus))
    return found


def legacy_runs_to_migrate(config: dict, models: dict[str, Model], gpus: int, grids: list[str]) -> list[Candidate]:
    """What the Snakefile checks before planning: finished old-layout runs these grids would otherwise retrain."""
    return [c for c in candidates(config, models, gpus, grids) if not c.why_not and (c.legacy / layout.CURVES).is_file()]


def migrate(candidates_: list[Candidate], apply: bool, root: str | Path = ".") -> list[str]:
    """Move every movable candidate (``apply``), or say what would move; one line per folder."""
    lines = []
    for c in candidates_:
        if c.why_not:
            lines.append(f"kept {c.legacy}: {c.why_not}")
            continue
        target = Path(root) / c.run.dir
        if apply:
            _move(c, Path(root))
        lines.append(f"{'moved' if apply else 'would move'} {c.legacy} → {target} (+ {c.calibration}/)")
    return lines


# ------------------------------------------------------------------------------------------------ internals
def _examine(run: Run, legacy: Path, model: Model, gpus: int) -> Candidate:
    splits = _json(legacy / layout.SPLITS) or {}
    calibration = "cal-eval" if splits.get("calibrate_on") == "eval" else \
        f"cal-pool{int(splits.get('calibration_size_requested', 1000))}"

    def no(why: str) -> Candidate:
        return Candidate(run, legacy, why, calibration)

    per_exit = methods.get(run.method).per_exit
    if per_exit:
        records = [_json(p) for p in sorted(legacy.glob(layout.MEMBER_METRICS.format(k="*")))]
        if len(records) != len(run.identity["exit_layers"]) or any(r is None for r in records):
            return no("its MM members' training records are incomplete (not a finished run)")
    else:
        records = [_json(legacy / layout.TRAIN_METRICS)]
        if records[0] is None:
            return no(f"no readable {layout.TRAIN_METRICS} (not a finished run)")
    model_type = model.model_type_offline
    if not per_exit and model_type in HEAD_CHANGED_ARCHITECTURES:
        return no(f"trained with the exit head sweet used before for {model_type} (BERT's tanh pooler); exits are "
                  "now the stock classifier's head, so this is another model: it is kept, and the run retrains")
    identity = run.identity
    for record in records:
        differs = _differs(record, identity, run, model, gpus)
        if differs:
            return no(f"recorded {differs}; this configuration asks otherwise")
    return Candidate(run, legacy, "", calibration)


def _differs(record: dict, identity: dict, run: Run, model: Model, gpus: int) -> str:
    if record.get("method") != run.method:
        return f"method {record.get('method')!r}"
    if list(record.get("exit_layers") or []) != identity["exit_layers"]:
        return f"exit layers {record.get('exit_layers')}"
    if int(record.get("seed", -1)) != run.seed:
        return f"seed {record.get('seed')}"
    if record.get("n_train") is not None and int(record["n_train"]) != run.budget:
        return f"{record['n_train']} training examples"
    if identity["pooling"] is not None and record.get("pooling", "cls") != identity["pooling"]:
        return f"pooling {record.get('pooling')!r}"
    trained = training_identity(record.get("training") or {}, run.method, gpus)
    if trained != identity["training"]:
        changed = sorted(k for k in {*trained, *identity["training"]}
                         if trained.get(k) != identity["training"].get(k))
        return "training options " + ", ".join(f"{k}={trained.get(k)!r}" for k in changed)
    if model.kind == "hub":
        if record.get("backbone") != model.backbone:
            return f"backbone {record.get('backbone')!r}"
        pinned = model.revision
        commit = record.get("backbone_revision") or ""
        if pinned and pinned != "main" and not (len(pinned) >= 7 and commit.startswith(pinned)):
            return f"backbone revision {commit or 'unknown'} (pinned: {pinned}, which cannot be checked offline)"
    return ""


def _move(c: Candidate, root: Path) -> None:
    run, legacy = c.run, c.legacy
    target = root / run.dir
    calibrated = target / c.calibration
    calibrated.mkdir(parents=True, exist_ok=True)
    splits_path = legacy / layout.SPLITS
    splits = _json(splits_path) or {}
    stamp = splits_path.stat() if splits_path.exists() else None
    meta = run.meta()
    training_meta = {k: v for k, v in meta.items() if k != "calibration"}
    # The two halves of the old splits.json: training ids (a training input) and the calibration split.
    train_part = {k: splits[k] for k in ("task", "budget", "seed", "pool_size", "train_ids") if k in splits}
    calib_part = {k: v for k, v in splits.items() if k != "train_ids"}
    _write_json(target / layout.SPLITS, train_part, stamp)
    _write_json(calibrated / layout.CALIBRATION_SPLIT, calib_part, stamp)
    _write_json(target / RUN_JSON, run.record(), stamp)
    splits_path.unlink(missing_ok=True)
    for name in TRAINING_FILES:
        if (legacy / name).exists():
            os.replace(legacy / name, target / name)
    for name in CALIBRATED_FILES:
        if (legacy / name).exists():
            os.replace(legacy / name, calibrated / name)
    for name in CSV_WITH_META:
        path = (calibrated if name in CALIBRATED_FILES else target) / name
        if path.is_file():
            _add_columns(path, training_meta if path.parent == target else {**training_meta, "calibration": c.calibration})
    metrics = target / layout.TRAIN_METRICS
    if metrics.is_file():
        record = json.loads(metrics.read_text())
        record = {"run_id": run.run_id, "settings": run.settings, "identity": run.identity, **record}
        _write_json(metrics, record, metrics.stat())
    _move_logs(c, root)
    _remove_empty(legacy)


def _add_columns(path: Path, meta: dict[str, Any]) -> None:
    """The new identity columns, where the curves stage now writes them (after seed); every other cell keeps its
    text exactly (read as strings), and the file its modification time."""
    import pandas as pd

    stat = path.stat()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    position = list(frame.columns).index("seed") + 1 if "seed" in frame.columns else 0
    for offset, key in enumerate(k for k in meta if k not in frame.columns):
        frame.insert(position + offset, key, "" if meta[key] is None else str(meta[key]))
    frame.to_csv(path, index=False)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _move_logs(c: Candidate, root: Path) -> None:
    """The old run's step logs to where the run's steps log now (sweet.plan.layout.step_log)."""
    logs = root / LOGS
    target = root / c.run.dir
    for step in TRAINING_STEPS + CALIBRATED_STEPS:
        source = step_log(logs, step, c.legacy, calibrated=False)  # the old folder held everything
        if source.is_file():
            calibrated = step in CALIBRATED_STEPS
            dest = step_log(logs, step, target / c.calibration if calibrated else target, calibrated)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
    members = step_log(logs, "train_member", c.legacy, calibrated=False).with_suffix("")
    if members.is_dir():
        dest = step_log(logs, "train_member", target, calibrated=False).with_suffix("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(members), str(dest))


def _remove_empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _json(path: Path) -> dict | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _write_json(path: Path, value: Any, stamp: os.stat_result | None) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    if stamp is not None:
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
