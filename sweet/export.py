"""Export one run as a deployable classifier: the trained model, its temperatures and an exit policy.

An exported folder is a saved model folder (EE/SWEET: ``backbone/`` + ``exit_heads.safetensors`` +
``sweet_config.json``; MM: ``member_<k>/`` + ``sweet_config.json``, exactly as training wrote them) plus

- ``exit_policy.json``: the exit rule, its threshold, the temperatures the rule reads, how the threshold was
  chosen (``held-out``: a row of the run's ``operating_points.csv``, chosen on the calibration split for a target
  speedup; ``risk-control``: a row of ``risk_control.csv``; ``manual``: given), and the policy's evaluation score
  and speedup *recomputed* from the run's ``logits.npz`` (``sweet.exits.simulate`` + ``sweet.curves.outcome``),
- ``temperatures.json``: the run's calibration record, as fitted,
- ``README.md``: a model card (Hugging Face front matter) saying what the classifier is and how it was measured.

``sweet.classifier.load_classifier`` loads it and predicts with the real early-exit runner.

What is asked for and which row of the run's tables answers it (the policy) is ``sweet.plan.export_policy``, which
the Snakefile reads while it plans; this module builds the folder. The model card is the template
``sweet/templates/model_card.md.j2``, filled in by ``model_card``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweet import methods  # the method registry: standard library only
from sweet.errors import UserError
from sweet.plan import layout  # the names of a run's files: standard library only
from sweet.plan.export_policy import (
    FORMAT,
    POLICY_NAME,
    RUN_KEYS,
    PolicyRequest,
    held_out_row,
    risk_control_row,
)

CARD_NAME = "README.md"
TEMPERATURES_NAME = "temperatures.json"  # in the exported folder (a run's own: sweet.plan.layout.TEMPERATURES)
CARD_TEMPLATE = "model_card.md.j2"  # in sweet/templates/


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExportPaths:
    """Where an export reads the run's parts; each defaults to its place in the run's calibrated folder
    (``…/s<seed>/cal-…/``, sweet.layout), the model to the training folder above it."""

    run: Path
    model: Path | None = None
    logits: Path | None = None
    temperatures: Path | None = None
    operating_points: Path | None = None
    risk_control: Path | None = None
    exits: Path | None = None  # layout.EXITS: the run's identity columns

    def __post_init__(self) -> None:
        self.run = Path(self.run)
        defaults = {"model": layout.MODEL, "logits": layout.LOGITS, "temperatures": layout.TEMPERATURES,
                    "operating_points": layout.OPERATING_POINTS, "risk_control": layout.RISK_CONTROL,
                    "exits": layout.EXITS}
        for name, default in defaults.items():
            value = getattr(self, name)
            setattr(self, name, layout.run_file(self.run, default) if value is None else Path(value))


def run_identity(paths: ExportPaths, meta: dict[str, str]) -> dict[str, Any]:
    """task, model, budget, method, seed: given (--meta), else the identity columns of the run's CSVs."""
    identity: dict[str, Any] = dict(meta)
    if any(k not in identity for k in RUN_KEYS) and paths.exits.is_file():
        import csv

        with open(paths.exits, encoding="utf-8", newline="") as fh:
            first = next(csv.DictReader(fh), {})
        identity = {k: first[k] for k in RUN_KEYS if k in first} | identity
    missing = [k for k in RUN_KEYS if k not in identity]
    if missing:
        raise UserError(f"--meta: the run's {missing[0]} is unknown ({paths.exits} not found); give --meta "
                        + " ".join(f"{k}=…" for k in missing))
    for key in ("budget", "seed"):
        try:
            identity[key] = int(identity[key])
        except (TypeError, ValueError):
            raise UserError(f"--meta: {key}={identity[key]!r} must be an integer") from None
    return identity


def _copy_model(model_dir: Path, dest: Path) -> None:
    """The trained files as written (no re-serialisation): everything but resumable checkpoints and temporaries."""
    ignore = shutil.ignore_patterns("*" + layout.CHECKPOINTS_SUFFIX, ".*.tmp*", "checkpoint-*")
    for item in sorted(model_dir.iterdir()):
        if ignore(str(model_dir), [item.name]):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=ignore)
        else:
            shutil.copy2(item, dest / item.name)


def export_run(
    paths: ExportPaths,
    request: PolicyRequest,
    task_dir: str | Path,
    out: str | Path,
    meta: dict[str, str] | None = None,
    name: str | None = None,
    grid: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Write the export folder ``out`` (atomically) and return its exit_policy.json content."""
    import numpy as np

    from sweet.curves import load_logits, outcome
    from sweet.data import compute_metrics
    from sweet.exits import EXIT_RULES, calibrated_probs, simulate
    from sweet.io import atomic_dir, write_json, write_text
    from sweet.model import CONFIG_NAME
    from sweet.provenance import provenance

    request.check()
    if not paths.run.is_dir():
        raise UserError(f"--run: {paths.run} is not a run folder; give a run's calibrated folder, "
                        "results/runs/<task>/<model>/b<budget>/<method>-<run id>/s<seed>/cal-…")
    if not paths.logits.is_file():
        raise UserError(f"--logits: {paths.logits} not found: the run has not been evaluated; finish it first")
    if not (paths.model / CONFIG_NAME).is_file():
        raise UserError(
            f"--model: {paths.model} holds no trained model (it is deleted once a run is evaluated unless "
            "keep_checkpoints: true) and an export does not retrain; list the export in the grid's exports: before "
            "the run trains, so the workflow keeps the model until it is exported, or keep checkpoints and retrain"
        )
    task_info_path = Path(task_dir) / "task.json"
    if not task_info_path.is_file():
        raise UserError(f"--task-dir: {task_dir} has no task.json; give the prepared task folder (results/data/<task>)")
    task = json.loads(task_info_path.read_text(encoding="utf-8"))
    logits = load_logits(paths.logits)
    identity = run_identity(paths, dict(meta or {}))
    if identity["task"] != task["name"]:
        raise UserError(f"--task-dir: {task_dir} holds task '{task['name']}' but the run is of task '{identity['task']}'")

    rule = EXIT_RULES[request.strategy]
    if rule.needs_lte and "lte_scores" not in logits:
        raise UserError("--strategy: the run has no learned-to-exit heads, so rule 'learned' cannot decide "
                        "(train with learned_exit: true)")
    if request.policy == "held-out":
        threshold, chosen = held_out_row(paths.operating_points, request)
    elif request.policy == "risk-control":
        threshold, chosen = risk_control_row(paths.risk_control, request)
    else:
        threshold, chosen = float(request.threshold), {"how": "manual"}

    # The temperatures stored with the logits (float32) are the ones every offline number used; the runner reads
    # exactly these, so the exported classifier decides as the measured policy did.
    temperatures = [float(t) for t in np.asarray(logits["temperatures"], dtype=np.float32)]
    probs = calibrated_probs(logits["exit_logits"], logits["temperatures"])
    exit_index = simulate(rule, probs, logits.get("lte_scores") if rule.needs_lte else None, threshold)
    measured = outcome(logits, probs, exit_index, task["metrics"], task["primary_metric"], compute_metrics)
    evaluation = {"split": "eval", "n_examples": int(len(logits["labels"])), **measured,
                  "exit_share": [float(x) for x in measured["exit_share"].split()]}

    exit_layers = [int(k) for k in logits["exit_layers"]]
    method = str(logits["method"])
    policy = {
        "format": FORMAT,
        "name": name or "_".join(str(identity[k]) for k in RUN_KEYS),
        "grid": grid,
        "rule": request.strategy,
        "threshold": threshold,
        "temperatures": temperatures,
        "chosen_by": chosen,
        "evaluation": evaluation,
        "run": {**identity, "folder": str(paths.run)},
        "model": {"kind": "multi-model" if methods.get(method).per_exit else "early-exit", "method": method,
                  "exit_layers": exit_layers, "num_labels": int(logits["exit_logits"].shape[-1])},
        "task": {"name": task["name"], "source": task.get("source"), "label_names": list(task["label_names"]),
                 "metrics": list(task["metrics"]), "primary_metric": task["primary_metric"],
                 "has_text_pair": bool(task.get("has_text_pair", False))},
        "request": request.to_json(),
        "command": command or "python -m sweet " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "provenance": provenance(),
    }
    if len(temperatures) != len(exit_layers) or len(task["label_names"]) != policy["model"]["num_labels"]:
        raise UserError(f"--logits: {paths.logits} does not match the task ({len(task['label_names'])} labels) or its "
                        "own exits; re-evaluate the run")

    with atomic_dir(out) as tmp:
        _copy_model(paths.model, tmp)
        _check_model(tmp, exit_layers)
        policy["model"]["max_length"] = _max_length(tmp)
        if paths.temperatures.is_file():
            shutil.copy2(paths.temperatures, tmp / TEMPERATURES_NAME)
        else:
            write_json(tmp / TEMPERATURES_NAME, {"temperatures": temperatures, "source": str(paths.logits)})
        write_json(tmp / POLICY_NAME, policy)
        write_text(tmp / CARD_NAME, model_card(policy))
    if chosen.get("how") == "risk-control" and not chosen["certified"]:
        print(f"warning: the risk-control row is not certified ({chosen['why'] or 'no reason given'}); exported "
              "anyway, and the model card says so", file=sys.stderr)
    return policy


def _check_model(folder: Path, exit_layers: list[int]) -> None:
    """The copied folder loads, and its exits are the ones the logits were computed with."""
    from sweet.evaluate import load_model

    model = load_model(folder)
    if list(model.exit_layers) != exit_layers:
        raise UserError(f"--model: its exits {list(model.exit_layers)} are not the run's {exit_layers} (logits.npz); "
                        "give the run's own model")


def _max_length(folder: Path) -> int:
    from sweet.batches import load_tokenizer

    return int(load_tokenizer(folder).model_max_length)


# ---------------------------------------------------------------------------------------------------------------
def model_card(policy: dict[str, Any]) -> str:
    """README.md of an export: Hugging Face front matter, then what it is, how its operating point was chosen and
    what it measured on the run's evaluation split. The text is the template's; the numbers are formatted here, so
    the template holds no arithmetic."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    run, model, task, ev, chosen = (policy[k] for k in ("run", "model", "task", "evaluation", "chosen_by"))
    metric = ev["metric"]
    if chosen["how"] == "held-out":
        how = (f"chosen on the run's calibration split (held out of the training pool) as the threshold whose "
               f"speedup there is closest to the target {chosen['target_speedup']:g}× (`operating_points.csv`)")
    elif chosen["how"] == "risk-control":
        how = (f"risk control on the calibration split: {chosen['risk']} ≤ ε = {chosen['epsilon']:g} with "
               f"probability ≥ 1 − δ = {1 - chosen['delta']:g} (`risk_control.csv`); certified: "
               f"{'yes' if chosen['certified'] else 'NO (' + (chosen['why'] or 'no reason given') + ')'}")
    else:
        how = "given by hand (`--rule` / `--threshold`); not chosen on held-out data"
    context = {
        "policy": policy, "run": run, "model": model, "task": task, "metric": metric,
        "method_name": methods.METHODS[run["method"]].label if run["method"] in methods.METHODS else run["method"],
        "how": how,
        # front matter: JSON strings are valid YAML scalars, whatever the name holds
        "name_json": json.dumps(policy["name"]),
        "task_json": json.dumps(task["name"]),
        "point_name_json": json.dumps(f"{metric} at {ev['speedup']:.3g}x"),
        "score_exact": f"{ev['score']:.6g}",
        "on_hub_dataset": task.get("source") == "glue",
        "origin": f"grid `{policy['grid']}`" if policy.get("grid") else "a grid",
        "source": task.get("source") or "unknown source",
        "labels": ", ".join(f"`{n}`" for n in task["label_names"]),
        "exit_layers": ", ".join(str(k) for k in model["exit_layers"]),
        "max_length": model.get("max_length", "as saved"),
        "threshold": f"{policy['threshold']:.6g}",
        "temperatures": ", ".join(f"{t:.4g}" for t in policy["temperatures"]),
        "score": f"{ev['score']:.4f}",
        "speedup": f"{ev['speedup']:.3f}",
        "layer_fraction": f"{ev['layer_fraction']:.4f}",
        "flops_fraction": f"{ev['flops_fraction']:.4f}",
        "share": " / ".join(f"{s:.1%}" for s in ev["exit_share"]),
        "text_column": "sentence" if task["name"].startswith("sst") else "text",
    }
    env = Environment(loader=PackageLoader("sweet", "templates"), undefined=StrictUndefined, autoescape=False,
                      trim_blocks=True, keep_trailing_newline=True)
    return env.get_template(CARD_TEMPLATE).render(**context)
