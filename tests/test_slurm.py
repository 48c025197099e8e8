"""The paper grid's cluster conditions, on the real one-node Slurm CI brings up (`.ci/slurm-up.sh`).

`.ci/run` starts the cluster with fake GPUs (count-only devices), a 60-minute MaxTime and a 6000 MB memory cap
that sbatch enforces, then runs these with `pytest -m slurm`. They are skipped where there is no Slurm.

One small grid (the smoke task, EE/SWEET/MM, one seed, 40 epochs so that training lasts long enough to be
interrupted) on a *hub-id* backbone, run through `--profile slurm` exactly as a user would:

- the backbone is fetched on the submit host from a stand-in hub on 127.0.0.1, which is then stopped: every
  compute job runs offline and reads the cache, and would fail if it tried the (dead) hub;
- every submitted job asked for a GPU and for no more than the partition's caps (read back from Slurm);
- drill (a): one run's evaluation fails once on purpose → its training is not redone and the results equal the
  clean run's, byte for byte;
- drill (b): a running training job is `scancel`led → Slurm's SIGTERM makes it checkpoint and exit, the retry
  resumes from that checkpoint, and the results equal the clean run's, byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MINUTES, MAX_MEM_MB = 60, 6000  # the partition caps .ci/run gives .ci/slurm-up.sh
TINY_BERT = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
             "intermediate_size": 128, "max_position_embeddings": 128, "tokenizer": "synthetic", "seed": 0}
RUN = "results/runs/synthetic-smoke/tiny-hub/b200"  # then <method>-<run id>/s1 (sweet.plan.layout)
OVERLAY = """\
grid: drill
grids:
  drill:
    tasks: [synthetic-smoke]
    models: [tiny-hub]
    budgets: [200]
    methods: [ee, sweet, mm]
    seeds: [1]
    # 520 steps per training job (no periodic checkpoint): long enough to be cancelled mid-run, and a resumed
    # run can only have resumed from the checkpoint its SIGTERM handler saved.
    training: {{epochs: 40, save_steps: 100000, gradient_conflict_every: 0}}
models:
  tiny-hub:
    backbone: sweet-ci/tiny-bert
    exit_layers: [1, 2, 3, 6]
    training: {{learning_rate: 1.0e-3, max_length: 64}}
hub_cache: {hub_cache}
cluster: {{max_runtime_minutes: {max_minutes}, max_mem_mb: {max_mem}}}
"""


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return False
    return subprocess.run(["squeue", "-h"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster here (.ci/slurm-up.sh)")]


def _checker():
    spec = importlib.util.spec_from_file_location("check_slurm_jobs", ROOT / ".ci" / "check_slurm_jobs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_repo(dest: Path) -> Path:
    """The checkout as a user has it (tracked and untracked, not ignored), without results/."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if name.startswith("results/") or not (ROOT / name).is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def snakemake(workdir: Path, *args: str, env: dict[str, str], timeout: int = 1200) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfile", "drill.yaml",
               "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "3", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def outputs(workdir: Path) -> dict[str, bytes]:
    """Every result file that must not depend on how the run got there (logs, benchmarks, figures excluded)."""
    files = {}
    for path in sorted((workdir / "results").rglob("*")):
        rel = path.relative_to(workdir).as_posix()
        if (not path.is_file() or path.name == ".snakemake_timestamp" or path.suffix in (".png", ".pdf", ".html")
                or rel.startswith(("results/logs/", "results/benchmarks/")) or "/figures/" in rel):
            continue
        files[rel] = path.read_bytes()
    return files


def assert_same_outputs(run: Path, reference: Path) -> None:
    got, want = outputs(run), outputs(reference)
    assert sorted(got) == sorted(want)
    differing = [name for name in want if got[name] != want[name]]
    assert not differing, differing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A stand-in hub serving `sweet-ci/tiny-bert`, the overlay every run uses, and a dead endpoint for jobs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_hub import FakeHub

    root = tmp_path_factory.mktemp("site")
    repo = root / "repos" / "sweet-ci" / "tiny-bert"
    subprocess.run([sys.executable, "-m", "sweet", "init-backbone", "--model-spec", json.dumps(TINY_BERT),
                    "--out", str(repo)], cwd=ROOT, check=True, capture_output=True)
    hub = FakeHub(root / "repos")
    server = hub.serve()
    overlay = OVERLAY.format(hub_cache=root / "hub-cache", max_minutes=MAX_MINUTES, max_mem=MAX_MEM_MB)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    yield {"root": root, "hub": hub, "server": server, "overlay": overlay, "env": env}
    server.shutdown()


@pytest.fixture(scope="module")
def clean(site) -> Path:
    """The reference run: fetch on the submit host through the stand-in hub, stop the hub, run the grid."""
    workdir = copy_repo(site["root"] / "clean")
    (workdir / "drill.yaml").write_text(site["overlay"])
    fetch = snakemake(workdir, "fetch", env=site["env"])
    assert fetch.returncode == 0, fetch.stderr[-3000:]
    assert any("/resolve/" in path for path in site["hub"].requests), "the fetch rule did not use the hub"
    site["server"].shutdown()  # from here on the hub is unreachable: jobs must run from the cache
    site["server"].server_close()
    asked = len(site["hub"].requests)
    result = snakemake(workdir, env=site["env"])
    assert result.returncode == 0, result.stderr[-5000:]
    assert len(site["hub"].requests) == asked
    return workdir


def test_jobs_read_the_hub_backbone_from_the_cache_offline(clean: Path) -> None:
    metrics = json.loads(next((clean / RUN).glob("ee-*/s1/train_metrics.json")).read_text())
    fetched = json.loads((clean / "results/backbones/tiny-hub.fetched.json").read_text())
    assert metrics["backbone"] == "sweet-ci/tiny-bert"
    assert metrics["backbone_revision"] == fetched["revision"] is not None


def test_every_submitted_job_asked_for_a_gpu_within_the_caps(clean: Path) -> None:
    checker = _checker()
    log = max((clean / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    jobs = checker.submitted_jobs(checker.run_id(log))
    assert checker.check(jobs, MAX_MINUTES, MAX_MEM_MB, gpus=1) == []
    rules = {checker.rule_of(job) for job in jobs}
    assert {"train", "train_member"} <= rules and any(r.startswith("evaluate") for r in rules)
    # EE, SWEET, 4 MM members (one array), 3 calibrate+evaluate groups: splits, curves, tables stayed local.
    assert len(jobs) == 2 + 4 + 3


def test_moving_the_hub_cache_or_the_scratch_retrains_nothing(site, clean: Path) -> None:
    """A cluster user who points hub_cache at a shared cache, or moves checkpoints to scratch, after a grid ran:
    the backbone is fetched into the new cache (once, on the submit host) and no finished run is redone."""
    moved = [f"hub_cache={site['root'] / 'hub-cache-moved'}", f"scratch_dir={site['root'] / 'scratch'}"]
    result = snakemake(clean, "-n", "--config", *moved, env=site["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_rules(result) == {"fetch_backbone"}, result.stdout[-3000:]
    assert planned_rules(snakemake(clean, "-n", env=site["env"])) == set()


def planned_rules(result: subprocess.CompletedProcess) -> set[str]:
    """The rules in a dry run's job table (empty when there is nothing to do)."""
    output = result.stdout + result.stderr
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return set()
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()} - {"total"}


def test_drill_failed_evaluation_keeps_the_finished_training(site, clean: Path) -> None:
    workdir = copy_repo(site["root"] / "eval-fails")
    (workdir / "drill.yaml").write_text(site["overlay"])
    mark = site["root"] / "evaluation-failed-once"
    shim = workdir / "shim"
    shim.mkdir()
    # Every `python` a job runs goes through this shim (sbatch exports PATH): the EE run's evaluation fails once.
    (shim / "python").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"sweet evaluate"*"/ee-"*"/s1/"*) if [ ! -e "{mark}" ]; then touch "{mark}"; '
        'echo "drill: this evaluation fails on purpose" >&2; exit 1; fi;; esac\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    (shim / "python").chmod(0o755)
    env = {**site["env"], "PATH": f"{shim}:{site['env']['PATH']}"}
    result = snakemake(workdir, env=env)
    assert result.returncode == 0, result.stderr[-5000:]
    assert mark.is_file(), "the evaluation never failed: the drill did not run"
    assert "Error in rule evaluate" in result.stderr or "Error in group evaluate" in result.stderr
    # The training finished before the evaluation failed, and nothing rewrote it afterwards.
    for pattern in ("results/benchmarks/train/synthetic-smoke/tiny-hub/b200/ee-*/s1.tsv",
                    "results/logs/train/synthetic-smoke/tiny-hub/b200/ee-*/s1.log", f"{RUN}/ee-*/s1/train_metrics.json"):
        (path,) = workdir.glob(pattern)
        assert path.stat().st_mtime < mark.stat().st_mtime, pattern
    assert result.stderr.count("rule train:") == 2  # EE and SWEET, once each
    assert_same_outputs(workdir, clean)


def test_drill_cancelled_training_resumes_from_its_checkpoint(site, clean: Path) -> None:
    workdir = copy_repo(site["root"] / "cancelled")
    (workdir / "drill.yaml").write_text(site["overlay"])
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfile", "drill.yaml",
               "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "3"]
    logs = workdir / "results/logs/train/synthetic-smoke/tiny-hub/b200"
    with open(workdir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=site["env"], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            log = None
            while not (log is not None and "loss_exit_1" in log.read_text(errors="replace")):
                log = next(logs.glob("ee-*/s1.log"), None)
                assert proc.poll() is None, (workdir / "snakemake.out").read_text()[-3000:]
                assert time.monotonic() < deadline, "the EE training never started logging"
                time.sleep(0.1)
            jobs = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
            job = next(line.split()[0] for line in jobs.splitlines() if "rule_train_wildcards_" in line
                       and re.search(r"_ee_[0-9a-f]{8}_1$", line))
            subprocess.run(["scancel", job], check=True)
            proc.wait(timeout=1200)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (workdir / "snakemake.out").read_text()
    assert proc.returncode == 0, text[-5000:]
    assert "CANCELLED" in text
    retried = log.read_text(errors="replace")
    assert "resuming from" in retried and "model.checkpoints/checkpoint-" in retried, retried[-2000:]
    assert_same_outputs(workdir, clean)
