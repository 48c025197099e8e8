"""The configuration contract: the shipped config is valid, and every bad value is refused naming its key."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from sweet.errors import UserError
from sweet.plan.config import load_config_file, merge, validate
from sweet.plan.estimates import describe_disk, disk_estimate, parameter_count
from sweet.plan.settings import merged_training, slug

ROOT = Path(__file__).resolve().parents[1]


def refused(config: dict, *fragments: str, base: Path = ROOT) -> str:
    with pytest.raises(UserError) as info:
        validate(config, base_dir=base)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------------ the shipped file
@pytest.mark.parametrize("grid", ["demo", "smoke", "paper"])
def test_shipped_grids_are_valid(config: dict, grid: str) -> None:
    config["grid"] = grid
    models = validate(config, base_dir=ROOT)
    assert set(config["grids"][grid]["models"]) <= set(models)


def test_shipped_values_match_the_paper(shipped: dict) -> None:
    assert shipped["grid"] == "demo"
    assert shipped["training"]["learning_rate"] == 5e-5
    assert shipped["training"]["batch_size"] == 16
    assert shipped["training"]["epochs"] == 2
    assert shipped["training"]["max_length"] == 256
    assert shipped["thresholds"] == 11
    paper = shipped["grids"]["paper"]
    assert paper["budgets"] == [6000]
    assert {"bert-base-uncased", "microsoft/deberta-base"} <= set(paper["models"])
    assert shipped["models"]["bert-base-uncased"]["exit_layers"] == [1, 4, 6, 12]
    assert shipped["models"]["microsoft/deberta-base"]["exit_layers"] == [1, 4, 6, 12]
    assert len(paper["seeds"]) >= 3
    assert shipped["grids"]["demo"]["training"]["gradient_conflict_every"] > 0
    assert paper["training"]["gradient_conflict_every"] == 0
    assert "tiny-bert" in shipped["models"] and "synthetic" in shipped["tasks"]


def test_training_precedence(config: dict) -> None:
    models = validate(config, base_dir=ROOT)
    spec = merged_training(config, models["tiny-bert"])
    assert spec["learning_rate"] == 1e-3  # the model's override beats the default
    assert spec["batch_size"] == 16  # the default
    assert spec["gradient_conflict_every"] == 10  # the grid's setting beats both
    config["grid"] = "paper"
    assert merged_training(config, models["bert-base-uncased"])["learning_rate"] == 5e-5


def test_training_keys_match_trainspec(shipped: dict) -> None:
    """The schema's training keys are exactly sweet.train.TrainSpec's fields (checked without importing torch)."""

    from sweet.plan.config import load_schema
    from sweet.plan.settings import TrainSpec

    fields = {f.name for f in dataclasses.fields(TrainSpec)}

    assert set(load_schema()["$defs"]["training"]["properties"]) == fields


def test_slug() -> None:
    assert slug("microsoft/deberta-base") == "microsoft--deberta-base"
    assert slug("tiny-bert") == "tiny-bert"


# ------------------------------------------------------------------------------------------------ bad values
def test_unknown_grid(config: dict) -> None:
    config["grid"] = "nope"
    refused(config, "grid:", "'nope'", "demo")


def test_unknown_task_in_grid(config: dict) -> None:
    config["grids"]["demo"]["tasks"] = ["nope"]
    refused(config, "grids.demo.tasks", "'nope'")


def test_unknown_model_in_grid(config: dict) -> None:
    config["grids"]["paper"]["models"] = ["bert-base-uncased", "gpt-9"]
    refused(config, "grids.paper.models", "'gpt-9'")


def test_unknown_method(config: dict) -> None:
    config["grids"]["demo"]["methods"] = ["ee", "bogus"]
    refused(config, "grids.demo.methods.1", "'bogus'", "ee, sweet, mm, pabee")  # the registry's names


@pytest.mark.parametrize("seed", [-1, 1.5, "one", True])
def test_bad_seed(config: dict, seed: object) -> None:
    config["grids"]["demo"]["seeds"] = [1, seed]
    refused(config, "grids.demo.seeds.1")


@pytest.mark.parametrize("budget", [0, -100, 2.5, "100"])
def test_bad_budget(config: dict, budget: object) -> None:
    config["grids"]["demo"]["budgets"] = [budget]
    refused(config, "grids.demo.budgets.0")


def test_integral_float_budget_is_refused(config: dict) -> None:
    # JSON schema counts 100.0 as an integer; it would become the folder b100.0, so the semantic check refuses it.
    config["grids"]["demo"]["budgets"] = [100.0]
    refused(config, "grids.demo.budgets", "integer")


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [([4, 2], "strictly increasing"), ([0, 2, 4], "≥ 1"), ([2, 2], "strictly increasing"), ([], "at least"),
     ([1, 4, 8], "beyond the backbone's 6 layers"), ([1, "2"], "integer")],
)
def test_bad_exit_layers(config: dict, layers: list, fragment: str) -> None:
    config["models"]["tiny-bert"]["exit_layers"] = layers
    refused(config, "models.tiny-bert.exit_layers", fragment)


def test_exit_layers_beyond_known_hub_depth(config: dict) -> None:
    config["models"]["bert-base-uncased"]["exit_layers"] = [1, 4, 6, 24]
    refused(config, "models.bert-base-uncased.exit_layers", "12 layers")


def test_exit_layers_beyond_local_folder_depth(config: dict, tmp_path: Path) -> None:
    folder = tmp_path / "my-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64}))
    config["models"]["mine"] = {"backbone": str(folder), "exit_layers": [1, 2, 6]}
    refused(config, "models.mine.exit_layers", "4 layers")
    config["models"]["mine"]["exit_layers"] = [1, 2, 4]
    assert validate(config, base_dir=ROOT)["mine"].kind == "local"


def test_pooling_key(config: dict, tmp_path: Path) -> None:
    config["models"]["tiny-bert"]["pooling"] = "mean"
    assert validate(config, base_dir=ROOT)["tiny-bert"].pooling == "mean"
    del config["models"]["tiny-bert"]["pooling"]
    assert validate(config, base_dir=ROOT)["tiny-bert"].pooling is None  # the backbone's default
    config["models"]["tiny-bert"]["pooling"] = "max"
    refused(config, "models.tiny-bert.pooling", "'max' is not one of cls, mean, last")
    # a decoder reads its first token before seeing the rest: cls is refused where the model_type is known offline
    config["models"]["tiny-bert"]["pooling"] = "cls"
    config["models"]["tiny-bert"]["backbone"]["model_type"] = "qwen2"
    refused(config, "models.tiny-bert.pooling", "causal decoder 'qwen2'", "use last")
    folder = tmp_path / "my-qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64}))
    config["models"]["tiny-bert"]["backbone"]["model_type"] = "bert"
    config["models"]["mine"] = {"backbone": str(folder), "exit_layers": [1, 4], "pooling": "cls"}
    refused(config, "models.mine.pooling", "causal decoder")
    config["models"]["mine"]["pooling"] = "last"
    assert validate(config, base_dir=ROOT)["mine"].pooling == "last"


def test_missing_local_backbone(config: dict, tmp_path: Path) -> None:
    config["models"]["mine"] = {"backbone": str(tmp_path / "nowhere"), "exit_layers": [1, 2]}
    refused(config, "models.mine.backbone", "not found")


def test_budget_larger_than_pool(config: dict) -> None:
    config["grids"]["demo"]["budgets"] = [250, 3990]  # leaves 10 < 50 calibration examples of 4000
    refused(config, "grids.demo.budgets", "3990", "4000")
    config["grid"] = "paper"
    config["grids"]["paper"]["tasks"] = ["rte"]  # GLUE RTE has 2,490 training examples
    refused(config, "grids.paper.budgets", "'rte'")


def test_missing_local_file(config: dict, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    config["tasks"]["mine"] = {"source": "local", "train": str(tmp_path / "train.csv"),
                               "eval": str(tmp_path / "dev.csv"), "text_column": "text", "label_column": "label"}
    config["grids"]["demo"]["tasks"] = ["mine"]
    config["grids"]["demo"]["budgets"] = [1]
    config["calibration_size"] = 1
    refused(config, "tasks.mine.eval", "not found")


def test_local_task_missing_column_key(config: dict) -> None:
    config["tasks"]["mine"] = {"source": "local", "train": "a.csv", "eval": "b.csv", "text_column": "text"}
    refused(config, "tasks.mine.label_column", "missing")


def test_unknown_glue_task(config: dict) -> None:
    config["tasks"]["sst2"]["glue_task"] = "sst3"
    refused(config, "tasks.sst2.glue_task", "'sst3'")


def test_unknown_source(config: dict) -> None:
    config["tasks"]["synthetic"]["source"] = "hub"
    refused(config, "tasks.synthetic.source", "'hub'")


def test_misspelt_keys(config: dict) -> None:
    config["trainig"] = {}
    refused(config, "trainig", "unknown key")
    del config["trainig"]
    config["training"]["learnig_rate"] = 1e-4
    refused(config, "training.learnig_rate", "unknown key")


def test_bad_training_values(config: dict) -> None:
    config["training"]["learning_rate"] = -1
    refused(config, "training.learning_rate")
    config["training"]["learning_rate"] = 5e-5
    config["models"]["tiny-bert"]["training"]["batch_size"] = 0
    refused(config, "models.tiny-bert.training.batch_size")


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x y"])
def test_task_names_cannot_escape_results(config: dict, name: str) -> None:
    config["tasks"][name] = {"source": "synthetic"}
    refused(config, "tasks", "rename")


@pytest.mark.parametrize("name", ["../evil", "a/b/c", "/abs", "a/../b"])
def test_model_names_cannot_escape_results(config: dict, name: str) -> None:
    config["models"][name] = {"backbone": "bert-base-uncased", "exit_layers": [1, 12]}
    refused(config, "models", "rename")


def test_colliding_slugs(config: dict) -> None:
    config["models"]["org--m"] = {"backbone": "bert-base-uncased", "exit_layers": [1, 12]}
    config["models"]["org/m"] = {"backbone": "bert-base-uncased", "exit_layers": [1, 12]}
    refused(config, "models.org/m", "collides")


def test_bad_top_level_values(config: dict) -> None:
    for key, value in [("gpus", -1), ("gpus", "one"), ("keep_checkpoints", "maybe"), ("calibrate_on", "test"),
                       ("thresholds", 1), ("calibration_size", 0)]:
        bad = copy.deepcopy(config)
        bad[key] = value
        refused(bad, key)


def test_inline_backbone_heads_divide_hidden_size(config: dict) -> None:
    config["models"]["tiny-bert"]["backbone"]["num_attention_heads"] = 5
    refused(config, "models.tiny-bert.backbone.hidden_size")


def test_unreadable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "overlay.yaml"
    path.write_text("grids:\n  demo: {tasks: [synthetic\n")
    with pytest.raises(UserError, match=r"overlay\.yaml:\d+: not valid YAML"):
        load_config_file(path)
    path.write_text("- a list\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_config_file(path)


def test_merge_is_key_by_key(shipped: dict) -> None:
    merged = merge(shipped, {"models": {"tiny-bert": {"exit_layers": [2, 6]}}, "grids": {"demo": {"seeds": [7]}}})
    assert merged["models"]["tiny-bert"]["exit_layers"] == [2, 6]
    assert merged["models"]["tiny-bert"]["backbone"]["hidden_size"] == 64
    assert merged["grids"]["demo"]["seeds"] == [7] and merged["grids"]["demo"]["budgets"]
    assert shipped["grids"]["demo"]["seeds"] == [1, 2]  # not mutated


# ------------------------------------------------------------------------------------------------ disk estimate
def test_parameter_counts_of_known_models() -> None:
    from sweet.plan.settings import KNOWN_BACKBONES

    # bert-base-uncased has 109.5M parameters, bert-large-uncased 335M (published counts).
    assert abs(parameter_count(KNOWN_BACKBONES["bert-base-uncased"]) - 109.5e6) < 1e6
    assert abs(parameter_count(KNOWN_BACKBONES["bert-large-uncased"]) - 335.1e6) < 2e6


def test_disk_estimate_of_paper_grid(config: dict) -> None:
    config["grid"] = "paper"
    models = validate(config, base_dir=ROOT)
    est = disk_estimate(config, models)
    grid = config["grids"]["paper"]
    assert est["runs"] == len(grid["tasks"]) * len(grid["models"]) * len(grid["budgets"]) * 3 * len(grid["seeds"])
    assert est["without_checkpoints"] < 5e9 < 50e9 < est["with_checkpoints"]
    line = describe_disk(config, models)
    assert "without checkpoints" in line and "with keep_checkpoints" in line and "GB" in line


def test_task_keys_match_the_data_module() -> None:
    """The schema's keys of each task source are exactly those its registry entry (sweet.tasks) accepts."""
    from sweet.plan.config import load_schema
    from sweet.tasks import TASK_SOURCES

    branches = load_schema()["properties"]["tasks"]["additionalProperties"]["allOf"]
    assert sorted(b["if"]["properties"]["source"]["const"] for b in branches) == sorted(TASK_SOURCES)
    for branch in branches:
        source = branch["if"]["properties"]["source"]["const"]
        assert set(branch["then"]["properties"]) == TASK_SOURCES[source].keys, source


# ------------------------------------------------------------------------------------- operating points, risk
def test_risk_control_refuses_calibrating_on_the_evaluation_set(config: dict) -> None:
    config["calibrate_on"] = "eval"
    refused(config, "calibrate_on", "calibrate_on: pool", "risk_control: {enabled: false}")
    config["risk_control"]["enabled"] = False  # the reference's protocol, without the guarantee
    validate(config, base_dir=ROOT)


def test_bad_operating_point_and_risk_control_values(config: dict) -> None:
    for section, key, value in [("risk_control", "risks", ["coverage"]), ("risk_control", "epsilons", [0]),
                                ("risk_control", "delta", 1), ("operating_points", "targets", [-1]),
                                ("claims", "operating_points", "optimistic")]:
        bad = copy.deepcopy(config)
        bad[section][key] = value
        refused(bad, f"{section}.{key}")


def test_command_line_sections_are_read_as_yaml(config: dict) -> None:
    """`--config latency='{batch_sizes: [1, 32]}' risk_control='{enabled: false}'`: snakemake hands mappings over as
    strings to any depth (YAML's BaseLoader); the settings sections are read as YAML would read them."""
    config["latency"] = {"batch_sizes": ["1", "32"], "examples": "64"}
    config["operating_points"] = {"targets": ["1.5", "2"]}
    config["risk_control"] = {**config["risk_control"], "enabled": "false", "delta": "0.1", "epsilons": ["0.01"]}
    config["claims"] = {**(config.get("claims") or {}), "level": "0.9"}
    validate(config, base_dir=ROOT)
    assert config["latency"] == {"batch_sizes": [1, 32], "examples": 64}
    assert config["operating_points"]["targets"] == [1.5, 2]
    assert config["risk_control"]["enabled"] is False and config["risk_control"]["epsilons"] == [0.01]
    assert config["claims"]["level"] == 0.9


def test_claims_exit_rule_is_any_registered_rule(config: dict) -> None:
    """The schema takes the exit rules' names from sweet.exits.EXIT_RULES: a new rule is accepted everywhere."""
    from sweet.exits import EXIT_RULES

    for rule in EXIT_RULES:
        ok = copy.deepcopy(config)
        ok.setdefault("claims", {})["exit_rule"] = rule
        validate(ok, base_dir=ROOT)
    bad = copy.deepcopy(config)
    bad.setdefault("claims", {})["exit_rule"] = "softmax-diff"
    refused(bad, "claims.exit_rule", "softmax_diff")
