"""Kill the whole `snakemake --cores 2 --config grid=smoke` process group mid-run, rerun with
`--rerun-incomplete`, and compare the grid's tables (curves, summaries, claims, run list) with a clean run's,
byte for byte (issue: reliability).

Two smoke grids end to end take a few minutes on 2 cores, so this test is marked `slow`: the default
`pytest` run skips it and `.ci/run` runs it as its own stage (`python -m pytest -q -m slow tests`).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--cores", "2", "--config", "grid=smoke"]


def _copy_tree(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith("results/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "results").mkdir(exist_ok=True)
    return dest


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_killed_grid_reruns_to_identical_tables(tmp_path: Path) -> None:
    clean = _copy_tree(tmp_path / "clean")
    _snakemake(clean, *SMOKE)
    expected = _tables(clean)
    assert "curves.csv" in expected and "claims.csv" in expected
    # Where checkpoints and hub backbones are kept is not what a run computes: moving them redoes nothing.
    moved = _snakemake(clean, "-n", *SMOKE, f"scratch_dir={tmp_path / 'scratch'}", f"hub_cache={tmp_path / 'hub'}")
    assert "Nothing to be done" in moved.stdout + moved.stderr, moved.stdout[-3000:]

    killed = _copy_tree(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *SMOKE], cwd=killed, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # Kill at a random moment after the first training job has finished (so there is finished work to keep
    # and unfinished work to redo).
    delay = random.Random(11).uniform(0.0, 3.0)
    deadline = time.monotonic() + 600
    while not list((killed / "results/runs").glob("*/*/*/*/*/train_metrics.json")):
        assert proc.poll() is None, "the grid ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, "the grid ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results/smoke/tables/curves.csv").exists()
    # Nothing half-written under a final name: every file a rule writes is renamed into place when complete.
    assert not [p for p in (killed / "results").rglob("*.tmp*") if p.is_file() and not p.name.startswith(".")]

    _snakemake(killed, "--unlock", *SMOKE)  # a SIGKILLed snakemake cannot release its lock
    _snakemake(killed, *SMOKE, "--rerun-incomplete")
    assert _tables(killed) == expected


def _tables(repo: Path) -> dict[str, bytes]:
    folder = repo / "results" / "smoke" / "tables"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}
