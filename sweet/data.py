"""Tasks: GLUE through `datasets`, local CSV/TSV/JSONL files, and the offline synthetic task.

``prepare_task`` validates a task's data once and writes ``results/data/<task>/`` (``train.jsonl``,
``eval.jsonl``, ``task.json``); every later stage reads that folder with ``load_prepared``, so a dirty row is
reported before any training starts and no stage depends on the network after ``prepare``.

``make_splits`` draws the training budget as a seeded random subset of the pool (the reference always took the
first N rows) and a calibration split disjoint from it, from the unused pool by default.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sweet.errors import UserError
from sweet.tasks import GLUE_DATASET, GLUE_TASKS, MIN_CALIBRATION, TASK_SOURCES

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Metrics (fractions in [0, 1]; GLUE's leaderboard reports the same numbers times 100)
def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def _f1(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    # GLUE's F1 (MRPC, QQP) is the binary F1 of the positive class (label 1).
    return float(f1_score(labels, preds, average="binary", pos_label=1, zero_division=0))


def _macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="macro", zero_division=0))


def _matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():
        # A constant prediction (common for an early exit on CoLA) has MCC 0 by convention; no need to warn.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(matthews_corrcoef(labels, preds))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "macro_f1": _macro_f1,
    "matthews": _matthews,
}
BINARY_ONLY_METRICS = {"f1"}


def compute_metrics(metric_names: Sequence[str], predictions: Any, labels: Any) -> dict[str, float]:
    """``{name: value}`` for each metric of ``METRICS`` named, on integer class predictions and labels."""
    preds = np.asarray(predictions).astype(np.int64).ravel()
    gold = np.asarray(labels).astype(np.int64).ravel()
    if preds.shape != gold.shape:
        raise ValueError(f"{preds.size} predictions for {gold.size} labels")
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise UserError(f"metrics: unknown {unknown}; use any of {sorted(METRICS)}")
    if preds.size == 0:
        return {name: float("nan") for name in metric_names}
    return {name: METRICS[name](preds, gold) for name in metric_names}


# ---------------------------------------------------------------------------------------------------------------
# Tasks: the sources and the GLUE tasks are sweet.tasks' registries (torch-free, read while planning)
LOCAL_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".jsonl": None}


@dataclass
class PreparedTask:
    """A prepared task folder in memory; ``train`` is the training pool, ``eval`` the evaluation split."""

    name: str
    label_names: list[str]
    num_labels: int
    metrics: list[str]
    primary_metric: str
    has_text_pair: bool
    train: list[dict]
    eval: list[dict]
    info: dict = field(default_factory=dict)  # the whole task.json (source, spec, difficulty names, ...)


# ---------------------------------------------------------------------------------------------------------------
def prepare_task(name: str, spec: dict, out_dir: str | os.PathLike) -> dict:
    """Validate a task's data and write ``out_dir`` (train.jsonl, eval.jsonl, task.json) atomically.

    Returns the task.json content. Raises ``UserError`` (one line: the key or file:row, and the fix) on bad input,
    before anything is written.
    """
    if not isinstance(spec, dict):
        raise UserError(f"tasks.{name}: must be a mapping with a `source` ({', '.join(TASK_SOURCES)})")
    source = spec.get("source")
    if source not in TASK_SOURCES:
        raise UserError(f"tasks.{name}.source: '{source}' is not a known source; use one of {', '.join(TASK_SOURCES)}")
    entry = TASK_SOURCES[source]
    unknown = sorted(set(spec) - entry.keys)
    if unknown:
        raise UserError(
            f"tasks.{name}.{unknown[0]}: unknown key for source '{source}'; "
            f"allowed keys are {', '.join(sorted(entry.keys))}"
        )
    module, function = entry.prepare.split(":")
    train, evaluation, info = getattr(importlib.import_module(module), function)(name, spec)
    has_pair = any("text_pair" in r for r in train)
    task = {
        "name": name,
        "source": source,
        "format_version": FORMAT_VERSION,
        "has_text_pair": has_pair,
        "pool_size": len(train),
        "eval_size": len(evaluation),
        "num_labels": len(info["label_names"]),
        "spec": spec,
        **info,
    }
    from sweet.io import atomic_dir, write_json

    with atomic_dir(out_dir) as tmp:
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "eval.jsonl", evaluation)
        write_json(tmp / "task.json", task)
    return task


def load_prepared(task_dir: str | os.PathLike) -> PreparedTask:
    """Read a folder written by ``prepare_task``."""
    folder = Path(task_dir)
    fix = f"run `python -m sweet prepare --task <name> --task-spec ... --out {folder}` first"
    if not folder.is_dir():
        raise UserError(f"{folder}: prepared task folder not found; {fix}")
    missing = [f for f in ("task.json", "train.jsonl", "eval.jsonl") if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: incomplete prepared task (missing {', '.join(missing)}); {fix}")
    try:
        info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
        train = _read_jsonl(folder / "train.jsonl")
        evaluation = _read_jsonl(folder / "eval.jsonl")
        return PreparedTask(
            name=info["name"],
            label_names=list(info["label_names"]),
            num_labels=int(info["num_labels"]),
            metrics=list(info["metrics"]),
            primary_metric=info["primary_metric"],
            has_text_pair=bool(info["has_text_pair"]),
            train=train,
            eval=evaluation,
            info=info,
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder}: corrupt prepared task ({type(err).__name__}: {err}); {fix}") from None


def make_splits(
    pool_size: int,
    budget: int,
    calibration_size: int,
    seed: int,
    calibrate_on: str = "pool",
    *,
    eval_size: int | None = None,
    task: str | None = None,
) -> dict:
    """The training subset and the calibration split for one (budget, seed).

    One seeded permutation of the pool: the training ids are its first ``budget`` entries (so with one seed a
    smaller budget's subset is contained in a larger one's), the calibration ids its last ``calibration_size``
    entries (the same for every budget, disjoint from training as long as they fit). Ids are sorted for
    readability; which ids are chosen is random. If the pool cannot hold both, the calibration split shrinks
    down to ``MIN_CALIBRATION`` examples (with a ``warning``) before this is an error.

    ``calibrate_on="eval"`` reproduces the reference: temperatures are fitted on the whole evaluation split
    (``eval_size`` examples; calibration ids are then eval ids), with a ``warning`` saying so.
    """
    where = f" for task {task}" if task else ""
    for key, value, low in (("budget", budget, 1), ("seed", seed, 0), ("calibration_size", calibration_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{key}: {value!r} must be an integer ≥ {low}{where}")
    if calibrate_on not in ("pool", "eval"):
        raise UserError(f"calibrate_on: '{calibrate_on}' unknown; use 'pool' (default) or 'eval'")
    if budget > pool_size:
        raise UserError(
            f"budgets: budget {budget} > training pool {pool_size}{where}; lower `budgets` to at most {pool_size} "
            "or prepare a larger training pool"
        )
    perm = _permutation(pool_size, seed)
    train_ids = sorted(int(i) for i in perm[:budget])
    result: dict[str, Any] = {
        "budget": int(budget),
        "seed": int(seed),
        "pool_size": int(pool_size),
        "calibrate_on": calibrate_on,
        "calibration_size_requested": int(calibration_size),
    }
    if calibrate_on == "eval":
        if eval_size is None:
            raise ValueError("make_splits(calibrate_on='eval') needs eval_size")
        calibration_ids = list(range(int(eval_size)))
        result["warning"] = (
            "calibrate_on=eval: temperatures are fitted on the evaluation split itself, as in the reference; "
            "its scores are optimistically biased (use the default calibrate_on=pool for unbiased results)"
        )
    else:
        available = pool_size - budget
        floor = min(calibration_size, MIN_CALIBRATION)
        if available < floor:
            raise UserError(
                f"budgets: budget {budget} leaves {available} of the training pool {pool_size}{where} for the "
                f"calibration split (at least {floor} needed); lower `budgets` to at most {pool_size - floor}, "
                "or calibrate on the evaluation split (calibrate_on: eval)"
            )
        size = min(calibration_size, available)
        if size < calibration_size:
            result["warning"] = (
                f"calibration split shrunk from {calibration_size} to {size} examples: budget {budget} leaves only "
                f"{available} unused examples of the training pool {pool_size}{where}"
            )
        calibration_ids = sorted(int(i) for i in perm[pool_size - size :])
    result["train_ids"] = train_ids
    result["calibration_ids"] = calibration_ids
    result["calibration_size"] = len(calibration_ids)
    return result


def training_ids(pool_size: int, budget: int, seed: int) -> list[int]:
    """The training subset of ``make_splits`` alone (what a training job reads: no calibration setting in it)."""
    for key, value, low in (("budget", budget, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"{key}: {value!r} must be an integer ≥ {low}")
    if budget > pool_size:
        raise UserError(f"budgets: budget {budget} > training pool {pool_size}; lower `budgets` to at most {pool_size}")
    return sorted(int(i) for i in _permutation(pool_size, seed)[:budget])


def _permutation(pool_size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(pool_size)


# ---------------------------------------------------------------------------------------------------------------
# Sources
def prepare_synthetic(name: str, spec: dict) -> tuple[list[dict], list[dict], dict]:
    from sweet import synthetic

    sizes = {}
    for key, default, low in (("train_size", 4000, 1), ("eval_size", 1000, 1), ("seed", 0, 0)):
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"tasks.{name}.{key}: {value!r} must be an integer ≥ {low}")
        sizes[key] = value
    weights = spec.get("difficulty_weights", list(synthetic.DEFAULT_WEIGHTS))
    n_levels = len(synthetic.DIFFICULTY_NAMES)
    if (
        not isinstance(weights, list)
        or len(weights) != n_levels
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise UserError(
            f"tasks.{name}.difficulty_weights: must be {n_levels} non-negative numbers with a positive sum "
            f"(levels {', '.join(synthetic.DIFFICULTY_NAMES)})"
        )
    train, evaluation = synthetic.make_task(sizes["train_size"], sizes["eval_size"], sizes["seed"], weights)
    info = {
        "label_names": list(synthetic.LABEL_NAMES),
        "metrics": ["accuracy"],
        "primary_metric": "accuracy",
        "difficulty_names": list(synthetic.DIFFICULTY_NAMES),
        # The effective generator settings (defaults filled in), so the folder says how to regenerate it.
        "generator": {**sizes, "difficulty_weights": list(weights)},
    }
    return _with_ids(train), _with_ids(evaluation), info


def _load_hf_dataset(path: str, config: str, split: str) -> Any:
    """The one place that touches the network (tests replace it)."""
    from datasets import load_dataset

    return load_dataset(path, config, split=split)


def prepare_glue(name: str, spec: dict) -> tuple[list[dict], list[dict], dict]:
    glue_name = str(spec.get("glue_task", name)).lower()
    if glue_name not in GLUE_TASKS:
        key = "glue_task" if "glue_task" in spec else "source"
        raise UserError(
            f"tasks.{name}.{key}: '{glue_name}' is not a known GLUE task; use one of {', '.join(GLUE_TASKS)} "
            "(or add an entry to sweet.tasks.GLUE_TASKS)"
        )
    task = GLUE_TASKS[glue_name]
    splits = []
    for split in ("train", task.eval_split):
        try:
            data = _load_hf_dataset(GLUE_DATASET, task.config, split)
        except Exception as err:  # any download or cache failure is for the user to fix
            raise UserError(
                f"tasks.{name}: could not load {GLUE_DATASET}/{task.config} split {split} "
                f"({type(err).__name__}: {err}); check the network or the Hugging Face cache (HF_HOME)"
            ) from None
        rows = []
        for record in data:
            label = int(record["label"])
            if label < 0:  # GLUE marks hidden test labels with -1; never in train/validation, but be safe
                continue
            row: dict[str, Any] = {"text": record[task.text] or ""}
            if task.text_pair:
                row["text_pair"] = record[task.text_pair] or ""
            row["label"] = label
            rows.append(row)
        splits.append(_with_ids(rows))
    info = {
        "label_names": list(task.label_names),
        "metrics": list(task.metrics),
        "primary_metric": task.primary_metric,
        "glue_task": glue_name,
    }
    return splits[0], splits[1], info


def prepare_local(name: str, spec: dict) -> tuple[list[dict], list[dict], dict]:
    for key in ("train", "eval", "text_column", "label_column"):
        if not spec.get(key):
            raise UserError(f"tasks.{name}.{key}: missing; a local task needs train, eval, text_column and label_column")
    text_col, label_col = str(spec["text_column"]), str(spec["label_column"])
    pair_col = str(spec["text_pair_column"]) if spec.get("text_pair_column") else None
    train_path, eval_path = Path(spec["train"]), Path(spec["eval"])
    train_raw = read_records(train_path, f"tasks.{name}.train")
    eval_raw = read_records(eval_path, f"tasks.{name}.eval")
    train_rows = _check_rows(train_path, train_raw, text_col, pair_col, label_col)
    eval_rows = _check_rows(eval_path, eval_raw, text_col, pair_col, label_col)

    if spec.get("labels") is not None:
        given = spec["labels"]
        if not isinstance(given, list) or len(given) < 2:
            raise UserError(f"tasks.{name}.labels: must be a list of at least two label values")
        label_names = [_label_key(v) for v in given]
        if len(set(label_names)) != len(label_names):
            raise UserError(f"tasks.{name}.labels: {given} has duplicates; list each label once")
        allowed_from = f"tasks.{name}.labels"
    else:
        label_names = _sorted_labels({label for _, _, label in train_rows})
        allowed_from = f"the training file {train_path}"
        if len(label_names) < 2:
            raise UserError(
                f"{train_path}: only one label ({label_names[0]!r}) in column '{label_col}'; "
                "a classifier needs at least two"
            )
    index = {label: i for i, label in enumerate(label_names)}
    prepared = []
    for path, rows in ((train_path, train_rows), (eval_path, eval_rows)):
        out = []
        for where, row, label in rows:
            if label not in index:
                raise UserError(
                    f"{path}: {where}: label {label!r} is not in the label set {label_names} (from {allowed_from}); "
                    "fix the row, or list every label under `labels` in the task spec"
                )
            out.append({**row, "label": index[label]})
        prepared.append(_with_ids(out))

    num_labels = len(label_names)
    metrics = spec.get("metrics", ["accuracy"] if num_labels > 2 else ["accuracy", "f1"])
    if not isinstance(metrics, list) or not metrics or not all(m in METRICS for m in metrics):
        raise UserError(f"tasks.{name}.metrics: {metrics!r} must be a non-empty list from {sorted(METRICS)}")
    if num_labels > 2 and BINARY_ONLY_METRICS & set(metrics):
        raise UserError(f"tasks.{name}.metrics: 'f1' is binary-only and this task has {num_labels} labels; use macro_f1")
    primary = spec.get("primary_metric", metrics[0])
    if primary not in metrics:
        raise UserError(f"tasks.{name}.primary_metric: '{primary}' must be one of metrics {metrics}")
    info = {
        "label_names": label_names,
        "metrics": list(metrics),
        "primary_metric": primary,
        "files": {"train": str(train_path), "eval": str(eval_path)},
    }
    return prepared[0], prepared[1], info


# ---------------------------------------------------------------------------------------------------------------
# Local files
_MISSING_LABELS = {"", "nan", "na", "n/a", "null", "none"}


def read_records(path: Path, key: str) -> list[tuple[str, dict[str, Any]]]:
    """[(where, record)] with ``where`` = "row N" (CSV/TSV, 1-based, header not counted) or "line N" (JSONL)."""
    suffix = path.suffix.lower()
    if suffix not in LOCAL_EXTENSIONS:
        raise UserError(
            f"{key}: {path} has an unsupported extension '{path.suffix}'; use one of {', '.join(LOCAL_EXTENSIONS)}"
        )
    if not path.is_file():
        raise UserError(f"{key}: file {path} not found; fix the path (relative paths start at the working directory)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM that spreadsheet programs write
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        where = f"line {line}" if suffix == ".jsonl" else f"row {line - 1} (line {line})"
        raise UserError(
            f"{path}: {where}: not valid UTF-8 (byte 0x{raw[err.start]:02x}); re-save the file as UTF-8"
        ) from None
    records = _parse_jsonl(path, text) if suffix == ".jsonl" else _parse_table(path, text, LOCAL_EXTENSIONS[suffix])
    if not records:
        raise UserError(f"{path}: no data rows; the file must hold at least one example")
    return records


def _parse_table(path: Path, text: str, sep: str | None) -> list[tuple[str, dict[str, Any]]]:
    import pandas as pd

    if not text.strip():
        return []
    try:
        # Everything as str, and only empty cells missing: a text "NA" or "null" stays text.
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, ValueError) as err:
        raise UserError(f"{path}: cannot be parsed as {'TSV' if sep == chr(9) else 'CSV'} ({err}); fix the file") from None
    return [
        (f"row {i + 1}", {str(k): v for k, v in record.items()})
        for i, record in enumerate(frame.to_dict(orient="records"))
    ]


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, say) are not rows
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number}: not valid JSON ({err.msg}); one JSON object per line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number}: a JSON {type(record).__name__}, not an object; one object per line")
        records.append((f"line {number}", record))
    return records


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_rows(
    path: Path, records: list[tuple[str, dict[str, Any]]], text_col: str, pair_col: str | None, label_col: str
) -> list[tuple[str, dict[str, Any], str]]:
    """[(where, {"text", "text_pair"?}, label key)], or a UserError naming the file, row and fix."""
    columns: list[str] = []
    for _, record in records:
        columns += [c for c in record if c not in columns]
    for role, col in (("text_column", text_col), ("text_pair_column", pair_col), ("label_column", label_col)):
        if col is not None and col not in columns:
            raise UserError(
                f"{path}: no column '{col}' ({role}); the file has columns {columns}; set {role} to one of them"
            )
    rows = []
    for where, record in records:
        row: dict[str, Any] = {}
        for key, col in (("text", text_col), ("text_pair", pair_col)):
            if col is None:
                continue
            value = record.get(col)
            if _is_missing(value) or not str(value).strip():
                raise UserError(f"{path}: {where}: empty text in column '{col}'; fill it in or remove the row")
            row[key] = str(value)
        label = record.get(label_col)
        if _is_missing(label) or str(label).strip().lower() in _MISSING_LABELS:
            raise UserError(f"{path}: {where}: missing label in column '{label_col}'; give a label or remove the row")
        rows.append((where, row, _label_key(label)))
    return rows


def _label_key(value: Any) -> str:
    """Labels compare as strings, so 1 (JSON), "1" (CSV) and 1.0 (a spreadsheet's export) are the same label."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _sorted_labels(labels: set[str]) -> list[str]:
    # Integer labels sort numerically, so 0..C-1 keep their meaning (and "10" does not come before "2").
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


# ---------------------------------------------------------------------------------------------------------------
def _with_ids(rows: list[dict]) -> list[dict]:
    """Key order id, text, text_pair, label, extras: the JSONL lines are stable and readable."""
    out = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"id": i, "text": row["text"]}
        if "text_pair" in row:
            item["text_pair"] = row["text_pair"]
        item["label"] = int(row["label"])
        item.update({k: v for k, v in row.items() if k not in item})
        out.append(item)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
