"""Each registry keeps its promise: an entry added at run time is accepted by every consumer that reads it.

One throwaway entry per registry (exit rules, training methods, backbones, task sources), added for the test only;
each consumer is asked whether it accepts it: the CLI's choices, the configuration schema and check, the export
policy, and the code that acts on it. Nothing here trains or downloads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sweet import methods
from sweet.backbones import BACKBONES
from sweet.cli import build_parser, main
from sweet.errors import UserError
from sweet.exits import EXIT_RULES, ExitRule
from sweet.plan.config import load_schema, validate
from sweet.plan.export_policy import PolicyRequest, check_exports
from sweet.tasks import TASK_SOURCES, TaskSource

ROOT = Path(__file__).resolve().parents[1]
THROWAWAY = "throwaway"


def _choices(argv: list[str], flag: str) -> list[str]:
    """The choices of ``flag`` of the subcommand ``argv[0]``, as the parser built now offers them."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[argv[0]]
    return list(next(a for a in sub._actions if flag in a.option_strings).choices)


# ----------------------------------------------------------------------------------------------------- exit rules
@pytest.fixture
def throwaway_rule(monkeypatch: pytest.MonkeyPatch) -> ExitRule:
    def fires(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
        return probs.min(axis=-1) <= threshold

    rule = ExitRule(THROWAWAY, "throwaway rule", fires, lambda c, k, n: np.linspace(0.0, 1.0, n))
    monkeypatch.setitem(EXIT_RULES, THROWAWAY, rule)
    return rule


def test_an_exit_rule_added_is_accepted_everywhere(throwaway_rule: ExitRule, config: dict) -> None:
    # the CLI: export's --strategy and --rule, infer's --rule
    assert THROWAWAY in _choices(["export"], "--strategy") and THROWAWAY in _choices(["export"], "--rule")
    assert THROWAWAY in _choices(["infer"], "--rule")
    # the export policy, as a flag and as a configuration entry
    PolicyRequest("held-out", strategy=THROWAWAY, target_speedup=2.0).check()
    PolicyRequest("manual", strategy=THROWAWAY, threshold=0.5).check()
    # the configuration: the claims' rule, an export's strategy (held-out) and rule (manual)
    config["claims"] = {**(config.get("claims") or {}), "exit_rule": THROWAWAY}
    run = {"task": "synthetic", "model": "tiny-bert", "budget": 1000, "method": "sweet", "seed": 1}
    config["grids"]["demo"]["exports"] = {
        "held": {**run, "policy": "held-out", "strategy": THROWAWAY, "target_speedup": 2},
        "byhand": {**run, "policy": "manual", "rule": THROWAWAY, "threshold": 0.5},
    }
    validate(config, base_dir=ROOT)
    check_exports(config)
    # and a name no registry holds is still refused, naming the key
    config["grids"]["demo"]["exports"]["held"]["strategy"] = "nonesuch"
    with pytest.raises(UserError, match=r"grids\.demo\.exports\.held\.strategy"):
        validate(config, base_dir=ROOT)


def test_export_help_lists_every_registered_rule(capsys: pytest.CaptureFixture) -> None:
    """`python -m sweet export --help` names every rule of the registry (softmax_diff included)."""
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "softmax_diff" in EXIT_RULES
    for rule in EXIT_RULES:
        assert rule in text, rule


# ------------------------------------------------------------------------------------------------ training methods
@pytest.fixture
def throwaway_method(monkeypatch: pytest.MonkeyPatch) -> methods.Method:
    """A second per-exit method beside MM: the case `train_member` and `method_of` once assumed away."""
    method = methods.Method(THROWAWAY, "Throwaway", "#123456", "8", "a test's per-exit method", "none",
                            layout="per-exit")
    monkeypatch.setitem(methods.METHODS, THROWAWAY, method)
    return method


def test_a_method_added_is_accepted_everywhere(throwaway_method: methods.Method, config: dict) -> None:
    assert THROWAWAY in _choices(["train"], "--method") and THROWAWAY in _choices(["combine"], "--method")
    assert THROWAWAY not in _choices(["audit"], "--method")  # audit takes joint methods only
    config["grids"]["demo"]["methods"] = ["ee", THROWAWAY]
    config["grids"]["demo"]["exports"] = {"x": {"task": "synthetic", "model": "tiny-bert", "budget": 1000,
                                                "method": THROWAWAY, "seed": 1, "policy": "manual",
                                                "threshold": 0.5}}
    validate(config, base_dir=ROOT)


# ------------------------------------------------------------------------------------------------------ backbones
def test_a_backbone_added_is_read_by_the_configuration_check(monkeypatch: pytest.MonkeyPatch, config: dict) -> None:
    """A decoder-like entry refuses cls pooling in the configuration check, read from the registry at run time."""
    monkeypatch.setitem(BACKBONES, THROWAWAY, dataclasses.replace(BACKBONES["bert"], causal=True,
                                                                  default_pooling="last"))
    model = config["models"]["tiny-bert"]
    model["backbone"]["model_type"] = THROWAWAY
    model["pooling"] = "mean"
    validate(config, base_dir=ROOT)
    model["pooling"] = "cls"
    with pytest.raises(UserError, match=r"models\.tiny-bert\.pooling"):
        validate(config, base_dir=ROOT)


# --------------------------------------------------------------------------------------------------- task sources
def _throwaway_rows(name: str, spec: dict) -> tuple[list[dict], list[dict], dict]:
    """The throwaway source's reading function (sweet.tasks names it by module and function)."""
    rows = [{"id": i, "text": f"text {i}", "label": i % 2} for i in range(spec.get("size", 4))]
    return rows, rows[:2], {"label_names": ["no", "yes"], "metrics": ["accuracy"], "primary_metric": "accuracy"}


def test_a_task_source_added_is_accepted_everywhere(monkeypatch: pytest.MonkeyPatch, config: dict,
                                                     tmp_path: Path) -> None:
    monkeypatch.setitem(TASK_SOURCES, THROWAWAY, TaskSource(THROWAWAY, frozenset({"source", "size"}),
                                                            f"{__name__}:_throwaway_rows"))
    # the schema: the source is one of its names, and its keys (only those) are a task's keys
    assert THROWAWAY in load_schema()["properties"]["tasks"]["additionalProperties"]["properties"]["source"]["enum"]
    config["tasks"]["synthetic"] = {"source": THROWAWAY, "size": 3000}
    validate(config, base_dir=ROOT)
    config["tasks"]["synthetic"]["train_size"] = 10
    with pytest.raises(UserError, match=r"tasks\.synthetic\.train_size: unknown key"):
        validate(config, base_dir=ROOT)
    # `prepare` reads it with the entry's function
    main(["prepare", "--task", "t", "--task-spec", json.dumps({"source": THROWAWAY, "size": 6}),
          "--out", str(tmp_path / "t")])
    task = json.loads((tmp_path / "t" / "task.json").read_text())
    assert task["source"] == THROWAWAY and task["pool_size"] == 6 and task["eval_size"] == 2


def test_the_risks_planning_names_are_the_risk_registry() -> None:
    """Planning reads the risks' names without pandas (sweet.plan.export_policy.RISKS); they are sweet.risk's, and
    every consumer (the schema's two risk enums, export's --risk, the operating-points step) offers each one."""
    from sweet.plan.export_policy import RISKS
    from sweet.risk import RISKS as REGISTRY

    assert tuple(REGISTRY) == RISKS
    schema = load_schema()
    assert schema["$defs"]["export"]["properties"]["risk"]["enum"] == list(RISKS)
    assert schema["properties"]["risk_control"]["properties"]["risks"]["items"]["enum"] == list(RISKS)
    export = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions
                  if a.dest == "risk")
    assert tuple(export.choices) == RISKS
