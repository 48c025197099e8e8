"""Where a run lives, and what makes it that run: the one definition of the results/runs/ layout.

A run's folder is named by what it computes, not by the grid that asked for it::

    results/runs/<task>/<model folder>/b<budget>/<method>-<run id>/s<seed>/     training: splits.json, run.json,
                                                                               model/, train_metrics.json, …
                                                 …/s<seed>/cal-<pool N | eval>/  calibration and evaluation:
                                                                               temperatures.json, logits.npz,
                                                                               curves.csv, individual_exits.csv

The run id is a short digest of the run's *identity* (:func:`run_identity`): the task and its data, the backbone
and its revision, the exit layers and pooling, the method (and its options, for a method of sweet.methods that has
some), the budget and seed, and the training options the method reads. Two grids asking for the same identity
share the folder (trained once); two that differ in any of these never share one. Operational settings (``save_steps``, ``report_to``, ``threads``, ``hub_cache``, ``scratch_dir``,
``keep_checkpoints``, precision on a CPU) change no number and are not part of it. Calibration is not training:
its settings name the subfolder, so a new ``calibration_size`` or ``calibrate_on`` recalibrates and re-evaluates
the same trained model.

Standard library only (plus ``sweet.plan.settings``): the Snakefile and the reporting both plan with it, and planning
must stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweet import methods
from sweet.backbones import BACKBONES, resolve_pooling
from sweet.plan.settings import (
    RESULTS,
    SYNTHETIC_DEFAULTS,
    TRAINING_DEFAULTS,
    Model,
    merged_method_options,
    merged_training,
)

RUNS = RESULTS + "/runs"
RUN_RELATIVE = "{task}/{model}/b{budget}/{method}-{run_id}/s{seed}"  # below results/runs/ and results/logs/<step>/
RUN_PATTERN = RUNS + "/" + RUN_RELATIVE
CALIBRATED_RELATIVE = RUN_RELATIVE + "/{calibration}"
CALIBRATED_PATTERN = RUNS + "/" + CALIBRATED_RELATIVE
# The layout before run ids (python -m sweet migrate-runs moves its runs): no run id, calibration in the folder.
LEGACY_RELATIVE = "{task}/{model}/b{budget}/{method}/s{seed}"
LOGS = RESULTS + "/logs"  # results/logs/<step>/<the run folder below results/runs/>.log
BENCHMARKS = RESULTS + "/benchmarks"  # the same with .tsv: Snakemake's per-job benchmarks
DATA_PATTERN = RESULTS + "/data/{task}"  # a task's prepared data (python -m sweet prepare), read by every run of it
MEMBER_LOG = "member_{k}"  # a per-exit method's (MM's) member k logs to <the run's log folder>/member_<k>.log
CALIBRATED_PREFIX = "cal-"  # a calibrated folder's name: cal-pool<N> or cal-eval (calibration_key)
# A training folder's path below results/runs/, read back (both layouts: <method>-<run id> and <method> alone).
_RUN_PATH = re.compile(r"^(?P<task>[^/]+)/(?P<model>[^/]+)/b(?P<budget>\d+)/(?P<method>[a-z0-9_]+)"
                       r"(-(?P<run_id>[0-9a-f]{8}))?/s(?P<seed>\d+)$")
# ---- The files inside a run: the one place their names are spelled. [T]: in the training folder (RUN_PATTERN),
# [C]: in the calibrated folder (CALIBRATED_PATTERN); run_file(folder, NAME) finds a [T] file from either folder.
# (A new file: add it here, say who writes and reads it, and where it sits.)
RUN_JSON = "run.json"  # [T] the run's identity: rule record (common.smk) writes it before it trains; the
#                        reporting (record_mismatch), `sweet train` (method options) and migrate-runs read it
SPLITS = "splits.json"  # [T] the seeded training subset: `sweet split` writes it; train, calibrate, evaluate,
#                         migrate-runs read it (before run ids it also held the calibration split)
MODEL = "model"  # [T] the trained model folder (`sweet train --out`); calibrate, evaluate and export read it
MEMBER_MODEL = MODEL + "/member_{k}"  # [T] a per-exit method's (MM's) member k (`sweet train --member`)
# A training job's resumable checkpoints sit beside the model it writes, named after it (`sweet train`'s default
# --work-dir; the rules' checkpoint_dir, which moves them under scratch_dir by their last part); export skips them.
CHECKPOINTS_SUFFIX = ".checkpoints"
MODEL_CHECKPOINTS = MODEL + CHECKPOINTS_SUFFIX  # [T] EE/SWEET and the joint methods
MEMBER_CHECKPOINTS = MEMBER_MODEL + CHECKPOINTS_SUFFIX  # [T] member k's
SWEET_CONFIG = MODEL + "/sweet_config.json"  # [T] MM's members assembled (`sweet assemble`); calibrate, evaluate read it
TRAIN_METRICS = "train_metrics.json"  # [T] `sweet train`'s metrics (timing, loss); reporting and migrate-runs read it
MEMBERS = "members"  # [T] MM's per-member training metrics folder
MEMBER_METRICS = MEMBERS + "/member_{k}.json"  # [T] member k's train metrics (`sweet train --member`); assemble reads
GRADIENT_CONFLICT = "gradient_conflict.csv"  # [T] joint methods' gradient-conflict probe (`sweet train`); the tables
CALIBRATION_SPLIT = "calibration.json"  # [C] the calibration split's ids (`sweet split --calibration-out`);
#                                        calibrate reads it (migrate-runs writes it from an old splits.json)
TEMPERATURES = "temperatures.json"  # [C] per-exit temperatures (`sweet calibrate`); evaluate and export read them
CALIBRATION_LOGITS = "calibration_logits.npz"  # [C] the calibration split's per-exit logits (`sweet calibrate`, the
#                                                format of LOGITS); operating points and risk control read them
LOGITS = "logits.npz"  # [C] the evaluation split's per-exit logits (`sweet evaluate`); curves, policies, export read
CURVES = "curves.csv"  # [C] the speed/accuracy curves (`sweet curves`); the tables and figures read them
EXITS = "individual_exits.csv"  # [C] each exit's own accuracy (`sweet curves`); the tables read it
OPERATING_POINTS = "operating_points.csv"  # [C] held-out operating points (`sweet operating-points`); tables, export
RISK_CONTROL = "risk_control.csv"  # [C] risk-controlled thresholds (`sweet operating-points`); tables, export
LATENCY = "latency.csv"  # [C] measured latency of the run's policies (`sweet latency`, only with config latency:);
#                          the tables read it
IDENTITY_VERSION = 1  # bump when the meaning of an identity field changes, so no old folder is read as new
# Training options that change no number of a run (a checkpoint interval, where the training curves are also
# logged to): never part of its identity.
OPERATIONAL_TRAINING = ("save_steps", "report_to")
# Options only some methods read (the registry's ``Method.reads``); for the others they are not part of the
# identity (nothing to retrain). E.g. gradient_conflict_every: EE only (the probe restores the RNG: it adds a CSV,
# it changes no weight); shared_pooler: every joint method (MM members are stock classifiers with their own pooler).
METHOD_TRAINING_OPTIONS: dict[str, tuple[str, ...]] = {
    option: tuple(m.name for m in methods.METHODS.values() if option in m.reads)
    for option in dict.fromkeys(o for m in methods.METHODS.values() for o in m.reads)
}
# Architectures whose exit heads changed when exits started to be built as the stock classifier's head (DeBERTa's
# ContextPooler, RoBERTa's and ELECTRA's classification heads): their EE/SWEET runs of the layout before run ids
# used BERT's tanh pooler instead, so they are not the runs the configuration now asks for.
HEAD_CHANGED_ARCHITECTURES = ("roberta", "electra", "deberta", "deberta-v2")


@dataclass(frozen=True)
class Run:
    """One run of a grid: where its files live and what it computes."""

    task: str
    model: str  # the configuration's name
    model_slug: str  # its folder name
    budget: int
    method: str
    seed: int
    run_id: str
    calibration: str  # the calibration subfolder: cal-pool<N> or cal-eval
    identity: dict[str, Any] = field(compare=False, hash=False, repr=False)
    settings: str = field(default="", compare=False)  # training settings that differ from the defaults

    @property
    def dir(self) -> str:
        return RUN_PATTERN.format(**self.wildcards())

    @property
    def calibrated_dir(self) -> str:
        """Where the run's calibration, evaluation and curves live."""
        return f"{self.dir}/{self.calibration}"

    @property
    def legacy_dir(self) -> str:
        """Where the layout before run ids kept this run (``python -m sweet migrate-runs`` moves it)."""
        return f"{RUNS}/" + LEGACY_RELATIVE.format(**self.wildcards())

    def wildcards(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model_slug, "budget": self.budget, "method": self.method,
                "run_id": self.run_id, "seed": self.seed, "calibration": self.calibration}

    def meta(self) -> dict[str, Any]:
        """The identity columns every per-run CSV starts with (the model column holds the configuration's name)."""
        return {"task": self.task, "model": self.model, "budget": self.budget, "method": self.method,
                "seed": self.seed, "run_id": self.run_id, "settings": self.settings,
                "calibration": self.calibration}

    def record(self) -> dict[str, Any]:
        """What ``run.json`` holds: the training's identity (not the calibration: one training, many of those)."""
        meta = {k: v for k, v in self.meta().items() if k != "calibration"}
        return {**meta, "identity": self.identity}


# ------------------------------------------------------------------------------------------------ identity
def run_identity(
    config: dict, model: Model, task: str, method: str, budget: int, seed: int,
    grid: str | None = None, gpus: int = 0, base: str | Path = ".",
) -> dict[str, Any]:
    """Everything that changes a trained run's numbers, as plain JSON values.

    A method with options (sweet.methods) adds them, resolved, as ``method_options``; a method without any adds
    no key, so the ids of EE, SWEET and MM runs are those they had before methods had options."""
    identity: dict[str, Any] = {
        "version": IDENTITY_VERSION,
        "task": task_identity(config["tasks"][task], Path(base)),
        "backbone": backbone_identity(model, Path(base)),
        "exit_layers": [int(k) for k in model.exit_layers],
        "pooling": _pooling(model),
        "method": method,
        "training": training_identity(merged_training(config, model, grid), method, gpus),
        "budget": int(budget),
        "seed": int(seed),
    }
    options = merged_method_options(config, method, grid)
    if options:
        identity["method_options"] = options
    return identity


def run_id(identity: dict[str, Any]) -> str:
    """8 hex digits of the SHA-256 of the identity's canonical JSON."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def training_identity(options: dict[str, Any], method: str, gpus: int = 0) -> dict[str, Any]:
    """The training options that change this method's numbers, completed with the defaults and typed as them
    (``epochs: 2`` and ``epochs: 2.0`` are one run)."""
    values = {**TRAINING_DEFAULTS, **options}
    identity = {}
    for name, default in TRAINING_DEFAULTS.items():
        if name in OPERATIONAL_TRAINING or method not in METHOD_TRAINING_OPTIONS.get(name, (method,)):
            continue
        identity[name] = _as_type_of(default, values[name])
    # Mixed precision runs on a GPU only (sweet.train): on a CPU job every precision trains in fp32.
    if gpus <= 0 or identity["precision"] == "fp32":
        identity.pop("precision")
    return identity


def non_default_settings(identity: dict[str, Any]) -> str:
    """The training options, method options (``separation=0.25``) and a pinned revision that differ from the
    defaults, as ``k=v;k=v``."""
    training = identity["training"]
    parts = [f"{k}={_text(v)}" for k, v in training.items() if k in TRAINING_DEFAULTS and TRAINING_DEFAULTS[k] != v]
    options = identity.get("method_options") or {}
    if options:
        defaults = methods.get(identity["method"]).options
        parts += [f"{k}={v:g}" for k, v in options.items() if k in defaults and defaults[k].default != v]
    revision = identity["backbone"].get("revision")
    if revision not in (None, "main"):
        parts.append(f"revision={revision}")
    return ";".join(parts)


def task_identity(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """A task's definition; for a local task the content of its files (moving them changes nothing)."""
    spec = dict(spec)
    if spec["source"] == "synthetic":
        return {**SYNTHETIC_DEFAULTS, **spec}
    if spec["source"] == "local":
        for part in ("train", "eval"):
            spec[part] = {"sha256": _file_digest(base / spec[part])}
    return spec


def backbone_identity(model: Model, base: Path) -> dict[str, Any]:
    """A hub id at its revision, an inline definition, or a local folder's config and files."""
    if model.kind == "hub":
        return {"hub": model.backbone, "revision": model.revision or "main"}
    if model.kind == "inline":
        return {"inline": model.backbone}
    folder = base / Path(str(model.backbone)).expanduser()
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    config = folder / "config.json"
    return {"local": {"config_sha256": _file_digest(config) if config.is_file() else None, "files": files}}


def calibration_key(config: dict) -> str:
    """The calibration subfolder's name: where the temperatures were fitted, and on how many examples."""
    if config.get("calibrate_on", "pool") == "eval":
        return "cal-eval"
    return f"cal-pool{int(config.get('calibration_size', 1000))}"


# ------------------------------------------------------------------------------------------------ grids
def grid_runs(
    config: dict, grid: str, models: dict[str, Model], gpus: int = 0, base: str | Path = ".",
) -> list[Run]:
    """The runs a grid names, in the workflow's order (task, model, budget, method, seed); ``models``: the
    configuration's, resolved (what sweet.plan.config.validate returns)."""
    axes = config["grids"][grid]
    calibration = calibration_key(config)
    runs = []
    for task in axes["tasks"]:
        for name in axes["models"]:
            model = models[name]
            for budget in axes["budgets"]:
                for method in axes["methods"]:
                    for seed in axes["seeds"]:
                        identity = run_identity(config, model, task, method, budget, seed, grid, gpus, base)
                        runs.append(Run(task, name, model.slug, int(budget), method, int(seed), run_id(identity),
                                        calibration, identity, non_default_settings(identity)))
    return runs


def grid_spec(config: dict, grid: str, models: dict[str, Model], gpus: int = 0) -> dict[str, Any]:
    """What a grid's tables and report record about it: its axes, per model the exits and training options, and
    its runs (folder and run id: the reporting reads exactly these, and checks each folder's recorded id)."""
    axes = config["grids"][grid]
    options = {m: merged_method_options(config, m, grid) for m in axes["methods"] if methods.get(m).options}
    return {
        "name": grid,
        **{key: list(axes[key]) for key in ("tasks", "models", "budgets", "methods", "seeds")},
        "exit_layers": {m: list(models[m].exit_layers) for m in axes["models"]},
        "training": {m: merged_training(config, models[m], grid) for m in axes["models"]},
        "calibrate_on": config.get("calibrate_on", "pool"),
        "calibration_size": config.get("calibration_size", 1000),
        "revisions": {m: models[m].revision or "main" for m in axes["models"] if models[m].kind == "hub"},
        "runs": [{"dir": r.dir, "calibrated_dir": r.calibrated_dir, "run_id": r.run_id, "settings": r.settings}
                 for r in grid_runs(config, grid, models, gpus)],
        # The options of the grid's methods that have some (e.g. sep's separation), for their labels; no key when
        # none has any, so a grid of EE, SWEET and MM records what it recorded before methods had options.
        **({"method_options": options} if options else {}),
    }


# ------------------------------------------------------------------------------------------------ paths
def data_dir(task: str) -> str:
    """Where a task's prepared data lives."""
    return DATA_PATTERN.format(task=task)


def log_pattern(step: str, calibrated: bool = False, member: bool = False, suffix: str = ".log",
                root: str = LOGS) -> str:
    """Where a step of a run logs, with the run's wildcards: ``results/logs/<step>/<the run folder below
    results/runs/>.log``, the calibrated folder's for a calibrated step, ``…/member_<k>.log`` for a member's
    training. ``suffix=".tsv", root=BENCHMARKS``: where Snakemake writes the job's benchmark."""
    relative = CALIBRATED_RELATIVE if calibrated else RUN_RELATIVE
    if member:
        relative = f"{relative}/{MEMBER_LOG}"
    return f"{root}/{step}/{relative}{suffix}"


def benchmark_pattern(step: str, calibrated: bool = False, member: bool = False) -> str:
    return log_pattern(step, calibrated, member, ".tsv", BENCHMARKS)


def tracking_dir(out: str | Path, member: int | None = None) -> Path:
    """Where a trained model's tracking logs go: ``tracking/`` in the run folder, beside ``model/`` (MM member k:
    ``tracking/member_<k>/``). Not the checkpoint folder: that is removed once training ends (and may be on
    scratch); ``model/`` itself may be deleted once evaluated."""
    out = Path(out)
    if member is None:
        return out.parent / "tracking"
    return out.parent.parent / "tracking" / f"member_{member}"


def is_calibrated(folder: str | Path) -> bool:
    """Whether ``folder`` is a run's calibrated folder (cal-pool<N>, cal-eval), not its training folder."""
    return Path(folder).name.startswith(CALIBRATED_PREFIX)


def training_dir(run: str | Path) -> Path:
    """The folder holding a run's training: the parent of a calibrated folder, else the folder itself."""
    run = Path(run)
    return run.parent if is_calibrated(run) else run


def run_file(run: str | Path, name: str) -> Path:
    """A run's file, in the calibrated folder or, for training files, in its training folder."""
    path = Path(run) / name
    return path if path.exists() else training_dir(run) / name


def below_runs(folder: str | Path) -> Path | None:
    """A run folder's path below ``results/runs/`` (training or calibrated folder, either layout); a folder laid
    out otherwise below a ``runs/`` folder: its path below the last one; None outside any ``runs/`` folder."""
    parts = Path(folder).parts
    depth = 6 if is_calibrated(folder) else 5  # <task>/<model>/b<budget>/<method folder>/s<seed>[/cal-…]
    if len(parts) > depth and parts[-depth - 1] == Path(RUNS).name:
        return Path(*parts[-depth:])
    if Path(RUNS).name in parts:
        return Path(*parts[len(parts) - parts[::-1].index(Path(RUNS).name):])
    return None


def logs_root_of(run: str | Path) -> Path | None:
    """results/logs beside the results/runs/ that holds ``run``; None when ``run`` is not in the layout."""
    below = below_runs(run)
    if below is None:
        return None
    parts = Path(run).parts
    return Path(*parts[: len(parts) - len(below.parts) - 1]) / Path(LOGS).name


def step_log(logs: str | Path, step: str, run: str | Path, calibrated: bool, member: int | None = None) -> Path:
    """The log a step of ``run`` (a calibrated folder, or a training folder) wrote below the logs root ``logs``:
    the calibrated folder's for a calibrated step, the training folder's otherwise; MM member k's with ``member``.
    A folder outside results/runs/ is taken as laid out as the workflow lays it out (its last folders)."""
    below = below_runs(run)
    if below is None:
        below = Path(*Path(run).parts[-5:])
    relative = below if calibrated or not is_calibrated(run) else below.parent
    if member is not None:
        return Path(logs) / step / relative / f"{MEMBER_LOG.format(k=member)}.log"
    return Path(logs) / step / f"{relative}.log"


def member_logs(logs: str | Path, step: str, run: str | Path) -> list[Path]:
    """The member logs of a per-exit method's run, in member order."""
    folder = step_log(logs, step, run, calibrated=False).with_suffix("")
    return sorted(folder.glob(f"{MEMBER_LOG.format(k='*')}.log"), key=member_number)


def member_number(path: Path) -> int:
    match = re.search(r"member_(\d+)", path.name)
    return int(match.group(1)) if match else 0


def method_folder(run: str | Path) -> str:
    """The method a run folder's path names (its ``<method>-<run id>`` or, before run ids, ``<method>`` folder)."""
    return training_dir(run).parent.name.split("-")[0]


def legacy_dir_of(run: str | Path) -> Path | None:
    """Where the layout before run ids kept the run whose calibrated folder is ``run`` (None for another folder)."""
    run = Path(run)
    if not is_calibrated(run):
        return None
    seed_dir = run.parent
    return seed_dir.parent.parent / method_folder(run) / seed_dir.name


def run_fields(run: str | Path) -> dict[str, Any] | None:
    """task, model (folder name), budget, method, run_id ("" before run ids), seed and calibration ("" for a
    training folder) read back from a run folder's path; None when the path is not laid out as a run's."""
    parts = training_dir(run).parts[-5:]  # <task>/<model>/b<budget>/<method folder>/s<seed>, wherever it is
    match = _RUN_PATH.match("/".join(parts)) if len(parts) == 5 else None
    if match is None:
        return None
    return {"task": match["task"], "model": match["model"], "budget": int(match["budget"]),
            "method": match["method"], "seed": int(match["seed"]), "run_id": match["run_id"] or "",
            "calibration": Path(run).name if is_calibrated(run) else ""}


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder's ``run.json``, or None when it has none (or it cannot be read)."""
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record_mismatch(run_dir: str | Path, expected_id: str) -> str:
    """Why the folder is not the run ``expected_id`` names ("" when it is): recorded identity and id checked."""
    record = read_record(run_dir)
    if record is None:
        return ""  # not started yet, or a folder the workflow is still writing: the step logs say which
    identity = record.get("identity")
    if not isinstance(identity, dict) or record.get("run_id") != expected_id or run_id(identity) != expected_id:
        return (f"its {RUN_JSON} records run id {record.get('run_id')!r}, not {expected_id}: these are other "
                "settings' results, not this grid's")
    return ""


# ------------------------------------------------------------------------------------------------ internals
def _pooling(model: Model) -> str | None:
    """The pooling as the run will use it, where the architecture is known offline (so ``pooling: cls`` and no
    pooling on BERT are one run); as written otherwise (never resolved from a fetched cache: the id must not
    change once a backbone has been downloaded)."""
    model_type = model.model_type_offline
    if model_type in BACKBONES:
        return resolve_pooling(model_type, model.pooling)
    return model.pooling


def _as_type_of(default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int):
        return int(value)
    return value


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, cached per (path, size, mtime) within a process (planning reads it once)."""
    try:
        stat = path.stat()
    except OSError:
        return None  # validation reports a missing file precisely
    key = (os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
