"""Everything outside the model and training reads the method registry (sweet.methods): the config's methods and
``method_options``, the run identity, the workflow's rules and the CLI's choices. EE, SWEET and MM keep the run ids
they had before methods had options (so their folders and every CSV's run_id column are unchanged)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sweet import methods
from sweet.errors import UserError
from sweet.plan.cluster import Estimator, training_jobs
from sweet.plan.config import load_config_file, load_schema, merge, validate
from sweet.plan.layout import METHOD_TRAINING_OPTIONS, grid_runs

ROOT = Path(__file__).resolve().parents[1]
ALL = {"grid": "all", "grids": {"all": {"tasks": ["synthetic"], "models": ["tiny-bert"], "budgets": [1000],
                                        "methods": list(methods.names()), "seeds": [1]}}}
# The smoke grid's run folders as commit c95ce8a (before the registry) planned them: they must never change.
SMOKE_RUNS_BEFORE = {"ee-653ff404", "sweet-ea7fad7c", "mm-5db50607"}


def configured(overlay: dict) -> tuple[dict, dict]:
    config = merge(load_config_file(ROOT / "config.yaml"), copy.deepcopy(overlay))
    return config, validate(config, base_dir=ROOT)


def runs(overlay: dict) -> dict:
    config, models = configured(overlay)
    return {r.method: r for r in grid_runs(config, config["grid"], models, base=ROOT)}


def refused(overlay: dict) -> str:
    config = merge(load_config_file(ROOT / "config.yaml"), copy.deepcopy(overlay))
    with pytest.raises(UserError) as info:
        validate(config, base_dir=ROOT)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ config
def test_schema_methods_are_the_registry() -> None:
    schema = load_schema()
    grid_methods = schema["properties"]["grids"]["additionalProperties"]["properties"]["methods"]["items"]["enum"]
    assert grid_methods == list(methods.names()) == schema["$defs"]["export"]["properties"]["method"]["enum"]


def test_config_accepts_registry_methods_with_options() -> None:
    overlay = {**ALL, "method_options": {"distill": {"gamma": 0.3}, "sep": {"separation": 0.25}}}
    overlay["grids"] = {"all": {**ALL["grids"]["all"], "methods": ["ee", "pabee", "distill", "sep"],
                                "method_options": {"distill": {"temperature": 4}}}}
    by_method = runs(overlay)
    assert set(by_method) == {"ee", "pabee", "distill", "sep"}
    # the grid's options merge key by key over the top level's, completed with the defaults
    assert by_method["distill"].identity["method_options"] == {"gamma": 0.3, "temperature": 4.0}
    assert by_method["sep"].identity["method_options"] == {"separation": 0.25}
    assert "separation=0.25" in by_method["sep"].settings
    assert "gamma=0.3" in by_method["distill"].settings and "temperature=4" in by_method["distill"].settings


@pytest.mark.parametrize("overlay, fragments", [
    ({"grids": {"demo": {"method_options": {"distill": {"gamma": 2}}}}},
     ("grids.demo.method_options.distill.gamma:", "outside")),
    ({"method_options": {"sep": {"alpha": 0.5}}}, ("method_options.sep.alpha:", "no such option", "separation")),
    ({"method_options": {"nope": {}}}, ("method_options.nope:", "not a method", "sweet")),
    ({"method_options": {"sep": {"separation": "half"}}}, ("method_options.sep.separation",)),
    ({"grids": {"demo": {"methods": ["ee", "nope"]}}}, ("grids.demo.methods.1", "pabee")),
])
def test_bad_method_options_are_refused_in_one_line(overlay: dict, fragments: tuple[str, ...]) -> None:
    message = refused(overlay)
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------------------------ identity
def test_paper_methods_keep_their_run_ids() -> None:
    config, models = configured({"grid": "smoke"})
    planned = {Path(r.dir).parent.name for r in grid_runs(config, "smoke", models, base=ROOT)}
    assert planned == SMOKE_RUNS_BEFORE
    for run in runs(ALL).values():
        assert ("method_options" in run.identity) == bool(methods.get(run.method).options)


def test_method_options_are_identity() -> None:
    base = runs(ALL)
    assert base["sep"].identity["method_options"] == {"separation": 0.5}
    changed = runs({**ALL, "method_options": {"sep": {"separation": 0.25}}})
    assert changed["sep"].run_id != base["sep"].run_id
    # the defaults written out are the defaults; other methods' runs do not move
    assert runs({**ALL, "method_options": {"sep": {"separation": 0.5}}})["sep"].run_id == base["sep"].run_id
    assert {m: r.run_id for m, r in changed.items() if m != "sep"} == \
        {m: r.run_id for m, r in base.items() if m != "sep"}


def test_training_options_follow_what_each_method_reads() -> None:
    assert METHOD_TRAINING_OPTIONS["gradient_conflict_every"] == ("ee",)
    assert set(METHOD_TRAINING_OPTIONS["shared_pooler"]) == set(methods.names("joint"))


def test_training_cost_scales_the_runtime_estimate() -> None:
    config, models = configured(ALL)
    jobs = training_jobs(config, models)
    assert sorted({job[4] for job in jobs}) == sorted(methods.names())
    assert sum(job[0] == "train_member" for job in jobs) == len(models["tiny-bert"].exit_layers)
    estimate = Estimator(config, gpus=0, threads=1)
    model = models["tiny-bert"]
    ee, deebert = (estimate.train_estimate(model, 1000, None, m) - 10 for m in ("ee", "deebert"))
    assert deebert == pytest.approx(2 * ee)


# ------------------------------------------------------------------------------------------------ workflow
@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
@pytest.mark.parametrize("options_from", ["configfile", "command line"])
def test_dry_run_plans_every_registry_method(tmp_path: Path, options_from: str) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    import yaml

    options = {"sep": {"separation": 0.25}}
    overlay = {**ALL, "method_options": options} if options_from == "configfile" else ALL
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    cmd = ["snakemake", "-n", "-p", "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--configfile", str(tmp_path / "overlay.yaml")]
    if options_from == "command line":  # snakemake reads it with YAML's BaseLoader: every number a string
        cmd += ["--config", "method_options={sep: {separation: 0.25}}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    joint, per_exit = len(methods.names("joint")), len(methods.names("per-exit"))
    assert jobs["train"] == joint and jobs["combine"] == per_exit
    assert jobs["train_member"] == 4 * per_exit  # tiny-bert's four exits
    assert jobs["evaluate"] == len(methods.names())
    for name in methods.names("joint"):
        assert re.search(rf"--method {name} ", result.stdout), name
    # the options reach `sweet train` in the run record (run.json), which the split job writes
    assert '"method_options": {"separation": 0.25}' in result.stdout
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_method_choices_are_the_registry() -> None:
    from sweet.cli import build_parser

    parser = build_parser()
    actions = {name: {a.dest: a for a in sub._actions}
               for name, sub in next(a for a in parser._actions if a.dest == "command").choices.items()}
    assert tuple(actions["train"]["method"].choices) == methods.names()
    assert tuple(actions["audit"]["method"].choices) == methods.names("joint")
    assert actions["train"]["method_options"].default == {}
    parsed = parser.parse_args(["train", "--task-dir", "t", "--splits", "s", "--backbone", "b", "--exit-layers", "1",
                                "--method", "sep", "--seed", "1", "--out", "o", "--metrics", "m",
                                "--method-options", '{"separation": 0.25}'])
    assert parsed.method_options == {"separation": 0.25}


def test_migrate_examines_only_the_methods_the_old_layout_had(tmp_path: Path) -> None:
    """The layout before run ids held EE, SWEET and MM runs only: a folder named after another method is nobody's."""
    from sweet.plan.migrate import candidates

    config, models = configured({**ALL, "grids": {"all": {**ALL["grids"]["all"], "methods": ["ee", "pabee"]}}})
    by_method = {r.method: r for r in grid_runs(config, "all", models, base=ROOT)}
    for run in by_method.values():
        (tmp_path / run.legacy_dir).mkdir(parents=True)
    found = candidates(config, models, grids=["all"], root=tmp_path)
    assert [c.run.method for c in found] == ["ee"]
    assert "train_metrics.json" in found[0].why_not  # an empty folder is no finished run
