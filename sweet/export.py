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

The request checks and the policy lookup import no torch: the Snakefile validates ``grids.<grid>.exports``
with them while it plans.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweet import methods  # the method registry: standard library only
from sweet.errors import UserError

POLICY_NAME = "exit_policy.json"
CARD_NAME = "README.md"
TEMPERATURES_NAME = "temperatures.json"
FORMAT = "sweet-exit-policy/1"
POLICIES = ("held-out", "risk-control", "manual")
RULES = ("confidence", "entropy", "patience", "learned")  # sweet.exits.EXIT_RULES, without importing numpy here
RISKS = ("disagreement", "accuracy-drop")
RUN_KEYS = ("task", "model", "budget", "method", "seed")
# The other branch's CSV contracts (issue 19, first half): the columns this module reads from each.
OPERATING_COLUMNS = ("strategy", "target_speedup", "threshold")
RISK_COLUMNS = ("strategy", "risk", "epsilon", "delta", "threshold", "certified")
# Float keys of a request are compared with this tolerance against the CSVs' values (written with %.6g).
MATCH_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PolicyRequest:
    """How the exported classifier's threshold is chosen. ``strategy`` is the exit rule (sweet.exits) in every case."""

    policy: str
    strategy: str = "confidence"
    target_speedup: float | None = None  # held-out
    risk: str | None = None  # risk-control
    epsilon: float | None = None
    delta: float | None = None
    threshold: float | None = None  # manual

    def check(self, where: str = "--") -> PolicyRequest:
        """Raise a one-line UserError naming the field (``where`` prefixes it: "--" for flags, "exports.x." for
        configuration keys) unless the request is complete and consistent."""

        def key(name: str) -> str:
            return f"{where}{name.replace('_', '-')}" if where == "--" else f"{where}{name}"

        if self.policy not in POLICIES:
            raise UserError(f"{key('policy')}: '{self.policy}' is not a policy; use one of {', '.join(POLICIES)}")
        if self.strategy not in RULES:
            raise UserError(f"{key('strategy')}: '{self.strategy}' is not an exit rule; use one of {', '.join(RULES)}")
        needed = {"held-out": ("target_speedup",), "risk-control": ("risk", "epsilon"), "manual": ("threshold",)}
        for name in needed[self.policy]:
            if getattr(self, name) is None:
                raise UserError(f"{key(name)}: policy {self.policy} needs it")
        unused = {"held-out": ("risk", "epsilon", "delta", "threshold"),
                  "risk-control": ("target_speedup", "threshold"),
                  "manual": ("target_speedup", "risk", "epsilon", "delta")}
        for name in unused[self.policy]:
            if getattr(self, name) is not None:
                raise UserError(f"{key(name)}: not used by policy {self.policy}; remove it")
        if self.risk is not None and self.risk not in RISKS:
            raise UserError(f"{key('risk')}: '{self.risk}' is not a risk; use one of {', '.join(RISKS)}")
        for name in ("target_speedup", "epsilon", "delta", "threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise UserError(f"{key(name)}: {value!r} must be a finite number")
        if self.target_speedup is not None and self.target_speedup < 1:
            raise UserError(f"{key('target_speedup')}: {self.target_speedup} must be ≥ 1 (a speedup over full depth)")
        return self

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, in a canonical form (what exit_policy.json records as the request)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def request_from_config(entry: dict, where: str) -> PolicyRequest:
    """The policy part of a ``grids.<grid>.exports.<name>`` entry (the schema has checked the types)."""
    fields = {k: entry[k] for k in ("policy", "strategy", "target_speedup", "risk", "epsilon", "delta", "threshold")
              if k in entry}
    # A manual export names its rule as `rule`, the other policies pick a row by `strategy` (the CSVs' column).
    if "rule" in entry:
        if entry.get("policy") != "manual":
            raise UserError(f"{where}rule: only policy manual takes a rule; the other policies name it as strategy")
        fields["strategy"] = entry["rule"]
    return PolicyRequest(**fields).check(where)


def check_exports(config: dict) -> None:
    """Every ``grids.<grid>.exports`` entry names a run of its grid and a complete policy (one line otherwise)."""
    for gname, grid in config["grids"].items():
        for name, entry in (grid.get("exports") or {}).items():
            where = f"grids.{gname}.exports.{name}."
            for key, axis in (("task", "tasks"), ("model", "models"), ("budget", "budgets"), ("method", "methods"),
                              ("seed", "seeds")):
                if entry[key] not in grid[axis]:
                    shown = ", ".join(str(v) for v in grid[axis])
                    raise UserError(f"{where}{key}: {entry[key]!r} is not one of grid {gname}'s {axis} ({shown}); "
                                    "an export names a run of its own grid")
            request_from_config(entry, where)


def export_request_json(entry: dict) -> str:
    """A configuration entry as canonical JSON: what the workflow compares with an existing export's request."""
    return json.dumps({"run": {k: entry[k] for k in RUN_KEYS},
                       "policy": request_from_config(entry, "").to_json()}, sort_keys=True)


def existing_request(folder: str | Path) -> str | None:
    """The request an existing export was made for (canonical JSON), or None when there is none."""
    path = Path(folder) / POLICY_NAME
    if not path.is_file():
        return None
    try:
        policy = json.loads(path.read_text(encoding="utf-8"))
        return json.dumps({"run": {k: policy["run"][k] for k in RUN_KEYS}, "policy": policy["request"]},
                          sort_keys=True)
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# The chosen row of the run's policy tables
def _read_table(path: Path, flag: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        raise UserError(f"{flag}: {path} not found; the run has no {path.name} (make it first, or give its path)")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0]) if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{flag}: {path} has no column '{missing[0]}' (expected {', '.join(columns)})")
    return rows


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=MATCH_TOLERANCE, abs_tol=MATCH_TOLERANCE)


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "1.0")


def _listing(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in sorted(set(values))) or "none"


def _threshold_of(row: dict[str, str], path: Path, flag: str) -> float:
    threshold = _number(row["threshold"])
    if not math.isfinite(threshold):
        raise UserError(f"{flag}: the matching row of {path} has no threshold ({row['threshold']!r}): no threshold "
                        "meets it on the calibration split; choose another")
    return threshold


def _rows_of_rule(rows: list[dict], path: Path, strategy: str) -> list[dict]:
    """The policy table's rows of one exit rule; a one-line error naming the rules it has when there are none."""
    found = [r for r in rows if r["strategy"] == strategy]
    if not found:
        raise UserError(f"--strategy: {path} has no rows of exit rule '{strategy}' (it has "
                        f"{', '.join(sorted({r['strategy'] for r in rows})) or 'none'})")
    return found


def held_out_row(path: Path, request: PolicyRequest) -> tuple[float, dict[str, Any]]:
    """The threshold chosen on the calibration split for ``request.target_speedup`` (operating_points.csv)."""
    of_rule = _rows_of_rule(_read_table(path, "--operating-points", OPERATING_COLUMNS), path, request.strategy)
    found = [r for r in of_rule if _close(_number(r["target_speedup"]), float(request.target_speedup))]
    if not found:
        raise UserError(f"--target-speedup: {request.target_speedup:g} is not a target of {path} for '{request.strategy}' "
                        f"(targets: {_listing([_number(r['target_speedup']) for r in of_rule])})")
    row = found[0]
    return _threshold_of(row, path, "--target-speedup"), {"how": "held-out", "split": "calibration",
                                                          "target_speedup": float(request.target_speedup),
                                                          "table": path.name, "row": row}


def risk_control_row(path: Path, request: PolicyRequest) -> tuple[float, dict[str, Any]]:
    """The risk-controlled threshold for (rule, risk, ε, δ) (risk_control.csv); δ may be left out when unique."""
    found = _rows_of_rule(_read_table(path, "--risk-control", RISK_COLUMNS), path, request.strategy)
    by_risk = [r for r in found if r["risk"] == request.risk]
    if not by_risk:
        raise UserError(f"--risk: {path} has no '{request.risk}' rows for '{request.strategy}' (risks: "
                        f"{', '.join(sorted({r['risk'] for r in found}))})")
    found = [r for r in by_risk if _close(_number(r["epsilon"]), float(request.epsilon))]
    if not found:
        raise UserError(f"--epsilon: {request.epsilon:g} is not in {path} for {request.strategy}/{request.risk} "
                        f"(epsilons: {_listing([_number(r['epsilon']) for r in by_risk])})")
    if request.delta is not None:
        with_delta = [r for r in found if _close(_number(r["delta"]), float(request.delta))]
        if not with_delta:
            raise UserError(f"--delta: {request.delta:g} is not in {path} for {request.strategy}/{request.risk}/"
                            f"ε={request.epsilon:g} (deltas: {_listing([_number(r['delta']) for r in found])})")
        found = with_delta
    elif len({r["delta"] for r in found}) > 1:
        raise UserError(f"--delta: {path} has several for {request.strategy}/{request.risk}/ε={request.epsilon:g}; "
                        f"give one of {_listing([_number(r['delta']) for r in found])}")
    row = found[0]
    chosen = {"how": "risk-control", "split": "calibration", "risk": request.risk,
              "epsilon": _number(row["epsilon"]), "delta": _number(row["delta"]),
              "certified": _truthy(row["certified"]), "why": row.get("why", ""), "table": path.name, "row": row}
    return _threshold_of(row, path, "--epsilon"), chosen


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
    exits: Path | None = None  # individual_exits.csv: the run's identity columns

    def __post_init__(self) -> None:
        self.run = Path(self.run)
        defaults = {"model": "model", "logits": "logits.npz", "temperatures": TEMPERATURES_NAME,
                    "operating_points": "operating_points.csv", "risk_control": "risk_control.csv",
                    "exits": "individual_exits.csv"}
        from sweet.plan.layout import run_file

        for name, default in defaults.items():
            value = getattr(self, name)
            setattr(self, name, run_file(self.run, default) if value is None else Path(value))


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
    ignore = shutil.ignore_patterns("*.checkpoints", ".*.tmp*", "checkpoint-*")
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
    what it measured on the run's evaluation split."""
    run, model, task, ev, chosen = (policy[k] for k in ("run", "model", "task", "evaluation", "chosen_by"))
    metric = ev["metric"]
    method_name = methods.METHODS[run["method"]].label if run["method"] in methods.METHODS else run["method"]
    if chosen["how"] == "held-out":
        how = (f"chosen on the run's calibration split (held out of the training pool) as the threshold whose "
               f"speedup there is closest to the target {chosen['target_speedup']:g}× (`operating_points.csv`)")
    elif chosen["how"] == "risk-control":
        how = (f"risk control on the calibration split: {chosen['risk']} ≤ ε = {chosen['epsilon']:g} with "
               f"probability ≥ 1 − δ = {1 - chosen['delta']:g} (`risk_control.csv`); certified: "
               f"{'yes' if chosen['certified'] else 'NO (' + (chosen['why'] or 'no reason given') + ')'}")
    else:
        how = "given by hand (`--rule` / `--threshold`); not chosen on held-out data"
    point_name = f"{metric} at {ev['speedup']:.3g}x"
    front = [
        "---",
        "library_name: sweet",
        "pipeline_tag: text-classification",
        f"tags: [early-exit, adaptive-inference, {run['method']}]",
        *([f"datasets: [{task['name']}]"] if task.get("source") == "glue" else []),
        f"metrics: [{metric}]",
        "model-index:",
        f"  - name: {json.dumps(policy['name'])}",
        "    results:",
        "      - task: {type: text-classification}",
        f"        dataset: {{name: {json.dumps(task['name'])}, type: {json.dumps(task['name'])}, split: eval}}",
        "        metrics:",
        f"          - {{type: {metric}, value: {ev['score']:.6g}, name: {json.dumps(point_name)}}}",
        "---",
    ]
    share = " / ".join(f"{s:.1%}" for s in ev["exit_share"])
    body = f"""
# {policy['name']}: {method_name} classifier for `{task['name']}`

An early-exit text classifier exported by `sweet` (SWEET / Early-Exit / Multi-Model adaptive inference) from one run of
{'grid `' + policy['grid'] + '`' if policy.get('grid') else 'a grid'}. Each input leaves at the first exit whose
rule fires; later layers are never computed.

| | |
|---|---|
| task | `{task['name']}` ({task.get('source') or 'unknown source'}), labels {', '.join(f'`{n}`' for n in task['label_names'])} |
| data | the run's training subset of the task's pool; evaluation on the task's evaluation split ({ev['n_examples']} examples) |
| budget | {run['budget']} training examples |
| method | {method_name} |
| backbone (config name) | `{run['model']}` |
| seed | {run['seed']} |
| exits | after layers {', '.join(str(k) for k in model['exit_layers'])} |
| max length | {model.get('max_length', 'as saved')} tokens |
| exit rule | `{policy['rule']}` at threshold {policy['threshold']:.6g}, on temperature-scaled probabilities (T = {', '.join(f'{t:.4g}' for t in policy['temperatures'])}) |
| operating point | {how} |
| evaluation {metric} | **{ev['score']:.4f}** at **{ev['speedup']:.3f}×** speedup (layer fraction {ev['layer_fraction']:.4f}, FLOPs fraction {ev['flops_fraction']:.4f}); exits taken {share} |

The evaluation numbers are recomputed from the run's stored per-exit logits at this policy (`sweet.exits.simulate`),
not copied from a table; the real early-exit runner is tested to take the same exits. Speedup counts layers
(the paper's accounting): 1 / (layers run ÷ full depth), averaged over examples.

## Use

```python
import sweet

clf = sweet.load_classifier("path/to/this/folder")
clf.predict(["a sentence", "another one"])     # label, label id, probabilities, exit layer per text
```

or `python -m sweet predict path/to/this/folder --input texts.tsv --text-column {'sentence' if task['name'].startswith('sst') else 'text'} --out predictions.tsv`.

## How it was made

```
{policy['command']}
```

`exit_policy.json` holds the rule, threshold, temperatures, the row it was chosen from and every measured number;
`temperatures.json` the calibration record (per-exit NLL and ECE before and after scaling).
"""
    return "\n".join(front) + "\n" + body.lstrip("\n")
