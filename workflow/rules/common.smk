# Grid expansion, per-run paths and per-job resources, shared by every rule file.
#
# A run is (task, model, budget, method, seed); its files live under
#   results/runs/<task>/<model slug>/b<budget>/<method>/s<seed>/
# Every path component comes from a validated name. Outputs live under results/, except the two places the user
# names on purpose: the hub cache (`hub_cache`) and the checkpoints' scratch root (`scratch_dir`).

import ast
import functools
import json
import re

RUN = "results/runs/{task}/{model}/b{budget}/{method}/s{seed}"  # rules spell it out, as the linter prefers
GRID = config["grids"][config["grid"]]
SLUG_TO_MODEL = {m.slug: m for m in MODELS.values()}
KEEP = bool(config.get("keep_checkpoints", False))
THREADS = int(config.get("threads", 1))
EVAL_BATCH = int(config.get("eval_batch_size", 64))


class Location:
    """A path a job is told where to read or keep things (hub cache, checkpoint scratch), not what to compute.

    Snakemake reruns a job whose params changed since its outputs were made, comparing the params it can record
    (plain Python values); values of other types are left out of that comparison. Wrapping a location keeps it
    out, so pointing `hub_cache` or `scratch_dir` somewhere else never retrains finished runs. Formats as the path.
    """

    def __init__(self, path):
        self.path = str(path)

    def __str__(self):
        return self.path

    def __format__(self, spec):
        return format(self.path, spec)


wildcard_constraints:
    task=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    budget=r"[1-9][0-9]*",
    method=r"ee|sweet|mm",
    seed=r"[0-9]+",
    k=r"[1-9][0-9]*",


def maybe_temp(path):
    """Trained weights are deleted once calibrated and evaluated, unless keep_checkpoints: true."""
    return path if KEEP else temp(path)


def run_of(wildcards):
    """The run folder of a job's wildcards."""
    return RUN.format(**{k: wildcards[k] for k in ("task", "model", "budget", "method", "seed")})


def model_of(wildcards):
    return SLUG_TO_MODEL[wildcards.model]


def run_dirs():
    """Every run of the selected grid, in a stable order."""
    return [
        RUN.format(task=t, model=MODELS[m].slug, budget=b, method=x, seed=s)
        for t in GRID["tasks"]
        for m in GRID["models"]
        for b in GRID["budgets"]
        for x in GRID["methods"]
        for s in GRID["seeds"]
    ]


def run_files(name, methods=("ee", "sweet", "mm")):
    return [f"{d}/{name}" for d in run_dirs() if d.split("/")[-2] in methods]


def task_inputs(wildcards):
    """A local task's files are inputs, so editing them re-prepares the task."""
    spec = config["tasks"][wildcards.task]
    return [spec["train"], spec["eval"]] if spec["source"] == "local" else []


def task_dir(wildcards):
    return f"results/data/{wildcards.task}"


# ---------------------------------------------------------------------------------------------- backbones
HUB_CACHE = str(Path(config.get("hub_cache", "results/hub-cache")).expanduser())


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
        return [ancient(f"results/backbones/{model.slug}.fetched.json")]
    return [backbone_arg(wildcards)]


def slugs_of(kind):
    """A wildcard pattern matching the slugs of one kind of model only (never matches when there are none)."""
    slugs = [re.escape(m.slug) for m in MODELS.values() if m.kind == kind]
    return "|".join(slugs) if slugs else "(?!x)x"


def hub_models():
    return [MODELS[m] for m in GRID["models"] if MODELS[m].kind == "hub"]


def train_spec(wildcards):
    """The run's training options as canonical JSON: a changed option reruns exactly the affected jobs."""
    return json.dumps(merged_training(config, model_of(wildcards)), sort_keys=True)


def exit_layers_arg(wildcards):
    return ",".join(str(k) for k in model_of(wildcards).exit_layers)


def pooling_arg(wildcards):
    """`--pooling P` where the model sets `pooling:`, else nothing (the backbone's default: cls, or last for decoders)."""
    pooling = model_of(wildcards).pooling
    return f"--pooling {pooling}" if pooling else ""


def model_inputs(wildcards):
    """The trained model a run's calibration and evaluation read: one folder, or MM's members + config."""
    run = run_of(wildcards)
    if wildcards.method != "mm":
        return [f"{run}/model"]
    members = [f"{run}/model/member_{k}" for k in range(1, len(model_of(wildcards).exit_layers) + 1)]
    return [f"{run}/model/sweet_config.json", *members]


def member_dirs(wildcards):
    return model_inputs(wildcards)[1:]


def model_dir(wildcards):
    return f"{run_of(wildcards)}/model"


def checkpoint_dir(wildcards):
    """Where a training job keeps its checkpoints (resumed from after a kill): beside the model, or under
    scratch_dir when results/ must not hold them."""
    name = f"member_{wildcards.k}.checkpoints" if "k" in wildcards.keys() else "model.checkpoints"
    if config.get("scratch_dir"):
        run = run_of(wildcards).removeprefix("results/")
        return Location(f"{Path(config['scratch_dir']).expanduser()}/{run}/{name}")
    return Location(f"{run_of(wildcards)}/{'model/' if 'k' in wildcards.keys() else ''}{name}")


def meta_args(wildcards):
    """Identity columns of a run's CSVs; the model column holds the config name, not the folder slug."""
    meta = {
        "task": wildcards.task,
        "model": model_of(wildcards).name,
        "budget": wildcards.budget,
        "method": wildcards.method,
        "seed": wildcards.seed,
    }
    return " ".join(f"{k}={v}" for k, v in meta.items())


# ---------------------------------------------------------------------------------------------- offline jobs
# Compute jobs (training, calibration, evaluation) never touch the network: compute nodes often cannot reach it,
# and a job that tries would hang or fail after its allocation started. Everything they read was fetched or
# prepared by local rules on the submit host.
OFFLINE = "env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1"


# ---------------------------------------------------------------------------------------------- resources
# What each compute job asks the cluster for (sweet/cluster.py): runtime and memory estimated from the model's
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
_MEMBERS = [(m, b, d) for rule, m, b, d in training_jobs(config, MODELS) if rule == "train_member"]


@functools.cache
def _member_request(attempt):
    """(runtime, mem_mb) every MM member asks for on this attempt: the same for all, so computed once."""
    return (max(ESTIMATE.train_runtime(m, b, d, attempt) for m, b, d in _MEMBERS),
            max(ESTIMATE.train_mem_mb(m, d, attempt, array=True) for m, _, d in _MEMBERS))


def train_runtime(wildcards, attempt):
    if "k" in wildcards.keys():
        return _member_request(attempt)[0]
    return ESTIMATE.train_runtime(model_of(wildcards), int(wildcards.budget), None, attempt)


def train_mem_mb(wildcards, attempt):
    if "k" in wildcards.keys():
        return _member_request(attempt)[1]
    return ESTIMATE.train_mem_mb(model_of(wildcards), None, attempt)


def calibrate_runtime(wildcards, attempt):
    return ESTIMATE.forward_runtime(model_of(wildcards), int(config.get("calibration_size", 1000)), attempt)


def evaluate_runtime(wildcards, attempt):
    return ESTIMATE.forward_runtime(model_of(wildcards), task_examples(config, wildcards.task), attempt)


def forward_mem_mb(wildcards, attempt):
    return ESTIMATE.forward_mem_mb(model_of(wildcards), attempt)
