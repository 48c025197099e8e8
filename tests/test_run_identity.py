"""A run's folder is what it computes (sweet.plan.layout): settings that change numbers change the run id, operational
ones do not; two grids that differ never share a folder, two that agree share it; calibration is not training;
runs of the layout before run ids are recognised and moved, never silently retrained."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_workflow_kill import _copy_tree

from sweet import methods
from sweet.plan.config import load_config_file, merge, validate
from sweet.plan.layout import calibration_key, grid_runs, run_id, run_identity, training_identity
from sweet.plan.settings import TrainSpec

ROOT = Path(__file__).resolve().parents[1]


def config_with(overlay: dict, base: Path = ROOT) -> tuple[dict, dict]:
    config = merge(load_config_file(ROOT / "config.yaml"), overlay)
    return config, validate(config, base_dir=base)


def only_run(config: dict, models: dict, grid: str | None = None, gpus: int = 0, base: Path = ROOT):
    runs = grid_runs(config, grid or config["grid"], models, gpus, base)
    assert len(runs) == 1
    return runs[0]


ONE_RUN = {"grid": "one", "grids": {"one": {"tasks": ["synthetic"], "models": ["tiny-bert"], "budgets": [1000],
                                            "methods": ["ee"], "seeds": [1]}}}


def one_run_with(**changes):
    overlay = json.loads(json.dumps(ONE_RUN))
    for key, value in changes.items():
        target = overlay
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    config, models = config_with(overlay)
    return only_run(config, models)


# ------------------------------------------------------------------------------------------------ identity
def test_training_defaults_are_the_train_specs() -> None:
    """TrainSpec is the one source of the defaults: a run that spells every default out is the run that gives none."""
    spelled_out = dataclasses.asdict(TrainSpec())
    for method in methods.names():
        for gpus in (0, 1):
            assert training_identity(spelled_out, method, gpus) == training_identity({}, method, gpus)


def test_what_changes_numbers_changes_the_run_id_and_nothing_else_does() -> None:
    base = one_run_with()
    assert re.fullmatch(r"[0-9a-f]{8}", base.run_id) and base.run_id == run_id(base.identity)
    assert base.dir == f"results/runs/synthetic/tiny-bert/b1000/ee-{base.run_id}/s1"
    assert base.calibrated_dir == f"{base.dir}/cal-pool1000"
    changed = {
        "grids.one.training.learning_rate": 5e-4,
        "grids.one.training.shared_pooler": True,
        "grids.one.training.warmup_ratio": 0.1,
        "grids.one.training.gradient_conflict_every": 3,  # EE records the probe's CSV
        "grids.one.budgets": [2000],
        "grids.one.seeds": [2],
        "models.tiny-bert.exit_layers": [1, 3, 6],
        "models.tiny-bert.pooling": "mean",
        "models.tiny-bert.backbone.seed": 1,
        "tasks.synthetic.train_size": 5000,
    }
    ids = {key: one_run_with(**{key: value}).run_id for key, value in changed.items()}
    assert base.run_id not in ids.values() and len(set(ids.values())) == len(ids), ids
    same = {
        "grids.one.training.save_steps": 7,  # a checkpoint interval
        "grids.one.training.report_to": "tensorboard",  # where the training curves are also logged
        "grids.one.training.precision": "bf16",  # no effect on a CPU job
        "grids.one.training.epochs": 8,  # tiny-bert's own 8 epochs, written as an int
        "models.tiny-bert.pooling": "cls",  # BERT's default, written out
        "threads": 2,
        "hub_cache": "/elsewhere",
        "scratch_dir": "/scratch",
        "keep_checkpoints": True,
        "eval_batch_size": 8,
    }
    for key, value in same.items():
        assert one_run_with(**{key: value}).run_id == base.run_id, key
    # calibration names the subfolder, not the run
    calibrated = one_run_with(calibration_size=500)
    assert calibrated.run_id == base.run_id and calibrated.calibrated_dir == f"{base.dir}/cal-pool500"
    # (calibrating on the evaluation set voids risk control's guarantee: the configuration turns it off to ask)
    eval_calibrated = one_run_with(calibrate_on="eval", **{"risk_control.enabled": False})
    assert eval_calibrated.calibrated_dir == f"{base.dir}/cal-eval"


def test_report_to_is_operational_for_every_method() -> None:
    """Where the training curves are also logged (training.report_to) changes no number: no method's run id."""
    for method in ("ee", "sweet", "mm"):
        base = one_run_with(**{"grids.one.methods": [method]})
        for report_to in ("tensorboard", "wandb", "mlflow"):
            run = one_run_with(**{"grids.one.methods": [method], "grids.one.training.report_to": report_to})
            assert run.run_id == base.run_id and run.settings == base.settings, (method, report_to)
            assert "report_to" not in run.identity["training"]


def test_options_a_method_ignores_are_not_its_identity() -> None:
    def ids(method: str, **training) -> set[str]:
        return {one_run_with(**{"grids.one.methods": [method], **{f"grids.one.training.{k}": v
                                                                 for k, v in training.items()}}).run_id}

    assert ids("sweet") == ids("sweet", gradient_conflict_every=5)  # the probe runs on EE only
    assert ids("mm") == ids("mm", gradient_conflict_every=5) == ids("mm", shared_pooler=True)
    assert ids("sweet") != ids("sweet", shared_pooler=True)
    # mixed precision is identity where jobs get a GPU
    config, models = config_with({**ONE_RUN, "training": {"precision": "bf16"}})
    assert only_run(config, models, gpus=1).run_id != only_run(config, models, gpus=0).run_id


def test_settings_column_and_records_name_what_differs_from_the_defaults() -> None:
    run = one_run_with(**{"grids.one.training.learning_rate": 5e-4})
    assert run.settings == "learning_rate=0.0005;epochs=8.0;max_length=64"
    assert run.meta()["run_id"] == run.run_id and run.record()["identity"] == run.identity


def test_local_data_and_hub_revisions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"word{i % 7} w{i}\t{i % 2}\n" for i in range(200))
    (data / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (data / "dev.tsv").write_text("sentence\tlabel\n" + rows[:2000])
    task = {"source": "local", "train": "data/train.tsv", "eval": "data/dev.tsv", "text_column": "sentence",
            "label_column": "label"}
    overlay = {"grid": "loc", "calibration_size": 50, "tasks": {"loc": task},
               "grids": {"loc": {"tasks": ["loc"], "models": ["tiny-bert"], "budgets": [100], "methods": ["ee"],
                                 "seeds": [1]}}}
    config, models = config_with(overlay, tmp_path)
    first = only_run(config, models, base=tmp_path)
    # the files' content is the identity, not where they are
    shutil.move(data, tmp_path / "moved")
    moved = merge(overlay, {"tasks": {"loc": {**task, "train": "moved/train.tsv", "eval": "moved/dev.tsv"}}})
    config, models = config_with(moved, tmp_path)
    assert only_run(config, models, base=tmp_path).run_id == first.run_id
    (tmp_path / "moved" / "train.tsv").write_text("sentence\tlabel\n" + rows.replace("\t1\n", "\t0\n", 3))
    assert only_run(config, models, base=tmp_path).run_id != first.run_id

    hub = {"grid": "hub", "models": {"hubby": {"backbone": "bert-base-uncased", "exit_layers": [1, 12]}},
           "grids": {"hub": {"tasks": ["synthetic"], "models": ["hubby"], "budgets": [100], "methods": ["ee"],
                             "seeds": [1]}}}
    config, models = config_with(hub)
    at_main = only_run(config, models)
    assert at_main.identity["backbone"] == {"hub": "bert-base-uncased", "revision": "main"}
    config, models = config_with(merge(hub, {"models": {"hubby": {"revision": "86b5e0934494bd15c9632b12f734a8a67f723594"}}}))
    pinned = only_run(config, models)
    assert pinned.run_id != at_main.run_id and pinned.settings.endswith("revision=86b5e0934494bd15c9632b12f734a8a67f723594")


def test_revision_on_a_non_hub_backbone_is_refused() -> None:
    from sweet.errors import UserError

    with pytest.raises(UserError, match=r"^models\.tiny-bert\.revision: only a hub backbone"):
        config_with({"models": {"tiny-bert": {"revision": "v1"}}})


def test_calibration_key() -> None:
    assert calibration_key({}) == "cal-pool1000"
    assert calibration_key({"calibration_size": 50}) == "cal-pool50"
    assert calibration_key({"calibrate_on": "eval", "calibration_size": 50}) == "cal-eval"


def test_identity_is_planned_without_torch() -> None:
    code = ("import sys; from sweet.plan.config import load_config_file, validate; from sweet.plan.layout import grid_runs; "
            "c = load_config_file('config.yaml'); c['grid'] = 'paper'; m = validate(c); grid_runs(c, 'paper', m); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_identity_is_json() -> None:
    config, models = config_with(ONE_RUN)
    identity = run_identity(config, models["tiny-bert"], "synthetic", "ee", 1000, 1, "one")
    assert json.loads(json.dumps(identity)) == identity


# ------------------------------------------------------------------------------------------------ workflow
# A grid small enough to train in seconds: two grids that differ only in the learning rate, and a third with the
# first one's settings under another name.
OVERLAY = """
tasks:
  id-task: {source: synthetic, train_size: 400, eval_size: 120}
models:
  id-bert:
    backbone: {model_type: bert, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2,
               intermediate_size: 32, max_position_embeddings: 64, tokenizer: synthetic, seed: 0}
    exit_layers: [1, 2]
    training: {learning_rate: 1.0e-3, epochs: 1, max_length: 32, batch_size: 32}
calibration_size: 100
grids:
  id-a: {tasks: [id-task], models: [id-bert], budgets: [100], methods: [ee], seeds: [1]}
  id-b: {tasks: [id-task], models: [id-bert], budgets: [100], methods: [ee], seeds: [1],
         training: {learning_rate: 5.0e-4}}
  id-c: {tasks: [id-task], models: [id-bert], budgets: [100], methods: [ee], seeds: [1]}
  id-k: {tasks: [id-task], models: [id-bert], budgets: [100], methods: [ee], seeds: [2]}
"""


def snakemake(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile",
                             "overlay.yaml"], cwd=repo, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    output = result.stdout + result.stderr
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[3:] if line.strip()
            and line.split()[0] != "total"}


def tables(repo: Path, grid: str) -> dict[str, bytes]:
    folder = repo / "results" / grid / "tables"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def train_dirs(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"results/runs/id-task/id-bert/b100/ee-[0-9a-f]{8}/s1/train_metrics\.json",
                          result.stdout))


def calibrated_folder(repo: Path, grid: str) -> Path:
    """The calibrated folder of a one-run grid's run, as its runs.csv names it."""
    runs = pd.read_csv(repo / "results" / grid / "tables" / "runs.csv", dtype=str)
    return repo / runs["run"].iloc[0]


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each grid's tables, run alone in a repository of its own."""
    found = {}
    for grid in ("id-a", "id-b"):
        repo = _copy_tree(tmp_path_factory.mktemp(grid))
        (repo / "overlay.yaml").write_text(OVERLAY)
        snakemake(repo, "tables", "--config", f"grid={grid}")
        found[grid] = tables(repo, grid)
    return found


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = _copy_tree(tmp_path_factory.mktemp("shared"))
    (repo / "overlay.yaml").write_text(OVERLAY)
    return repo


@pytest.mark.slow  # real grids through Snakemake: minutes on 2 cores
def test_grids_that_differ_never_share_a_run_and_grids_that_agree_do(
        shared: Path, alone: dict[str, dict[str, bytes]]) -> None:
    repo = shared
    plans = {g: snakemake(repo, "-n", "tables", "--config", f"grid={g}") for g in ("id-a", "id-b")}
    assert planned(plans["id-a"])["train"] == planned(plans["id-b"])["train"] == 1
    a_dir, b_dir = train_dirs(plans["id-a"]), train_dirs(plans["id-b"])
    assert len(a_dir) == len(b_dir) == 1 and a_dir != b_dir  # two trainings, two folders

    snakemake(repo, "tables", "--config", "grid=id-a")
    second = snakemake(repo, "tables", "--config", "grid=id-b")
    assert planned(second).get("train") == 1  # b trains its own run, beside a's
    third = snakemake(repo, "tables", "--config", "grid=id-a")
    assert "train" not in planned(third)  # a's run is untouched by b
    assert tables(repo, "id-a") == alone["id-a"] and tables(repo, "id-b") == alone["id-b"]
    # each grid's tables carry its run id and the settings that differ
    runs_a = pd.read_csv(repo / "results" / "id-a" / "tables" / "runs.csv", dtype=str)
    runs_b = pd.read_csv(repo / "results" / "id-b" / "tables" / "runs.csv", dtype=str)
    assert runs_a["run_id"].tolist() != runs_b["run_id"].tolist()
    assert runs_b["settings"].str.contains("learning_rate=0.0005").all()
    assert not runs_a["settings"].str.contains("learning_rate=0.0005").any()

    # another name, the same settings: the same run, nothing trained
    c = snakemake(repo, "tables", "--config", "grid=id-c")
    assert "train" not in planned(c)
    assert pd.read_csv(repo / "results" / "id-c" / "tables" / "runs.csv", dtype=str)["run_id"].tolist() == \
        runs_a["run_id"].tolist()

    # where things are kept, how often to checkpoint, how many threads: no run redone (a new save_steps is
    # still recorded in the grid's grid.json, so its tables are redrawn)
    for extra in ("training={save_steps: 7}", "threads=2", f"hub_cache={repo / 'elsewhere'}",
                  f"scratch_dir={repo / 'scratch'}"):
        result = snakemake(repo, "-n", "tables", "--config", "grid=id-a", extra)
        assert set(planned(result)) <= {"aggregate", "tables"}, (extra, result.stdout[-2000:])


@pytest.mark.slow  # real grids through Snakemake: minutes on 2 cores
def test_a_grid_never_counts_a_folder_recording_other_settings(shared: Path) -> None:
    repo = shared
    snakemake(repo, "tables", "--config", "grid=id-a")
    run = calibrated_folder(repo, "id-a").parent / "run.json"
    record = json.loads(run.read_text())
    run.write_text(json.dumps({**record, "run_id": "ffffffff"}))
    try:
        result = snakemake(repo, "tables", "--config", "grid=id-a", "partial=true")
        assert planned(result).get("aggregate") == 1
        status = (repo / "results" / "id-a" / "tables" / "status.txt").read_text()
        assert status.startswith("PARTIAL: 0 of 1 runs of grid 'id-a' finished") and "1 other settings" in status
        missing = (repo / "results" / "id-a" / "tables" / "missing_runs.txt").read_text()
        assert "not this grid's run: its run.json records run id 'ffffffff'" in missing
    finally:
        run.write_text(json.dumps(record))


@pytest.mark.slow  # real grids through Snakemake: minutes on 2 cores
def test_calibration_is_not_training(shared: Path) -> None:
    repo = shared
    snakemake(repo, "tables", "--config", "grid=id-k", "keep_checkpoints=true")  # the trained model is kept
    result = snakemake(repo, "tables", "--config", "grid=id-k", "keep_checkpoints=true", "calibration_size=60")
    jobs = planned(result)
    assert "train" not in jobs and "split" not in jobs, jobs
    assert jobs["calibrate"] == jobs["evaluate"] == 1
    run = calibrated_folder(repo, "id-k")
    assert run.name == "cal-pool60"
    assert json.loads((run / "temperatures.json").read_text())["n_examples"] == 60
    assert (run.parent / "cal-pool100" / "temperatures.json").is_file()  # the first calibration is kept
    runs = pd.read_csv(repo / "results" / "id-k" / "tables" / "runs.csv", dtype=str)
    assert runs["calibration"].tolist() == ["cal-pool60"]
    # without the kept model a new calibration needs the model again: the plan says it retrains
    plan = snakemake(repo, "-n", "tables", "--config", "grid=id-a", "calibration_size=60")
    assert planned(plan).get("train") == 1


@pytest.mark.slow  # real grids through Snakemake: minutes on 2 cores
def test_runs_of_the_layout_before_run_ids_are_moved_not_retrained(shared: Path) -> None:
    repo = shared
    snakemake(repo, "tables", "--config", "grid=id-a")
    expected = tables(repo, "id-a")
    # Rewrite a's run the way the layout before run ids kept it (one folder, one splits.json, no run ids).
    run = calibrated_folder(repo, "id-a")
    trained = run.parent
    legacy = trained.parent.parent / "ee" / "s1"
    legacy.mkdir(parents=True)
    splits = {**json.loads((trained / "splits.json").read_text()),
              **json.loads((run / "calibration.json").read_text())}
    (legacy / "splits.json").write_text(json.dumps(splits))
    os.utime(legacy / "splits.json", ns=(0, (trained / "splits.json").stat().st_mtime_ns))
    for name in ("train_metrics.json", "gradient_conflict.csv"):
        os.replace(trained / name, legacy / name)
    for name in ("temperatures.json", "logits.npz", "curves.csv", "individual_exits.csv"):
        os.replace(run / name, legacy / name)
    for name in ("curves.csv", "individual_exits.csv", "gradient_conflict.csv"):
        stamp = (legacy / name).stat()
        frame = pd.read_csv(legacy / name, dtype=str, keep_default_na=False)
        frame.drop(columns=[c for c in ("run_id", "settings", "calibration") if c in frame]).to_csv(
            legacy / name, index=False)
        os.utime(legacy / name, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    record = json.loads((legacy / "train_metrics.json").read_text())
    for key in ("run_id", "settings", "identity"):
        record.pop(key)
    (legacy / "train_metrics.json").write_text(json.dumps(record))
    shutil.rmtree(trained.parent)
    shutil.rmtree(repo / ".snakemake" / "metadata", ignore_errors=True)
    shutil.rmtree(repo / "results" / "id-a")

    refused = snakemake(repo, "-n", "tables", "--config", "grid=id-a", check=False)
    assert refused.returncode == 1
    assert "in the layout before run ids" in refused.stderr and "python -m sweet migrate-runs" in refused.stderr
    dry = subprocess.run([sys.executable, "-m", "sweet", "migrate-runs", "--configfile", "overlay.yaml",
                          "--dry-run"], cwd=repo, capture_output=True, text=True, check=True)
    assert "would move" in dry.stdout and legacy.is_dir()
    moved = subprocess.run([sys.executable, "-m", "sweet", "migrate-runs", "--configfile", "overlay.yaml"],
                           cwd=repo, capture_output=True, text=True, check=True)
    assert "moved" in moved.stdout and not legacy.exists()
    result = snakemake(repo, "tables", "--config", "grid=id-a")
    assert set(planned(result)) <= {"aggregate", "tables"}, planned(result)  # no training, no evaluation
    # the same tables, except that a run of the old layout kept no calibration logits: no held-out points
    held_out = {"operating_points.csv", "envelope_gap.csv", "risk_control.csv", "risk_control_summary.csv",
                "risk_control_common.csv", "claims_operating_points.csv"}
    after = tables(repo, "id-a")
    assert {k: v for k, v in after.items() if k not in held_out} == \
        {k: v for k, v in expected.items() if k not in held_out}
    assert len(pd.read_csv(repo / "results" / "id-a" / "tables" / "operating_points.csv")) == 0


# ------------------------------------------------------------------------------------------------ revisions
def test_a_grid_trained_on_two_revisions_of_a_backbone_says_so() -> None:
    from sweet.reporting.tables import revision_warning, status_line

    runs = pd.DataFrame({"model": ["m", "m", "m", "other"], "status": ["finished"] * 4,
                         "backbone_revision": ["a" * 40, "a" * 40, "b" * 40, "c" * 40]})
    assert status_line(runs, "g") == "complete: all 4 runs of grid 'g' finished."
    warning = revision_warning(runs)
    assert warning.startswith("REVISIONS DIFFER: runs of m (aaaaaaaaaaaa: 2 runs, bbbbbbbbbbbb: 1 run)")
    assert "other" not in warning and "models.<name>.revision" in warning
    assert revision_warning(runs[runs["model"] == "other"]) == ""
