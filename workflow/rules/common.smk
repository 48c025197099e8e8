# Grid expansion, per-run paths and per-job resources, shared by every rule file.
#
# A run is (task, model, budget, method, seed); its files live under
#   results/runs/<task>/<model slug>/b<budget>/<method>/s<seed>/
# The output root is fixed to results/ and every path component comes from a validated name, so nothing the
# configuration says can make a rule write outside results/.

import json
import math

RUN = "results/runs/{task}/{model}/b{budget}/{method}/s{seed}"  # rules spell it out, as the linter prefers
GRID = config["grids"][config["grid"]]
SLUG_TO_MODEL = {m.slug: m for m in MODELS.values()}
KEEP = bool(config.get("keep_checkpoints", False))
GPUS = int(config.get("gpus", 0))
THREADS = int(config.get("threads", 1))
EVAL_BATCH = int(config.get("eval_batch_size", 64))


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
def backbone_arg(wildcards):
    """What `train --backbone` gets: the initialised folder, the local folder, or the hub id."""
    model = model_of(wildcards)
    if model.kind == "inline":
        return f"results/backbones/{model.slug}"
    return model.backbone


def backbone_input(wildcards):
    """Local and inline backbones are files the job depends on; hub ids are fetched by the job itself."""
    model = model_of(wildcards)
    return [] if model.kind == "hub" else [backbone_arg(wildcards)]


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


# ---------------------------------------------------------------------------------------------- resources
# Retries (the Slurm profile sets them) come back with more memory and time: `attempt` counts from 1.
def _params(wildcards, depth=None):
    model = model_of(wildcards)
    if model.arch is None:
        return 350_000_000  # unknown hub model: assume a large one
    return parameter_count(model.arch, depth)


def _member_depth(wildcards):
    return model_of(wildcards).exit_layers[int(wildcards.k) - 1] if "k" in wildcards.keys() else None


def train_mem_mb(wildcards, attempt):
    # fp32 weights, gradients and two Adam moments (16 bytes a parameter), plus activations and the runtime.
    return int((2000 + 24 * _params(wildcards, _member_depth(wildcards)) / 1e6) * attempt)


def train_runtime(wildcards, attempt):
    spec = merged_training(config, model_of(wildcards))
    params = _params(wildcards, _member_depth(wildcards))
    minutes = 15 + int(wildcards.budget) * float(spec.get("epochs", 2)) * params / 2e10
    if GPUS == 0 and params > 1e7:
        minutes *= 10  # a pretrained encoder on CPU
    return int(math.ceil(minutes * attempt))


def eval_mem_mb(wildcards, attempt):
    return int((2000 + 8 * _params(wildcards) / 1e6) * attempt)


def eval_runtime(wildcards, attempt):
    params = _params(wildcards)
    return int((20 + (200 if GPUS == 0 and params > 1e7 else 20)) * attempt)
