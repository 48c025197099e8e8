"""The task sources and the GLUE tasks: one registry each, the only place a source or a GLUE task is spelled out.

A task of the configuration (``tasks.<name>``) names its ``source``; the source's entry says which keys its spec
takes, which of them name files the workflow should treat as inputs, whether preparing it downloads, and which
function reads it (``sweet.data`` runs it in ``prepare``). The config schema's ``source`` and ``glue_task``
lists, the configuration check's pool sizes, ``prepare`` and the workflow's inputs and ``fetch`` target all read
these tables: adding a source is one ``TaskSource`` entry plus its reading function.

Standard library only: planning (``snakemake -n``) reads it, and must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this, per-exit temperatures are too noisy to be worth fitting: the smallest calibration split `split`
# draws, and what the configuration check assumes a budget leaves at least.
MIN_CALIBRATION = 50


@dataclass(frozen=True)
class TaskSource:
    name: str
    keys: frozenset[str]  # the keys its spec (tasks.<name>) may hold, ``source`` included; anything else is a typo
    # "module:function" reading (name, spec) → (training pool rows, evaluation rows, task.json fields); imported
    # only when a task is prepared, so the registry stays importable while planning.
    prepare: str
    files: tuple[str, ...] = ()  # spec keys naming local files: inputs of `prepare` (editing one re-prepares)
    downloads: bool = False  # preparing it fetches data (the workflow's `fetch` target prepares these first)


TASK_SOURCES: dict[str, TaskSource] = {}


def register(source: TaskSource) -> TaskSource:
    if "source" not in source.keys:
        raise ValueError(f"{source.name}: its keys must include 'source'")
    TASK_SOURCES[source.name] = source
    return source


register(TaskSource(
    "synthetic", frozenset({"source", "train_size", "eval_size", "seed", "difficulty_weights"}),
    "sweet.data:prepare_synthetic",
))
register(TaskSource("glue", frozenset({"source", "glue_task"}), "sweet.data:prepare_glue", downloads=True))
register(TaskSource(
    "local", frozenset({"source", "train", "eval", "text_column", "text_pair_column", "label_column", "labels",
                        "metrics", "primary_metric"}),
    "sweet.data:prepare_local", files=("train", "eval"),
))


@dataclass(frozen=True)
class GlueTask:
    config: str  # the "nyu-mll/glue" configuration name
    text: str
    text_pair: str | None
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    # Training-pool and evaluation sizes (GLUE train / the evaluation split): known offline, so a budget that does
    # not fit is refused before anything downloads.
    pool_size: int
    eval_size: int
    eval_split: str = "validation"  # GLUE's test labels are hidden, so the validation split is the evaluation set


GLUE_DATASET = "nyu-mll/glue"
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", "sentence", None, ("unacceptable", "acceptable"), ("matthews", "accuracy"), "matthews",
                     8_551, 1_043),
    "sst2": GlueTask("sst2", "sentence", None, ("negative", "positive"), ("accuracy",), "accuracy", 67_349, 872),
    "mrpc": GlueTask("mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
                     3_668, 408),
    "qqp": GlueTask("qqp", "question1", "question2", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
                    363_846, 40_430),
    "mnli": GlueTask(
        "mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
        392_702, 9_815, eval_split="validation_matched",
    ),
    "qnli": GlueTask("qnli", "question", "sentence", ("entailment", "not_entailment"), ("accuracy",), "accuracy",
                     104_743, 5_463),
    "rte": GlueTask("rte", "sentence1", "sentence2", ("entailment", "not_entailment"), ("accuracy",), "accuracy",
                    2_490, 277),
    "wnli": GlueTask("wnli", "sentence1", "sentence2", ("not_entailment", "entailment"), ("accuracy",), "accuracy",
                     635, 71),
}
