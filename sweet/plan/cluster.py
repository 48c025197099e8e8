"""What each job asks a cluster for: wall time, memory and GPUs, within the partition's caps.

Pure arithmetic on the configuration (no torch, no snakemake), called by ``workflow/rules/common.smk`` for every
job and by the dry run's plan summary, so the numbers are unit-tested rather than trusted.

Runtime estimates follow the work a job does. Fine-tuning costs ~6 FLOPs per parameter per token (forward and
backward), a forward pass ~2; tokens are bounded by ``budget × epochs × max_length`` (batches are padded to their
longest example, never beyond ``max_length``). The throughputs below are deliberately low assumptions (no GPU was
at hand to time one; ``cluster.gpu_tflops`` / ``cluster.cpu_gflops_per_thread`` set them), doubled for safety,
plus a fixed allowance for the job's start (imports, loading the model from a shared file system, saving it).

Caps: no job asks for more than ``cluster.max_runtime_minutes`` / ``cluster.max_mem_mb``, retries included, and
a group (calibrate + evaluate of one run, submitted as one job) asks for their sum, so each of its two jobs asks
for at most half. A training job whose estimate exceeds the cap is not refused: Slurm signals it before the limit,
it checkpoints and exits, and the retry resumes (:func:`training_allocations` says how many allocations it needs).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from sweet import methods
from sweet.plan.estimates import eval_shape, human_bytes, parameter_count
from sweet.plan.settings import Model, merged_training

# The cluster keys' defaults (the configuration check reads them too).
CLUSTER_DEFAULTS: dict[str, Any] = {
    "max_runtime_minutes": 1440,  # the partition's MaxTime (24 h is a common cap on GPU partitions)
    "max_mem_mb": None,  # the partition's memory cap per job (None: no cap)
    "signal_minutes": 5,  # Slurm's SIGTERM warning before the time limit (sbatch --signal=TERM@…)
    "gpu_tflops": 10.0,  # sustained training throughput assumed per GPU (fp32; V100-class, conservative)
    "cpu_gflops_per_thread": 30.0,  # measured ~65 here (BERT-base step, 2 threads); halved for unknown CPUs
}
JOB_START_MINUTES = 10  # imports, model loading from a shared file system, saving: a fixed allowance per job

UNKNOWN_PARAMS = 350_000_000  # a hub model whose size is not known offline: assume a large one
# snakemake-executor-plugin-slurm adds a few MB to an array's memory request (the jobstep holds the encoded
# commands of every task: ~3 bytes per payload byte, 1 MB at least): array jobs leave that much below the cap.
ARRAY_MEM_HEADROOM_MB = 16
SAFETY = 2.0  # on top of the throughput assumptions


@dataclass(frozen=True)
class Caps:
    max_runtime_minutes: int | None
    max_mem_mb: int | None
    signal_minutes: int

    @classmethod
    def from_config(cls, config: dict) -> Caps:
        cluster = {**CLUSTER_DEFAULTS, **(config.get("cluster") or {})}
        return cls(cluster["max_runtime_minutes"], cluster["max_mem_mb"], int(cluster["signal_minutes"]))

    def runtime(self, minutes: float, share: int = 1) -> int:
        """``minutes`` rounded up, at most the cap (divided by ``share`` jobs submitted together as one group)."""
        minutes = int(math.ceil(minutes))
        if self.max_runtime_minutes is None:
            return minutes
        return max(1, min(minutes, self.max_runtime_minutes // share))

    def mem_mb(self, mb: float, headroom: int = 0) -> int:
        """``mb`` rounded up, at most the cap minus ``headroom`` (what the executor adds to the request)."""
        mb = int(math.ceil(mb))
        return mb if self.max_mem_mb is None else min(mb, self.max_mem_mb - headroom)


def throughput_flops(config: dict, gpus: int, threads: int) -> float:
    """FLOP/s a job is assumed to sustain: per GPU when it has one, else per CPU thread."""
    cluster = {**CLUSTER_DEFAULTS, **(config.get("cluster") or {})}
    if gpus > 0:
        return float(cluster["gpu_tflops"]) * 1e12 * gpus
    return float(cluster["cpu_gflops_per_thread"]) * 1e9 * max(1, threads)


def train_minutes(params: int, budget: int, epochs: float, max_length: int, flops_per_second: float) -> float:
    """Estimated wall time of fine-tuning ``params`` parameters on ``budget`` examples."""
    tokens = budget * epochs * max_length
    return JOB_START_MINUTES + SAFETY * 6 * params * tokens / flops_per_second / 60


def forward_minutes(params: int, examples: int, max_length: int, flops_per_second: float) -> float:
    """Estimated wall time of one forward pass over ``examples`` (calibration or evaluation)."""
    return JOB_START_MINUTES + SAFETY * 2 * params * examples * max_length / flops_per_second / 60


def train_mem_mb(params: int) -> float:
    """Host memory of a training job: the runtime, fp32 weights, gradients and two Adam moments, activations."""
    return 2000 + 24 * params / 1e6


def forward_mem_mb(params: int) -> float:
    return 2000 + 8 * params / 1e6


def training_allocations(estimate_minutes: float, caps: Caps) -> int:
    """Allocations a training job needs when its estimate exceeds the time cap (it resumes from a checkpoint
    saved on Slurm's warning signal, ``signal_minutes`` before each limit)."""
    if caps.max_runtime_minutes is None:
        return 1
    usable = max(1, caps.max_runtime_minutes - caps.signal_minutes)
    return max(1, math.ceil(estimate_minutes / usable))


def checkpoint_bytes(params: int) -> int:
    """One Trainer checkpoint: fp32 weights (4 B/parameter) and AdamW's two moments (8 B/parameter)."""
    return 12 * params


def peak_checkpoint_bytes(checkpoints: list[int], concurrent_jobs: int) -> int:
    """Scratch space at the peak: the largest checkpoints of the training jobs that can run at once, two of each
    (the Trainer writes the new checkpoint before it deletes the previous one)."""
    largest = sorted(checkpoints, reverse=True)[: max(1, concurrent_jobs)]
    return 2 * sum(largest)


# ------------------------------------------------------------------------------------------------ per job
@dataclass(frozen=True)
class Estimator:
    """Resources of the workflow's jobs for one configuration, as the rules ask for them."""

    config: dict
    gpus: int  # GPUs each compute job gets (0: CPU)
    threads: int

    @property
    def caps(self) -> Caps:
        return Caps.from_config(self.config)

    def params(self, model: Model, depth: int | None = None) -> int:
        return UNKNOWN_PARAMS if model.arch is None else parameter_count(model.arch, depth)

    def train_estimate(self, model: Model, budget: int, depth: int | None = None, method: str = "ee") -> float:
        """Minutes one attempt of a training job (a joint method: the whole model; per-exit: a member of ``depth``
        layers) is expected to take, before caps. The compute scales with the method's ``training_cost`` (DeeBERT's
        two stages: two passes over the data); the job's fixed start-up allowance does not."""
        spec = merged_training(self.config, model)
        passes = float(spec.get("epochs", 2)) * methods.get(method).training_cost  # as that many epochs of EE
        return train_minutes(self.params(model, depth), budget, passes, int(spec.get("max_length", 256)),
                             throughput_flops(self.config, self.gpus, self.threads))

    def train_runtime(self, model: Model, budget: int, depth: int | None, attempt: int, method: str = "ee") -> int:
        return self.caps.runtime(self.train_estimate(model, budget, depth, method) * attempt)

    def train_mem_mb(self, model: Model, depth: int | None, attempt: int, array: bool = False) -> int:
        headroom = ARRAY_MEM_HEADROOM_MB if array else 0
        return self.caps.mem_mb(train_mem_mb(self.params(model, depth)) * attempt, headroom)

    def forward_runtime(self, model: Model, examples: int, attempt: int, share: int = 2) -> int:
        """Calibration, evaluation (or latency): ``share`` jobs submitted together (one group, which asks for the
        sum), so each gets at most 1/share of the cap."""
        spec = merged_training(self.config, model)
        minutes = forward_minutes(self.params(model), examples, int(spec.get("max_length", 256)),
                                  throughput_flops(self.config, self.gpus, self.threads))
        return self.caps.runtime(minutes * attempt, share=share)

    def forward_mem_mb(self, model: Model, attempt: int) -> int:
        return self.caps.mem_mb(forward_mem_mb(self.params(model)) * attempt)


def training_jobs(config: dict, models: dict[str, Model]) -> list[tuple[str, Model, int, int | None, str]]:
    """(rule, model, budget, depth, method) of every training job of the selected grid: one per run of a joint
    method, one per member of a per-exit one (MM; ``depth`` = the member's layers; None = the whole model)."""
    grid = config["grids"][config["grid"]]
    jobs = []
    for _task, name, budget, method, _seed in itertools.product(
        grid["tasks"], grid["models"], grid["budgets"], grid["methods"], grid["seeds"]
    ):
        model = models[name]
        if methods.get(method).per_exit:
            jobs += [("train_member", model, budget, depth, method) for depth in model.exit_layers]
        else:
            jobs.append(("train", model, budget, None, method))
    return jobs


def describe_plan(config: dict, models: dict[str, Model], estimator: Estimator, concurrent_jobs: int) -> list[str]:
    """What the dry run says about the grid on a cluster: submissions, requests against the caps, scratch space."""
    grid = config["grids"][config["grid"]]
    runs = len(grid["tasks"]) * len(grid["models"]) * len(grid["budgets"]) * len(grid["methods"]) * len(grid["seeds"])
    jobs = training_jobs(config, models)
    n_train = sum(rule == "train" for rule, *_ in jobs)
    n_member = len(jobs) - n_train
    caps = estimator.caps
    lines = [
        f"sweet: on a cluster this grid submits {n_train + n_member + runs} jobs: {n_train} train, {n_member} "
        f"train_member (MM members; one array per submission round with the slurm profile), {runs} evaluate "
        f"(calibrate + evaluate of a run, grouped); data, splits, curves, tables and figures run on the submit host"
    ]
    longest = max(((estimator.train_estimate(m, b, d, method), rule, m, b) for rule, m, b, d, method in jobs),
                  default=None,
                  key=lambda item: item[0])
    if longest is not None:
        minutes, rule, model, budget = longest
        gpus = f"{estimator.gpus} GPU" if estimator.gpus else "no GPU"
        line = (f"sweet: longest training job ({rule}, {model.name}, budget {budget}, {gpus}): ~{minutes:.0f} min "
                f"estimated")
        if caps.max_runtime_minutes is not None:
            allocations = training_allocations(minutes, caps)
            line += f"; cap cluster.max_runtime_minutes={caps.max_runtime_minutes}"
            if allocations > 1:
                line += (f" → it runs as {allocations} allocations, each checkpointing on Slurm's warning signal "
                         f"and resuming (retries raised to {allocations + 1})")
        lines.append(line)
    if caps.max_mem_mb is not None:
        over = [m.name for _, m, _, d, _ in jobs if train_mem_mb(estimator.params(m, d)) > caps.max_mem_mb]
        if over:
            lines.append(f"sweet: warning: training {sorted(set(over))[0]} is estimated to need more host memory "
                         f"than cluster.max_mem_mb={caps.max_mem_mb}; jobs ask for the cap and may run out")
    checkpoints = [checkpoint_bytes(estimator.params(m, d)) for _, m, _, d, _ in jobs]
    if checkpoints:
        where = config.get("scratch_dir") or "results/runs"
        lines.append(f"sweet: training checkpoints need up to {human_bytes(peak_checkpoint_bytes(checkpoints, concurrent_jobs))} "
                     f"under {where}/ at the peak ({min(concurrent_jobs, len(checkpoints))} training job(s) at once, "
                     f"two checkpoints each while saving); they are deleted when a run finishes training")
    return lines


def retries_for_training(config: dict, models: dict[str, Model], estimator: Estimator) -> int | None:
    """Retries the training rules need so that the longest job can finish in capped allocations (None: the
    executor's own setting is enough). Two failures are still tolerated on top of the planned resumptions."""
    allocations = max((training_allocations(estimator.train_estimate(m, b, d, method), estimator.caps)
                       for _, m, b, d, method in training_jobs(config, models)), default=1)
    return allocations + 1 if allocations > 1 else None


def task_examples(config: dict, task: str) -> int:
    """Evaluation examples of a task (offline estimate), for the evaluation job's runtime."""
    return eval_shape(config["tasks"][task])[0]
