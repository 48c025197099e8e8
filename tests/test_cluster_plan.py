"""What a cluster user's commands plan, before anything is submitted: GPUs, caps, local rules, the environment.

Each README command line (profile × --configfile × --config) is dry-run (`snakemake -n`) in a scratch folder
holding config.yaml and the `slurm/` profile, and the planned jobs' resources are read from snakemake's own
output. No cluster is needed: a dry run plans, it never submits. The arithmetic behind the numbers
(sweet/plan/cluster.py) is checked exactly below.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweet.plan import cluster
from sweet.plan.config import load_config_file, validate
from sweet.plan.estimates import parameter_count
from sweet.plan.settings import KNOWN_BACKBONES, Model

ROOT = Path(__file__).resolve().parents[1]
GPU_RULES = {"train", "train_member", "calibrate", "evaluate", "latency"}  # latency: opt-in, in the evaluate job
LOCAL_RULES = {"split", "combine", "curves", "operating_points", "prepare", "init_backbone", "fetch_backbone", "aggregate", "all"}
OVERLAY = """\
grid: reviews
grids:
  reviews: {tasks: [sst2], models: [minilm], budgets: [1000, 6000], methods: [ee, sweet, mm], seeds: [1, 2, 3]}
models:
  minilm: {backbone: sentence-transformers/all-MiniLM-L6-v2, exit_layers: [1, 2, 3, 6]}
"""


def plan(tmp: Path, *args: str, profile: str | None = None) -> subprocess.CompletedProcess:
    """`snakemake -n <args>` from a folder that looks like the repository root to the user's command."""
    if not (tmp / "config.yaml").exists():
        shutil.copy(ROOT / "config.yaml", tmp / "config.yaml")
        shutil.copytree(ROOT / "slurm", tmp / "slurm")
        (tmp / "my_overlay.yaml").write_text(OVERLAY)
    if profile is not None:
        (tmp / "slurm" / "config.yaml").write_text(profile)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "workflow" / "Snakefile"), *args]
    return subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every planned job, group members included."""
    jobs, rule = [], None
    for line in output.splitlines():
        match = re.match(r"\s*rule (\w+):$", line)
        if match:
            rule = match.group(1)
            continue
        match = re.match(r"\s*resources: (.*)$", line)
        if match and rule is not None:
            resources = dict(item.split("=", 1) for item in match.group(1).split(", ") if "=" in item)
            jobs.append((rule, resources))
            rule = None
    return jobs


def assert_cluster_plan(result: subprocess.CompletedProcess, gpus: int | None, max_minutes: int,
                        max_mem: int | None = None, gres: str | None = None) -> list[tuple[str, dict]]:
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    compute = [(rule, res) for rule, res in jobs if rule in GPU_RULES]
    assert compute, result.stdout[-2000:]
    for rule, res in compute:
        if gres is not None:
            assert res.get("gres") == gres and "gpu" not in res, (rule, res)
        elif gpus:
            assert res.get("gpu") == str(gpus), (rule, res)
        else:
            assert res.get("gpu", "0") == "0" and not res.get("gres") and not res.get("gpu_model"), (rule, res)
        # calibrate + evaluate of a run are one submission asking for their sum: each asks for at most half.
        limit = max_minutes // 2 if rule in ("calibrate", "evaluate") else max_minutes
        assert int(res["runtime"]) <= limit, (rule, res["runtime"], limit)
        if max_mem is not None:
            assert int(res["mem_mb"]) <= max_mem, (rule, res["mem_mb"])
        if rule.startswith("train"):
            assert res.get("slurm_extra", "").startswith("--signal=TERM@"), res
    return jobs


# ------------------------------------------------------------------------------------------------ README commands
def test_paper_grid_under_the_profile_asks_every_compute_job_for_a_gpu(tmp_path: Path) -> None:
    result = plan(tmp_path, "--profile", "slurm", "--config", "grid=paper")
    jobs = assert_cluster_plan(result, gpus=1, max_minutes=1440)
    counts = {rule: sum(r == rule for r, _ in jobs) for rule in GPU_RULES}
    assert counts == {"train": 96, "train_member": 192, "calibrate": 144, "evaluate": 144, "latency": 0}
    assert "this grid submits 432 jobs: 96 train, 192 train_member" in result.stderr
    assert "fetch_backbone" in result.stdout  # hub backbones are fetched on the submit host, once each
    assert sum(rule == "fetch_backbone" for rule, _ in jobs) == 4


@pytest.mark.parametrize("args", [
    ["--configfile", "my_overlay.yaml"],
    ["--configfile", "my_overlay.yaml", "--config", "grid=reviews"],
    ["--config", "grid=reviews", "--configfile", "my_overlay.yaml"],
    ["--configfile", "my_overlay.yaml", "--config", "grid=reviews", "threads=2"],
])
def test_overlays_and_config_values_keep_the_gpu(tmp_path: Path, args: list[str]) -> None:
    """The combinations that dropped the GPU before: --configfile and --config replace the profile's lists."""
    assert_cluster_plan(plan(tmp_path, "--profile", "slurm", *args), gpus=1, max_minutes=1440)


def test_gpus_zero_asks_for_none_even_under_the_profile(tmp_path: Path) -> None:
    assert_cluster_plan(plan(tmp_path, "--profile", "slurm", "--config", "grid=smoke", "gpus=0"), gpus=0,
                        max_minutes=1440)


def test_partition_caps_bound_every_request(tmp_path: Path) -> None:
    result = plan(tmp_path, "--profile", "slurm", "--config", "grid=paper",
                  "cluster={max_runtime_minutes: 240, max_mem_mb: 8000}")
    assert_cluster_plan(result, gpus=1, max_minutes=240, max_mem=8000)


def test_a_job_longer_than_the_cap_is_planned_as_resumed_allocations(tmp_path: Path) -> None:
    # CPU jobs of bert-large need far more than an hour: each allocation checkpoints on Slurm's warning signal.
    result = plan(tmp_path, "--profile", "slurm", "--config", "grid=paper", "gpus=0",
                  "cluster={max_runtime_minutes: 60}")
    assert_cluster_plan(result, gpus=0, max_minutes=60)
    line = next(ln for ln in result.stderr.splitlines() if "longest training job" in ln)
    assert "allocations" in line and "retries raised to" in line


def test_gres_profile_asks_by_gres_and_gpus_n_is_refused_with_it(tmp_path: Path) -> None:
    profile = (ROOT / "slurm" / "config.yaml").read_text().replace("  - gpu=1\n", '  - gres="gpu:1"\n')
    assert '- gres="gpu:1"' in profile
    assert_cluster_plan(plan(tmp_path, "--profile", "slurm", "--config", "grid=smoke", profile=profile), gpus=1,
                        max_minutes=1440, gres="gpu:1")
    refused = plan(tmp_path, "--profile", "slurm", "--config", "grid=smoke", "gpus=2", profile=profile)
    assert refused.returncode != 0
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "gres" in errors[0] and "gpus" in errors[0], refused.stderr[-2000:]


def test_without_a_profile_nothing_asks_for_a_gpu(tmp_path: Path) -> None:
    result = plan(tmp_path, "--cores", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gpu=" not in result.stdout


def test_only_training_calibration_and_evaluation_are_submitted() -> None:
    """Every other rule is local (the `localrules:` list or `localrule: True`): cheap, or needs the network. (The
    opt-in latency step is submitted inside its run's evaluation job: test_workflow_dryrun.)"""
    sources = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    text = "\n".join(path.read_text() for path in sources)
    rules = dict(re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S))
    listed = text.split("localrules:")[1].split("\n\n")[0]
    local = {name.strip(" ,") for name in listed.split() if name.strip(" ,")}
    local |= {name for name, body in rules.items() if re.search(r"^\s+localrule: True", body, re.M)}
    assert set(rules) - local == GPU_RULES, sorted(set(rules) - local)
    assert local >= LOCAL_RULES


# ------------------------------------------------------------------------------------------------ the arithmetic
def _model(name: str) -> Model:
    return Model(name=name, slug=name, backbone=name, kind="hub", exit_layers=[1, 4, 6, 12],
                 arch=KNOWN_BACKBONES[name])


def test_runtime_follows_model_size_and_budget() -> None:
    config = load_config_file(ROOT / "config.yaml")
    estimator = cluster.Estimator(config, gpus=1, threads=1)
    base, large = _model("bert-base-uncased"), _model("bert-large-uncased")
    params = parameter_count(KNOWN_BACKBONES["bert-base-uncased"])
    # 6 FLOPs per parameter and token, budget × epochs × max_length tokens, at 10 TFLOP/s, doubled, + 10 min.
    expected = 10 + 2 * 6 * params * 6000 * 2 * 256 / 10e12 / 60
    assert estimator.train_estimate(base, 6000) == pytest.approx(expected)
    assert estimator.train_estimate(large, 6000) > 2.5 * (estimator.train_estimate(base, 6000) - 10)
    assert estimator.train_estimate(base, 1000) < estimator.train_estimate(base, 6000)
    assert estimator.train_estimate(base, 6000, depth=1) < estimator.train_estimate(base, 6000)
    cpu = cluster.Estimator(config, gpus=0, threads=4)
    assert cpu.train_estimate(base, 6000) > 10 * estimator.train_estimate(base, 6000)


def test_caps_hold_for_every_attempt_and_group_share() -> None:
    caps = cluster.Caps(max_runtime_minutes=240, max_mem_mb=8000, signal_minutes=5)
    assert caps.runtime(100) == 100 and caps.runtime(300) == 240 and caps.runtime(300, share=2) == 120
    assert caps.runtime(100.2) == 101 and caps.mem_mb(9000.5) == 8000
    assert cluster.training_allocations(230, caps) == 1
    assert cluster.training_allocations(236, caps) == 2  # 235 usable minutes per allocation
    assert cluster.training_allocations(1000, caps) == 5
    uncapped = cluster.Caps(None, None, 5)
    assert uncapped.runtime(5000) == 5000 and cluster.training_allocations(5000, uncapped) == 1


def test_peak_checkpoint_space_counts_the_largest_concurrent_jobs() -> None:
    sizes = [10, 40, 30, 20]
    assert cluster.peak_checkpoint_bytes(sizes, concurrent_jobs=2) == 2 * (40 + 30)
    assert cluster.peak_checkpoint_bytes(sizes, concurrent_jobs=100) == 2 * 100
    assert cluster.checkpoint_bytes(1_000_000) == 12_000_000


@pytest.mark.parametrize("values, words", [
    ({"cluster": {"signal_minutes": 60, "max_runtime_minutes": 60}}, ["cluster.signal_minutes", "shorter"]),
    ({"cluster": {"max_runtime_minutes": 5}}, ["cluster.max_runtime_minutes", "20"]),
    ({"gpus": 3}, ["gpus", "batch", "divisible"]),
    ({"cluster": {"max_mem_mb": "lots"}}, ["cluster.max_mem_mb"]),
    ({"cluster": {"max_runtime": 60}}, ["cluster.max_runtime", "unknown"]),
])
def test_bad_cluster_values_are_one_line_errors(values: dict, words: list[str]) -> None:
    from sweet.errors import UserError
    from sweet.plan.config import merge

    config = merge(load_config_file(ROOT / "config.yaml"), values)
    with pytest.raises(UserError) as err:
        validate(config)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_command_line_values_are_typed_as_yaml() -> None:
    from sweet.plan.config import merge

    config = merge(load_config_file(ROOT / "config.yaml"),
                   {"gpus": "null", "scratch_dir": "null", "cluster": {"max_runtime_minutes": "240"}})
    validate(config)
    assert config["gpus"] is None and config["scratch_dir"] is None
    assert config["cluster"]["max_runtime_minutes"] == 240 and config["cluster"]["signal_minutes"] == 5


# ------------------------------------------------------------------------------------------------ environments
def test_job_environment_builds_where_snakemake_copies_it_and_matches_pyproject() -> None:
    import tomllib

    env = yaml.safe_load((ROOT / "envs" / "sweet.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # `--sdm conda` builds a copy under .snakemake/conda/: nothing may point elsewhere by relative path.
    assert not [p for p in pip if p.startswith(("-e", ".", "/")) or "/" in p.split(">")[0]], pip
    assert not [p for p in pip if p.lower().startswith("snakemake")], "jobs do not need snakemake"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(pip) == sorted(d for d in deps if not d.startswith("torch")), (pip, deps)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("snakemake-executor-plugin-slurm>=2.") for d in extras["workflow"])


def test_several_gpus_keep_the_configured_effective_batch() -> None:
    from sweet.errors import UserError
    from sweet.train import per_device_batch_size

    assert per_device_batch_size(16, 1) == 16 and per_device_batch_size(16, 2) == 8
    assert per_device_batch_size(16, 4) * 4 == 16
    with pytest.raises(UserError, match="batch_size: 15 .* 2 GPUs"):
        per_device_batch_size(15, 2)
