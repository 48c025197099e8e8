"""`snakemake -n` on the shipped grids, on a user's overlay, and on bad configurations.

Each test runs snakemake in a fresh folder holding only a copy of config.yaml (the Snakefile is the checkout's),
so nothing is written into the repository and "nothing under results/" can be checked exactly. No network: a dry
run plans, it never downloads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def dry_run(workdir: Path, *args: str, overlay: str | None = None) -> subprocess.CompletedProcess:
    if not (workdir / "config.yaml").exists():
        shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    cmd = ["snakemake", "-n", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]
    if overlay is not None:
        (workdir / "overlay.yaml").write_text(overlay)
        cmd += ["--configfile", str(workdir / "overlay.yaml")]
    cmd += list(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def assert_refused(result: subprocess.CompletedProcess, *fragments: str, workdir: Path) -> None:
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (workdir / "results").exists()


# ------------------------------------------------------------------------------------------------ shipped grids
def test_default_grid_plans(tmp_path: Path) -> None:
    result = dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = job_counts(result.stdout)
    # demo: 1 task × 1 model × 2 budgets × 2 seeds = 4 per method; MM has one job per member (4 exits).
    assert jobs["train"] == 8 and jobs["train_member"] == 16 and jobs["combine"] == 4
    assert jobs["evaluate"] == 12 and jobs["curves"] == 12 and jobs["calibrate"] == 12
    assert jobs["operating_points"] == 12  # one per run, from calibration_logits.npz and logits.npz
    assert "latency" not in jobs  # opt-in (latency:)
    assert jobs["prepare"] == 1 and jobs["init_backbone"] == 1
    assert jobs["aggregate"] == 1 and jobs["plot_figures"] == 1 and jobs["write_report"] == 1
    assert "grid 'demo': 12 runs" in result.stderr
    for output in ("results/demo/tables", "results/demo/figures", "results/demo/report.html"):
        assert output in result.stdout
    assert not (tmp_path / "results").exists()


def test_smoke_grid_plans(tmp_path: Path) -> None:
    result = dry_run(tmp_path, "--config", "grid=smoke")
    assert result.returncode == 0, result.stderr
    jobs = job_counts(result.stdout)
    assert jobs["evaluate"] == 3 and jobs["train"] == 2 and jobs["train_member"] == 4


def test_paper_grid_plans_offline_and_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    result = dry_run(tmp_path, "--config", "grid=paper")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 15, f"planning the paper grid took {elapsed:.1f} s"
    jobs = job_counts(result.stdout)
    assert jobs["evaluate"] == 4 * 4 * 3 * 3  # tasks × models × methods × seeds
    assert "init_backbone" not in jobs  # hub backbones are loaded by the training jobs
    # The disk footprint, with and without kept checkpoints, before anything runs.
    line = next(ln for ln in result.stderr.splitlines() if "expected disk" in ln)
    assert "without checkpoints" in line and "with keep_checkpoints: true" in line
    assert re.search(r"results/runs/sst2/microsoft--deberta-base/b6000/mm-[0-9a-f]{8}/s1/model/member_4", result.stdout)
    assert not (tmp_path / "results").exists()


def test_cluster_groups_calibration_with_evaluation_but_never_with_training(tmp_path: Path) -> None:
    """With a cluster executor, a run's calibrate + evaluate go out as one group job; training stays alone, so a
    failed evaluation (which makes snakemake clean every output of its group) cannot delete a finished training."""
    result = dry_run(tmp_path, "--config", "grid=smoke", "--executor", "slurm", "--jobs", "10")
    if "slurm" in result.stderr and result.returncode != 0:
        pytest.skip("the slurm executor plugin is not installed")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("Group job evaluate")[1:]
    assert len(blocks) == 3, result.stdout[-3000:]  # EE, SWEET, MM
    for block in blocks:
        # The group's members are indented; the next job outside the group starts at column 0.
        members = re.split(r"\n(?=\S)", block.split("\n", 1)[1], maxsplit=1)[0]
        assert sorted(re.findall(r"^\s+rule (\w+):", members, re.M)) == ["calibrate", "evaluate"], members


def test_latency_is_planned_when_asked_inside_the_evaluation_group(tmp_path: Path) -> None:
    """latency: (here per grid) plans one latency job per run; on a cluster it joins the run's evaluation group
    (with operating_points, which it reads), so it adds no submission."""
    overlay = ("grids:\n  smoke:\n    latency: {batch_sizes: [1, 32], examples: 64}\n"
               "cluster: {max_runtime_minutes: 40}\n")
    result = dry_run(tmp_path, "--config", "grid=smoke", overlay=overlay)
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["latency"] == 3
    result = dry_run(tmp_path, "--config", "grid=smoke", "--executor", "slurm", "--jobs", "10", overlay=overlay)
    if "slurm" in result.stderr and result.returncode != 0:
        pytest.skip("the slurm executor plugin is not installed")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("Group job evaluate")[1:]
    assert len(blocks) == 3
    for block in blocks:
        members = re.split(r"\n(?=\S)", block.split("\n", 1)[1], maxsplit=1)[0]
        assert sorted(re.findall(r"^\s+rule (\w+):", members, re.M)) == [
            "calibrate", "evaluate", "latency", "operating_points"], members
        # the group asks Slurm for the sum of its members' runtimes: within the partition's cap
        assert sum(int(m) for m in re.findall(r"\bruntime=(\d+)", members)) <= 40, members


def test_latency_refuses_to_retrain_a_finished_run(tmp_path: Path) -> None:
    """latency: turned on after a run finished without its model (keep_checkpoints: false) would retrain it: one
    line says so before anything runs. A run whose latency.csv exists, or that has not been evaluated, is planned."""
    from sweet.plan.config import load_config_file, validate
    from sweet.plan.layout import grid_runs

    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    config = load_config_file(str(tmp_path / "config.yaml"))
    runs = grid_runs(config, "smoke", validate(config, base_dir=ROOT), base=tmp_path)
    finished = Path(runs[0].calibrated_dir)
    finished = finished if finished.is_absolute() else tmp_path / finished
    finished.mkdir(parents=True)
    (finished / "logits.npz").write_bytes(b"")  # evaluated; its model (keep_checkpoints: false) is gone
    overlay = "latency: {batch_sizes: [1]}\n"
    result = dry_run(tmp_path, "--config", "grid=smoke", overlay=overlay)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "latency: run" in errors[0] and "would retrain it" in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    (finished / "latency.csv").write_text("")  # measured before: nothing to retrain for
    result = dry_run(tmp_path, "--config", "grid=smoke", overlay=overlay)
    assert result.returncode == 0, result.stderr


def test_keep_checkpoints_keeps_weights(tmp_path: Path) -> None:
    """Trained weights are temp() (deleted once evaluated) unless keep_checkpoints: true."""
    model = re.compile(r"results/runs/synthetic-smoke/tiny-bert/b200/ee-[0-9a-f]{8}/s1/model\t")

    def model_row(*extra: str) -> str:
        result = dry_run(tmp_path, "--config", "grid=smoke", *extra, "--summary")
        assert result.returncode == 0, result.stderr
        return next(ln for ln in result.stdout.splitlines() if model.match(ln))

    assert "temp" in model_row()
    assert "temp" not in model_row("keep_checkpoints=true")


# ------------------------------------------------------------------------------------------------ overlays
def test_overlay_adds_a_local_task_a_model_and_a_grid(tmp_path: Path) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(300))
    (data / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (data / "dev.tsv").write_text("sentence\tlabel\n" + rows[:400])
    overlay = """
grid: mine
tasks:
  my-task: {source: local, train: mydata/train.tsv, eval: mydata/dev.tsv, text_column: sentence,
            label_column: label}
models:
  tiny-3:
    backbone: {model_type: bert, hidden_size: 32, num_hidden_layers: 3, num_attention_heads: 2,
               intermediate_size: 64, tokenizer: synthetic, seed: 0}
    exit_layers: [1, 3]
calibration_size: 50
grids:
  mine: {tasks: [my-task], models: [tiny-3, tiny-bert], budgets: [100], methods: [ee, mm], seeds: [3]}
"""
    result = dry_run(tmp_path, overlay=overlay)
    assert result.returncode == 0, result.stderr
    assert re.search(r"results/runs/my-task/tiny-3/b100/mm-[0-9a-f]{8}/s3/model/member_2", result.stdout)
    assert re.search(r"results/runs/my-task/tiny-bert/b100/ee-[0-9a-f]{8}/s3/cal-pool50/logits.npz", result.stdout)
    assert "mydata/train.tsv" in result.stdout  # the local files are inputs of `prepare`


# ------------------------------------------------------------------------------------------------ bad configs
BAD = [
    ("unknown grid", None, ["--config", "grid=nope"], ["grid:", "nope"]),
    ("unknown task", "grids:\n  demo: {tasks: [nope]}\n", [], ["grids.demo.tasks", "nope"]),
    ("unknown model", "grids:\n  demo: {models: [nope]}\n", [], ["grids.demo.models", "nope"]),
    ("unknown method", "grids:\n  demo: {methods: [ee, fast]}\n", [], ["grids.demo.methods.1", "fast"]),
    ("negative seed", "grids:\n  demo: {seeds: [-1]}\n", [], ["grids.demo.seeds.0"]),
    ("float seed", "grids:\n  demo: {seeds: [1.5]}\n", [], ["grids.demo.seeds.0"]),
    ("negative budget", "grids:\n  demo: {budgets: [-100]}\n", [], ["grids.demo.budgets.0"]),
    ("string budget", "grids:\n  demo: {budgets: [lots]}\n", [], ["grids.demo.budgets.0"]),
    ("decreasing exits", "models:\n  tiny-bert: {exit_layers: [4, 2]}\n", [],
     ["models.tiny-bert.exit_layers", "strictly increasing", "[4, 2]"]),
    ("zero exit", "models:\n  tiny-bert: {exit_layers: [0, 2]}\n", [], ["models.tiny-bert.exit_layers"]),
    ("exit beyond depth", "models:\n  tiny-bert: {exit_layers: [1, 7]}\n", [],
     ["models.tiny-bert.exit_layers", "6 layers"]),
    ("budget beyond pool", "grids:\n  demo: {budgets: [3990]}\n", [], ["grids.demo.budgets", "3990"]),
    ("missing local file",
     "tasks:\n  t: {source: local, train: nowhere.csv, eval: nowhere.csv, text_column: a, label_column: b}\n"
     "grids:\n  demo: {tasks: [t]}\n", [], ["tasks.t.train", "nowhere.csv"]),
    ("path escape", "tasks:\n  ../../etc: {source: synthetic}\n", [], ["tasks", "../../etc"]),
    ("misspelt key", "keep_checkpoint: true\n", [], ["keep_checkpoint", "unknown key"]),
    ("negative gpus", None, ["--config", "gpus=-1"], ["gpus"]),
    ("grid named like a results folder", "grids:\n  runs: {tasks: [synthetic], models: [tiny-bert], budgets: [100], "
     "methods: [ee], seeds: [1]}\n", [], ["grids.runs", "results/runs/", "rename the grid"]),
    ("partial not a boolean", None, ["--config", "partial=maybe"], ["partial", "true or false"]),
    ("misspelt claims key", "claims: {margins: 2}\n", [], ["claims.margins", "unknown key"]),
    ("slow above fast", "claims: {slow_speedup: 3}\n", [], ["claims.slow_speedup", "fast_speedup"]),
]


@pytest.mark.parametrize(("overlay", "args", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused_before_any_job(tmp_path: Path, overlay: str | None, args: list[str],
                                              fragments: list[str]) -> None:
    assert_refused(dry_run(tmp_path, *args, overlay=overlay), *fragments, workdir=tmp_path)


def test_unreadable_default_config_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("grid: demo\ngrids: {demo: [\n")
    assert_refused(dry_run(tmp_path), "config.yaml:", "not valid YAML", workdir=tmp_path)


def test_no_traceback_through_the_real_run_path(tmp_path: Path) -> None:
    """Not only -n: a real invocation with a bad config stops the same way before any job."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
           "--cores", "1", "--config", "grid=nope"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert_refused(result, "grid:", workdir=tmp_path)
