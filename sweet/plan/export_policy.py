"""What an export asks for, and which threshold it gets: the policy side of ``sweet export``.

A request (``PolicyRequest``) names an exit rule of ``sweet.exits.EXIT_RULES`` and how its threshold is chosen:
``held-out`` (a row of the run's ``operating_points.csv``, chosen on the calibration split for a target speedup),
``risk-control`` (a row of ``risk_control.csv``) or ``manual`` (given). The rows are looked up here; the folder is
built by ``sweet.export``.

No torch, and nothing heavier than the exit-rule registry (numpy): the Snakefile validates
``grids.<grid>.exports`` and compares existing exports' requests with this module while it plans.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweet.errors import UserError
from sweet.exits import EXIT_RULES  # numpy only; read at call time, so a rule registered later is accepted

# The export folder's record of its policy (sweet.export writes it, sweet.classifier reads it), and its format.
POLICY_NAME = "exit_policy.json"
FORMAT = "sweet-exit-policy/1"
POLICIES = ("held-out", "risk-control", "manual")
# The names of sweet.risk.RISKS, the risk registry (which needs pandas, so planning does not import it); the
# schema's risk enums are filled from this tuple and tests/test_registries.py keeps it equal to the registry.
RISKS = ("disagreement", "accuracy-drop", "error")
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
        if self.strategy not in EXIT_RULES:
            raise UserError(f"{key('strategy')}: '{self.strategy}' is not an exit rule; use one of "
                            f"{', '.join(EXIT_RULES)}")
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
