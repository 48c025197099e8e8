# Grid expansion, per-run paths and per-job resources, shared by every rule file.
#
# The run layout is sweet.plan.layout's (its docstring has the map): a run's training lives in
#   results/runs/<task>/<model slug>/b<budget>/<method>-<run id>/s<seed>/
# and its calibration, evaluation and curves in the subfolder named by the calibration settings (cal-pool<N> or
# cal-eval). The run id is a digest of everything that changes the run's numbers, so two grids that ask for the
# same run share its folder and two that differ never do. Every path component comes from a validated name.
# Outputs live under results/, except the two places the user names on purpose: the hub cache (`hub_cache`) and
# the checkpoints' scratch root (`scratch_dir`).

import ast
import functools
import json
import re
import shlex

from sweet import methods as method_registry  # `methods` is run_files' argument
from sweet.plan import layout  # layout.<FILE>: the names of the files inside a run
from sweet.plan.layout import (
    CALIBRATED_PATTERN,
    DATA_PATTERN,
    RUN_PATTERN,
    benchmark_pattern,
    data_dir,
    grid_runs,
    log_pattern,
)

RUN = RUN_PATTERN  # results/runs/{task}/{model}/b{budget}/{method}-{run_id}/s{seed}
CAL = CALIBRATED_PATTERN  # RUN/{calibration}
GRID = config["grids"][config["grid"]]
SLUG_TO_MODEL = {m.slug: m for m in MODELS.values()}
KEEP = bool(config.get("keep_checkpoints", False))
THREADS = int(config.get("threads", 1))
EVAL_BATCH = int(config.get("eval_batch_size", 64))
# The methods' names as wildcard patterns (sweet.methods): every method, the joint ones (one `train` job per
# run), the per-exit ones (MM: one `train_member` job per exit, then `combine`).
METHOD_PATTERN = "|".join(re.escape(m) for m in method_registry.names())
JOINT_PATTERN = "|".join(re.escape(m) for m in method_registry.names("joint")) or "(?!x)x"
PER_EXIT_PATTERN = "|".join(re.escape(m) for m in method_registry.names("per-exit")) or "(?!x)x"


class Untracked:
    """A value a job is given that says where to read or keep things, or how often to checkpoint, not what to
    compute (hub cache, checkpoint scratch, the training options' operational part).

    Snakemake reruns a job whose params changed since its outputs were made, comparing the params it can record
    (plain Python values); values of other types are left out of that comparison. Wrapping a value keeps it out,
    so pointing `hub_cache` or `scratch_dir` elsewhere, or a new `save_steps`, never retrains finished runs (what a
    run computes is its folder's run id). Formats as the value.
    """

    def __init__(self, value):
        self.value = str(value)

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


wildcard_constraints:
    task=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    budget=r"[1-9][0-9]*",
    method=METHOD_PATTERN,
    run_id=r"[0-9a-f]{8}",
    seed=r"[0-9]+",
    calibration=r"cal-(pool[1-9][0-9]*|eval)",
    k=r"[1-9][0-9]*",


def maybe_temp(path):
    """Trained weights are deleted once calibrated and evaluated, unless keep_checkpoints: true."""
    return path if KEEP else temp(path)


@functools.cache
def grid_run_index():
    """The selected grid's runs by their wildcards (computed once, after the GPU count is known)."""
    return {(r.task, r.model_slug, str(r.budget), r.method, r.run_id, str(r.seed)): r
            for r in grid_runs(config, config["grid"], MODELS, gpus=JOB_GPUS)}


def run_of(wildcards):
    """The run (sweet.plan.layout.Run) a job's wildcards name."""
    key = tuple(str(wildcards[k]) for k in ("task", "model", "budget", "method", "run_id", "seed"))
    try:
        return grid_run_index()[key]
    except KeyError:
        raise ValueError(f"{RUN.format(**dict(zip(('task', 'model', 'budget', 'method', 'run_id', 'seed'), key)))}: "
                         f"not a run of grid '{config['grid']}' (its settings differ); name its grid with "
                         "--config grid=NAME") from None


def model_of(wildcards):
    return SLUG_TO_MODEL[wildcards.model]


def run_dirs():
    """Every run of the selected grid, in a stable order."""
    return list(grid_run_index().values())


def run_files(name, methods=method_registry.names(), calibrated=True):
    """A file of every run of the grid (of ``methods``: every method by default): from the calibration subfolder,
    or (calibrated=False) from the training's."""
    return [f"{r.calibrated_dir if calibrated else r.dir}/{name}" for r in run_dirs() if r.method in methods]


from sweet.tasks import TASK_SOURCES  # the task sources' registry: standard library only


def task_inputs(wildcards):
    """A task's local files (its source's `files`: sweet.tasks) are inputs, so editing them re-prepares it."""
    spec = config["tasks"][wildcards.task]
    return [spec[key] for key in TASK_SOURCES[spec["source"]].files if key in spec]


def task_dir(wildcards):
    return data_dir(wildcards.task)


def run_record(wildcards):
    """run.json: the run's identity (what its id digests), written before it trains."""
    return json.dumps(run_of(wildcards).record(), sort_keys=True)


def calibration_args(wildcards):
    """`--calibrate-on … --calibration-size …` from the calibration subfolder's name (it is the settings)."""
    if wildcards.calibration == "cal-eval":
        return f"--calibrate-on eval --calibration-size {int(config.get('calibration_size', 1000))}"
    return f"--calibrate-on pool --calibration-size {wildcards.calibration.removeprefix('cal-pool')}"


# ---------------------------------------------------------------------------------------------- backbones
HUB_CACHE = str(Path(config.get("hub_cache", "results/hub-cache")).expanduser())


def revision_arg(wildcards):
    """`--revision R` for a hub backbone pinned to a branch, tag or commit (else main)."""
    model = model_of(wildcards)
    return f"--revision {shlex.quote(model.revision)}" if model.kind == "hub" and model.revision else ""


def backbone_arg(wildcards):
    """What `train --backbone` gets: the initialised folder, the local folder, or the hub id (read from the cache)."""
    model = model_of(wildcards)
    if model.kind == "inline":
        return f"results/backbones/{model.slug}"
    return model.backbone


def backbone_input(wildcards):
    """The files a job needs before it runs: the initialised or local folder, or the record of a hub backbone
    fetched into the cache on the submit host (the job itself never downloads)."""
    model = model_of(wildcards)
    if model.kind == "hub":
        # ancient: fetching again (into a new hub_cache, say) gives the same backbone revision or records a new
        # one in train_metrics.json; it orders the jobs but never retrains finished runs by itself.
        return [ancient(fetched_record(model))]
    return [backbone_arg(wildcards)]


def fetch_name(model):
    """A hub backbone at its configured revision, as a file name: <slug>, or <slug>@<revision> when pinned."""
    revision = model.revision or "main"
    return model.slug if revision == "main" else f"{model.slug}@{re.sub(r'[^A-Za-z0-9._-]', '_', revision)}"


def fetched_record(model):
    """What `fetch_backbone` writes for a hub backbone at its configured revision (the commit it resolved to)."""
    return f"results/backbones/{fetch_name(model)}.fetched.json"


FETCHED = {fetch_name(m): m for m in MODELS.values() if m.kind == "hub"}


def slugs_of(kind):
    """A wildcard pattern matching the slugs of one kind of model only (never matches when there are none)."""
    slugs = [re.escape(m.slug) for m in MODELS.values() if m.kind == kind]
    return "|".join(slugs) if slugs else "(?!x)x"


def hub_models():
    return [MODELS[m] for m in GRID["models"] if MODELS[m].kind == "hub"]


def train_spec(wildcards):
    """The run's training options as JSON. Untracked: what changes a run's numbers is in its run id (its folder),
    so what is left to change here is operational (save_steps, precision on a CPU) and retrains nothing."""
    return Untracked(json.dumps(merged_training(config, model_of(wildcards)), sort_keys=True))


def exit_layers_arg(wildcards):
    return ",".join(str(k) for k in model_of(wildcards).exit_layers)


def pooling_arg(wildcards):
    """`--pooling P` where the model sets `pooling:`, else nothing (the backbone's default: cls, or last for decoders)."""
    pooling = model_of(wildcards).pooling
    return f"--pooling {pooling}" if pooling else ""


def model_inputs(wildcards):
    """The trained model a run's calibration and evaluation read: one folder, or MM's members + config."""
    run = run_of(wildcards).dir
    if not method_registry.get(wildcards.method).per_exit:
        return [f"{run}/{layout.MODEL}"]
    members = [f"{run}/{layout.MEMBER_MODEL.format(k=k)}" for k in range(1, len(model_of(wildcards).exit_layers) + 1)]
    return [f"{run}/{layout.SWEET_CONFIG}", *members]


def member_dirs(wildcards):
    return model_inputs(wildcards)[1:]


def model_dir(wildcards):
    return f"{run_of(wildcards).dir}/{layout.MODEL}"


def checkpoint_dir(wildcards):
    """Where a training job keeps its checkpoints (resumed from after a kill): beside the model, or under
    scratch_dir when results/ must not hold them."""
    inside = layout.MEMBER_CHECKPOINTS.format(k=wildcards.k) if "k" in wildcards.keys() else layout.MODEL_CHECKPOINTS
    run = run_of(wildcards).dir
    if config.get("scratch_dir"):
        return Untracked(f"{Path(config['scratch_dir']).expanduser()}/{run.removeprefix('results/')}/{Path(inside).name}")
    return Untracked(f"{run}/{inside}")


def meta_args(wildcards):
    """Identity columns of a run's CSVs (sweet.plan.layout.Run.meta: the model column holds the config name, not the
    folder slug; run_id, the non-default settings and, for calibrated files, the calibration)."""
    meta = run_of(wildcards).meta()
    if "calibration" not in wildcards.keys():
        meta.pop("calibration")
    return " ".join(shlex.quote(f"{k}={v}") for k, v in meta.items())


# ---------------------------------------------------------------------------------------------- offline jobs
# Compute jobs (training, calibration, evaluation) never touch the network: compute nodes often cannot reach it,
# and a job that tries would hang or fail after its allocation started. Everything they read was fetched or
# prepared by local rules on the submit host.
OFFLINE = "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"


# ---------------------------------------------------------------------------------------------- resources
# What each compute job asks the cluster for (sweet/plan/cluster.py): runtime and memory estimated from the model's
# size and the run's budget, grown with each retry (`attempt` counts from 1), never above the partition's caps
# (config `cluster:`). GPUs: as the executor profile asks (slurm/config.yaml), unless `gpus:` says otherwise.
def _profile_default(name):
    """A default resource set by the profile or --default-resources, as a Python value (None if unset)."""
    defaults = workflow.resource_settings.default_resources
    if defaults is None or name not in defaults:
        return None
    raw = defaults[name].raw
    try:
        return ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        return raw


GPUS_BY_GRES = "gpu" in str(_profile_default("gres") or "")
if config.get("gpus") is None:
    GPU_RESOURCES = {}  # as the profile says
    JOB_GPUS = int(_profile_default("gpu") or 0) or (1 if GPUS_BY_GRES else 0)
elif int(config["gpus"]) == 0:
    # No GPU even though the profile asks for one (a CPU-only partition): blank every way it could ask.
    GPU_RESOURCES = {"gpu": 0, "gres": "", "gpu_model": ""}
    JOB_GPUS = 0
else:
    if GPUS_BY_GRES:
        print(f"error: config: gpus: {config['gpus']} with a profile that asks for GPUs by gres: set the count in "
              "the profile's gres line (e.g. gres=gpu:2) and leave gpus unset", file=sys.stderr)
        sys.exit(1)
    GPU_RESOURCES = {"gpu": int(config["gpus"])}
    JOB_GPUS = int(config["gpus"])

ESTIMATE = Estimator(config, gpus=JOB_GPUS, threads=THREADS)
# Slurm warns a training job this long before its time limit (SIGTERM; scancel and pre-emption send the same):
# the job checkpoints at its next logging step and exits, and the retry resumes. Other executors ignore it.
SIGNAL = f"--signal=TERM@{60 * ESTIMATE.caps.signal_minutes}"
TRAIN_SLURM_EXTRA = " ".join(x for x in (_profile_default("slurm_extra"), SIGNAL) if x)
TRAIN_RETRIES = retries_for_training(config, MODELS, ESTIMATE)


# MM members go out as job arrays (slurm profile), and an array is one request for all its tasks: every member
# of the grid asks for what its largest member needs (the full-depth member of the largest model).
_MEMBERS = [(m, b, d, method) for rule, m, b, d, method in training_jobs(config, MODELS) if rule == "train_member"]


@functools.cache
def _member_request(attempt):
    """(runtime, mem_mb) every MM member asks for on this attempt: the same for all, so computed once."""
    return (max(ESTIMATE.train_runtime(m, b, d, attempt, method) for m, b, d, method in _MEMBERS),
            max(ESTIMATE.train_mem_mb(m, d, attempt, array=True) for m, _, d, _ in _MEMBERS))


def train_runtime(wildcards, attempt):
    if "k" in wildcards.keys():
        return _member_request(attempt)[0]
    return ESTIMATE.train_runtime(model_of(wildcards), int(wildcards.budget), None, attempt, wildcards.method)


def train_mem_mb(wildcards, attempt):
    if "k" in wildcards.keys():
        return _member_request(attempt)[1]
    return ESTIMATE.train_mem_mb(model_of(wildcards), None, attempt)


def calibrate_runtime(wildcards, attempt):
    return ESTIMATE.forward_runtime(model_of(wildcards), int(config.get("calibration_size", 1000)), attempt)


def evaluate_runtime(wildcards, attempt):
    """Calibrate, evaluate (and, with latency: on, latency and operating_points) go out as one job, which asks for
    the sum of its members' runtimes: each asks for at most its share of the cap (evaluate.smk)."""
    return ESTIMATE.forward_runtime(model_of(wildcards), task_examples(config, wildcards.task), attempt,
                                    share=EVALUATE_GROUP_JOBS)


def operating_points_runtime(wildcards, attempt):
    """Seconds of pandas on stored logits; a runtime of its own only matters inside the evaluate group."""
    return ESTIMATE.caps.runtime(5 * attempt, share=EVALUATE_GROUP_JOBS)


def forward_mem_mb(wildcards, attempt):
    return ESTIMATE.forward_mem_mb(model_of(wildcards), attempt)


# --------------------------------------------------------------------------------------- measured latency
def latency_settings(grid=None):
    """The grid's `latency:` (grids.<grid>.latency, else the top-level latency:); None: off (the default)."""
    grid = grid or RUN_GRID
    return (config["grids"][grid].get("latency") or config.get("latency")) or None


def latency_model_inputs(wildcards):
    """The trained model latency times; refuses a run that finished and deleted its model (keep_checkpoints: false):
    timing it would retrain it, which no setting of the measurement should do silently."""
    model = model_inputs(wildcards)
    calibrated = run_of(wildcards).calibrated_dir
    if (not Path(model[0]).exists() and Path(f"{calibrated}/{layout.LOGITS}").is_file()
            and not Path(f"{calibrated}/{layout.LATENCY}").is_file()):
        print(f"error: latency: run {calibrated} finished and its trained model was deleted (keep_checkpoints: "
              "false), so timing it would retrain it; set latency: before its runs train (each model is then timed "
              "before it is deleted), use keep_checkpoints: true, or delete the run folder to retrain it on purpose",
              file=sys.stderr)
        sys.exit(1)
    return model


def latency_files():
    """Every run's latency.csv when the grid being run asks for latency; none otherwise."""
    return run_files(layout.LATENCY) if latency_settings() else []
