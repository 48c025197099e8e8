"""What a grid needs, estimated offline: its tasks' sizes, its models' parameters, and the disk it will fill.

The configuration check reads the task sizes (a budget must fit the training pool before anything downloads), the
cluster plan reads the sizes and parameter counts (runtime and memory per job), and the Snakefile prints the disk
estimate while it plans. Standard library only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sweet import methods  # the method registry: standard library only
from sweet.plan.settings import RESULTS, SYNTHETIC_DEFAULTS, Model
from sweet.tasks import GLUE_TASKS, TASK_SOURCES  # standard library only

# Training-pool and evaluation sizes of the GLUE tasks, and their label counts (sweet.tasks.GLUE_TASKS): known
# offline, so a budget that does not fit is refused before anything downloads.
GLUE_SIZES: dict[str, tuple[int, int, int]] = {name: (t.pool_size, t.eval_size, len(t.label_names))
                                               for name, t in GLUE_TASKS.items()}

SYNTHETIC_VOCAB = 1000  # rough size of the offline word-level tokenizer, for the disk estimate only


def pool_size(spec: dict, base: Path = Path(".")) -> int | None:
    """Training-pool size of a task when it is knowable without downloading; None otherwise."""
    if spec["source"] == "synthetic":
        return int(spec.get("train_size", SYNTHETIC_DEFAULTS["train_size"]))
    if spec["source"] == "glue":
        return GLUE_SIZES[spec.get("glue_task", "")][0] if spec.get("glue_task") in GLUE_SIZES else None
    return _count_rows(base / spec["train"]) if "train" in TASK_SOURCES[spec["source"]].files else None


def eval_shape(spec: dict, base: Path = Path(".")) -> tuple[int, int]:
    """(evaluation examples, classes) of a task, estimated offline, for the disk estimate."""
    if spec["source"] == "synthetic":
        return int(spec.get("eval_size", SYNTHETIC_DEFAULTS["eval_size"])), 2  # binary sentiment
    if spec["source"] == "glue":
        _, n, c = GLUE_SIZES.get(spec.get("glue_task", ""), (0, 5000, 2))
        return n, c
    counted = _count_rows(base / spec["eval"]) if "eval" in TASK_SOURCES[spec["source"]].files else None
    return counted or 1000, 2


def parameter_count(arch: dict[str, int], depth: int | None = None) -> int:
    """Parameters of a BERT-like encoder with ``depth`` of its layers (all by default), classifier excluded."""
    h, i = arch["hidden_size"], arch["intermediate_size"]
    depth = arch["num_hidden_layers"] if depth is None else depth
    embeddings = (arch.get("vocab_size", SYNTHETIC_VOCAB) + arch.get("max_position_embeddings", 512)
                  + arch.get("type_vocab_size", 2)) * h + 2 * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h  # attention, feed-forward, two LayerNorms
    return embeddings + depth * layer + h * h + h  # + pooler


def disk_estimate(config: dict, models: dict[str, Model], base: Path = Path(".")) -> dict[str, Any]:
    """Bytes the selected grid leaves under results/, without and with kept checkpoints.

    Per run: logits.npz (float32 per exit × example × class, plus learned-exit scores), curves and per-exit CSVs,
    splits and training records; per task: the prepared JSONL. Checkpoints are float32 safetensors: the whole
    encoder with its exits for EE/SWEET, the sum of the truncated members for MM.
    """
    grid = config["grids"][config["grid"]]
    tasks = config["tasks"]
    base_bytes = 0
    ckpt_bytes = 0
    unknown: set[str] = set()
    runs = 0
    for t in grid["tasks"]:
        n_eval, n_cls = eval_shape(tasks[t], base)
        pool = pool_size(tasks[t], base) or 10_000
        base_bytes += (pool + n_eval) * 200  # prepared JSONL: ~200 bytes per example (GLUE sentence pairs)
        for mname in grid["models"]:
            model = models[mname]
            n_exits = len(model.exit_layers)
            for b in grid["budgets"]:
                for method in grid["methods"]:
                    n_seeds = len(grid["seeds"])
                    runs += n_seeds
                    per_run = n_exits * n_eval * (n_cls + 1) * 4 + n_eval * 16  # logits, lte scores, labels
                    per_run += 700 * 200  # curves.csv: 5 rules × (11 + 101) thresholds × ~200 bytes
                    per_run += n_exits * config.get("calibration_size", 1000) * (n_cls + 1) * 4  # calibration logits
                    per_run += (b + config.get("calibration_size", 1000)) * 8 + 100_000  # splits, records, logs
                    base_bytes += per_run * n_seeds
                    if model.arch is None:
                        unknown.add(mname)
                        continue
                    if methods.get(method).per_exit:
                        params = sum(parameter_count(model.arch, d) for d in model.exit_layers)
                    else:
                        params = parameter_count(model.arch) + n_exits * (model.arch["hidden_size"] ** 2)
                    ckpt_bytes += params * 4 * n_seeds
    hub_cache = sum(parameter_count(models[m].arch) * 4 for m in grid["models"]
                    if models[m].kind == "hub" and models[m].arch is not None)
    return {"runs": runs, "without_checkpoints": base_bytes, "with_checkpoints": base_bytes + ckpt_bytes,
            "hub_cache": hub_cache, "unknown_models": sorted(unknown)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def describe_disk(config: dict, models: dict[str, Model], base: Path = Path(".")) -> str:
    est = disk_estimate(config, models, base)
    line = (f"sweet: grid '{config['grid']}': {est['runs']} runs; expected disk under {RESULTS}/: "
            f"{human_bytes(est['without_checkpoints'])} without checkpoints, "
            f"{human_bytes(est['with_checkpoints'])} with keep_checkpoints: true")
    if est["hub_cache"]:
        line += f" (+ {human_bytes(est['hub_cache'])} of downloaded backbones in the Hugging Face cache)"
    if est["unknown_models"]:
        line += f"; checkpoint size unknown offline for {', '.join(est['unknown_models'])}"
    return line


# ------------------------------------------------------------------------------------------------ internals
def _count_rows(path: Path) -> int | None:
    """Data rows of a local CSV/TSV/JSONL file (None when unreadable here: `prepare` reports it precisely)."""
    try:
        if path.stat().st_size > 200_000_000:
            return None  # too big to count during planning; `split` checks the budget against the real pool
        with open(path, encoding="utf-8", newline="") as fh:
            suffix = path.suffix.lower()
            if suffix in (".jsonl", ".json"):
                return sum(1 for line in fh if line.strip())
            if suffix == ".tsv":  # GLUE-style TSVs are unquoted: one line per row
                return max(0, sum(1 for line in fh if line.strip()) - 1)
            return max(0, sum(1 for row in csv.reader(fh) if row) - 1)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
