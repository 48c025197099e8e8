"""`snakemake tables | figures | report` exactly as typed, one results folder per grid, and partial grids, through
the real workflow in a copy of the repository. Runs are fake (their CSVs written by hand, see test_figures), so
nothing trains: the reporting rules are what runs, and any planned training job would fail the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_figures import write_fake_run
from test_workflow_kill import _copy_tree

from sweet.plan.config import load_config_file, validate
from sweet.plan.layout import Run, grid_runs

pytestmark = [pytest.mark.slow,  # the real workflow in a copy of the repository: minutes on 2 cores
              pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")]

SMOKE = [("synthetic-smoke", 200, method, 1) for method in ("ee", "sweet", "mm")]
DEMO = [("synthetic", budget, method, seed) for budget in (1000, 2000) for method in ("ee", "sweet", "mm")
        for seed in (1, 2)]
TRAINING_RULES = ("prepare", "init_backbone", "split", "train", "train_member", "combine", "calibrate", "evaluate",
                  "curves")


def snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake ARGS` typed in the repository root: no --cores, no --snakefile."""
    result = subprocess.run(["snakemake", *args], cwd=repo, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr  # a real run logs to stderr, a dry run to stdout
    table = output.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in output else ""
    planned = {line.split()[0] for line in table.splitlines()[3:] if line.strip()}
    assert planned or "Nothing to be done" in output  # the job table was found and read
    assert not planned & set(TRAINING_RULES), f"planned training: {sorted(planned)}"
    return result


def grid_run(repo: Path, task: str, budget: int, method: str, seed: int) -> Run:
    """The run config.yaml's grids name for these axes (its folder has the run id of its settings)."""
    config = load_config_file(repo / "config.yaml")
    models = validate(config, base_dir=repo)
    for grid in config["grids"]:
        for run in grid_runs(config, grid, models, base=repo):
            if (run.task, run.budget, run.method, run.seed) == (task, budget, method, seed):
                return run
    raise AssertionError(f"no grid of config.yaml names {task} b{budget} {method} s{seed}")


def run_dir(repo: Path, task: str, budget: int, method: str, seed: int) -> Path:
    """Where the reporting reads a run: its calibrated folder."""
    return repo / grid_run(repo, task, budget, method, seed).calibrated_dir


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("repo"))


def test_fresh_clone_draws_the_default_grid(repo: Path) -> None:
    for target in ("figures", "tables", "report"):
        result = subprocess.run(["snakemake", "-n", target], cwd=repo, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "sweet: grid 'demo' (config.yaml's grid:; no run has finished yet)" in result.stderr
        assert "train_member" in result.stdout  # nothing ran yet: the default grid up to the target
        assert f"results/demo/{'report.html' if target == 'report' else target}" in result.stdout
    assert not (repo / "results" / "demo").exists()


def test_two_grids_partial_and_complete_in_one_results_folder(repo: Path) -> None:
    for task, budget, method, seed in DEMO:
        write_fake_run(run_dir(repo, task, budget, method, seed), task, "tiny-bert", budget, method, seed)
    # smoke finishes last, but its MM run failed in training
    for task, budget, method, seed in SMOKE[:2]:
        write_fake_run(run_dir(repo, task, budget, method, seed), task, "tiny-bert", budget, method, seed)
    failed = grid_run(repo, *SMOKE[2]).dir.removeprefix("results/runs/")
    failed_log = repo / f"results/logs/train_member/{failed}/member_3.log"
    failed_log.parent.mkdir(parents=True)
    failed_log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    runs = snapshot(repo / "results" / "runs")

    # as typed: the grid whose runs finished last, from its finished runs; no training of it or of demo
    result = snakemake(repo, "figures")
    assert ("`snakemake tables | figures | report` draw grid 'smoke' (its runs finished last: 2 of 3) from its "
            "finished runs, training nothing") in result.stderr
    tables = repo / "results" / "smoke" / "tables"
    status = (tables / "status.txt").read_text()
    assert status.startswith("PARTIAL: 2 of 3 runs of grid 'smoke' finished")
    assert ("s1/cal-pool1000: failed at train (MM member 3): RuntimeError: CUDA out of memory (read results/logs/"
            f"train_member/{failed}/member_3.log)") in (tables / "missing_runs.txt").read_text()
    assert (repo / "results" / "smoke" / "figures" / "speed_accuracy" / "overview.png").is_file()
    assert "Nothing to be done" in snakemake(repo, "tables").stderr
    snakemake(repo, "report")
    html = (repo / "results" / "smoke" / "report.html").read_text()
    assert '<p class="partial">PARTIAL: 2 of 3 runs' in html.split("</section>")[0]
    assert not (repo / "results" / "demo").exists() and snapshot(repo / "results" / "runs") == runs

    # the documented partial command for another grid: its own folder, and smoke's left as it was
    smoke = snapshot(repo / "results" / "smoke")
    snakemake(repo, "--config", "grid=demo", "partial=true")
    for name in ("tables/claims.csv", "figures/index.json", "report.html"):
        assert (repo / "results" / "demo" / name).is_file(), name
    assert (repo / "results" / "demo" / "tables" / "status.txt").read_text().startswith("complete: all 12 runs")
    assert snapshot(repo / "results" / "smoke") == smoke

    # the failed run is redone (here: written) and finishes last: the tables stop being partial
    demo = snapshot(repo / "results" / "demo")
    write_fake_run(run_dir(repo, *SMOKE[2]), "synthetic-smoke", "tiny-bert", 200, "mm", 1)
    snakemake(repo, "report")
    assert (tables / "status.txt").read_text() == "complete: all 3 runs of grid 'smoke' finished.\n"
    assert (tables / "missing_runs.txt").read_text() == ""
    assert 'class="partial"' not in (repo / "results" / "smoke" / "report.html").read_text()
    assert snapshot(repo / "results" / "demo") == demo


def test_a_named_grid_is_drawn_even_when_another_finished_last(repo: Path) -> None:
    result = subprocess.run(["snakemake", "-n", "tables", "--config", "grid=demo", "partial=true"], cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "draw grid" not in result.stderr and "results/smoke" not in result.stdout
    # without partial=true a named grid is built: its runs (fake here, so without logits) would be redone
    result = subprocess.run(["snakemake", "-n", "tables", "--config", "grid=demo"], cwd=repo, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "evaluate" in result.stdout
