"""The CLI chain the workflow runs (prepare → split → train → calibrate → evaluate → curves) as real subprocesses:
determinism, kill-and-resume of a training job, and user errors (one line, exit 2, nothing written).

One tiny randomly initialised BERT on a small synthetic task; every stage is a `python -m sweet` process, as
in the Snakemake rules.
"""

from __future__ import annotations

import json
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
TASK_SPEC = {"source": "synthetic", "train_size": 500, "eval_size": 120}
MODEL_SPEC = {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0,
}
# 200 examples / batch 16 = 13 steps per epoch, 39 in all; a checkpoint every 5 steps; the probe every 3 steps.
TRAIN_SPEC = {"learning_rate": 1e-3, "epochs": 3, "batch_size": 16, "max_length": 32, "save_steps": 5,
              "gradient_conflict_every": 3}
EXITS = "1,2,4"


def sweet(*args: str | Path, check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sweet", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweet {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train_args(setup: Path, run: Path, method: str = "ee") -> list[str | Path]:
    return [
        "train", "--task-dir", setup / "task", "--splits", setup / "splits.json", "--backbone", setup / "backbone",
        "--exit-layers", EXITS, "--method", method, "--seed", "3", "--train-spec", json.dumps(TRAIN_SPEC),
        "--out", run / "model", "--metrics", run / "train_metrics.json",
        "--gradient-conflict-out", run / "gradient_conflict.csv", "--meta", "task=synthetic", "seed=3",
    ]


def finish_run(setup: Path, run: Path) -> None:
    """Calibrate, evaluate and compute curves of a trained run (the rest of the workflow's per-run chain)."""
    sweet("calibrate", "--model", run / "model", "--task-dir", setup / "task", "--splits", setup / "calibration.json",
          "--out", run / "temperatures.json")
    sweet("evaluate", "--model", run / "model", "--task-dir", setup / "task", "--temperatures",
          run / "temperatures.json", "--out", run / "logits.npz")
    sweet("curves", "--logits", run / "logits.npz", "--task-dir", setup / "task", "--meta", "task=synthetic",
          "seed=3", "--out", run / "curves.csv", "--exits-out", run / "individual_exits.csv")


RUN_FILES = ("train_metrics.json", "gradient_conflict.csv", "temperatures.json", "logits.npz", "curves.csv",
             "individual_exits.csv")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    sweet("prepare", "--task", "synthetic", "--task-spec", json.dumps(TASK_SPEC), "--out", root / "task")
    sweet("init-backbone", "--model-spec", json.dumps(MODEL_SPEC), "--out", root / "backbone")
    sweet("split", "--task-dir", root / "task", "--budget", "200", "--seed", "3", "--calibration-size", "100",
          "--out", root / "splits.json", "--calibration-out", root / "calibration.json")
    return root


@pytest.fixture(scope="module")
def reference_run(setup: Path) -> Path:
    run = setup / "reference"
    sweet(*train_args(setup, run))
    finish_run(setup, run)
    return run


def test_same_seed_gives_byte_identical_results(setup: Path, reference_run: Path) -> None:
    run = setup / "again"
    sweet(*train_args(setup, run))
    finish_run(setup, run)
    for name in RUN_FILES:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["provenance"]["git_commit"] not in ("", None)
    assert {"torch", "transformers", "sweet"} <= set(metrics["provenance"]["versions"])
    assert metrics["global_steps"] == 39 and not (run / "model.checkpoints").exists()
    # The probe really ran (every 3 steps, three blocks) and the logs carry each exit's loss.
    assert len((run / "gradient_conflict.csv").read_text().splitlines()) > 10
    assert "loss_exit_3" in metrics["log_history"][0]


def test_killed_training_resumes_to_identical_results(setup: Path, reference_run: Path) -> None:
    """SIGKILL a training process right after a random checkpoint (mid-training), rerun the same command: the
    rerun resumes and every output equals the uninterrupted run's, byte for byte."""
    run = setup / "killed"
    target = random.Random(7).choice([5, 10, 15, 20, 25])
    work = run / "model.checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sweet", *map(str, train_args(setup, run))]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (work / f"checkpoint-{target}" / "trainer_state.json").is_file():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Nothing final-named is left by the killed job.
    assert not (run / "model").exists() and not (run / "train_metrics.json").exists()

    rerun = sweet(*train_args(setup, run))
    assert "resuming from" in rerun.stderr
    finish_run(setup, run)
    for name in RUN_FILES:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name


def test_partial_checkpoint_is_skipped_on_resume(setup: Path, reference_run: Path) -> None:
    """A job killed while the Trainer was writing a checkpoint leaves a folder without trainer_state.json: the
    rerun ignores it and starts over (or from the previous complete checkpoint) instead of crashing."""
    run = setup / "partial"
    broken = run / "model.checkpoints" / "checkpoint-35"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"\0" * 10)
    rerun = sweet(*train_args(setup, run))
    assert "resuming from" not in rerun.stderr
    assert (run / "train_metrics.json").read_bytes() == (reference_run / "train_metrics.json").read_bytes()


# ------------------------------------------------------------------------------------------------ user errors
def _bad_file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _local_spec(train: Path, evaluation: Path, **extra) -> str:
    return json.dumps({"source": "local", "train": str(train), "eval": str(evaluation), "text_column": "sentence",
                       "label_column": "label", **extra})


GOOD_TSV = "sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(20))

# (case id, builder(tmp, setup) -> argv, words the one-line error must contain)
USER_ERRORS = {
    "unknown task source": (
        lambda tmp, s: ["prepare", "--task", "t", "--task-spec", '{"source": "ftp"}', "--out", tmp / "out"],
        ["source"]),
    "missing local file": (
        lambda tmp, s: ["prepare", "--task", "t", "--task-spec",
                        _local_spec(tmp / "nope.tsv", _bad_file(tmp, "e.tsv", GOOD_TSV)), "--out", tmp / "out"],
        ["nope.tsv"]),
    "missing label column": (
        lambda tmp, s: ["prepare", "--task", "t", "--task-spec",
                        _local_spec(_bad_file(tmp, "t.tsv", "sentence\tstars\na\t1\n"),
                                    _bad_file(tmp, "e.tsv", GOOD_TSV)), "--out", tmp / "out"],
        ["label"]),
    "non-UTF-8 text": (
        lambda tmp, s: ["prepare", "--task", "t", "--task-spec",
                        _local_spec(_bad_file(tmp, "t.tsv", b"sentence\tlabel\ncaf\xe9\t1\n"),
                                    _bad_file(tmp, "e.tsv", GOOD_TSV)), "--out", tmp / "out"],
        ["t.tsv"]),
    "bad task spec JSON": (
        lambda tmp, s: ["prepare", "--task", "t", "--task-spec", "{source: synthetic", "--out", tmp / "out"],
        ["task-spec"]),
    "unknown backbone type": (
        lambda tmp, s: ["init-backbone", "--model-spec", '{"model_type": "gpt2", "tokenizer": "synthetic"}',
                        "--out", tmp / "out"],
        ["gpt2"]),
    "budget larger than the pool": (
        lambda tmp, s: ["split", "--task-dir", s / "task", "--budget", "100000", "--seed", "1", "--out",
                        tmp / "out"],
        ["budget"]),
    "negative seed": (
        lambda tmp, s: ["split", "--task-dir", s / "task", "--budget", "10", "--seed", "-1", "--out", tmp / "out"],
        ["seed"]),
    "missing task folder": (
        lambda tmp, s: ["split", "--task-dir", tmp / "no-task", "--budget", "10", "--seed", "1", "--out",
                        tmp / "out"],
        ["no-task"]),
    "exit layers beyond depth": (
        lambda tmp, s: [*train_args(s, tmp)[:8], "1,2,9", *train_args(s, tmp)[9:]],
        ["exit_layers", "4"]),
    "exit layers not increasing": (
        lambda tmp, s: [*train_args(s, tmp)[:8], "2,1,4", *train_args(s, tmp)[9:]],
        ["increasing"]),
    "exit layer zero": (
        lambda tmp, s: [*train_args(s, tmp)[:8], "0,2,4", *train_args(s, tmp)[9:]],
        ["exit_layers"]),
    "missing backbone folder": (
        lambda tmp, s: [*train_args(s, tmp)[:6], tmp / "no-model", *train_args(s, tmp)[7:]],
        ["no-model"]),
    "unknown training option": (
        lambda tmp, s: [*train_args(s, tmp)[:14], '{"learning_rat": 0.1}', *train_args(s, tmp)[15:]],
        ["learning_rat"]),
    "MM without a member": (
        lambda tmp, s: train_args(s, tmp, method="mm"),
        ["--member"]),
    "evaluate a missing model": (
        lambda tmp, s: ["evaluate", "--model", tmp / "no-run", "--task-dir", s / "task", "--out",
                        tmp / "out.npz"],
        ["no-run"]),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_error_is_one_line_exit_2_and_writes_nothing(case: str, setup: Path, tmp_path: Path) -> None:
    build, words = USER_ERRORS[case]
    argv = build(tmp_path, setup)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = sweet(*argv, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    # Nothing new: the input files the case created are all that is there.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------------------------ cluster signals
# 13 steps per epoch, 39 in all, a log (and so a possible signal checkpoint) every 3 steps, periodic checkpoints
# every 6: a SIGTERM after checkpoint 6 stops at step 9, 12, … — not a periodic checkpoint.
SIGNAL_SPEC = {**TRAIN_SPEC, "save_steps": 6, "gradient_conflict_every": 0}


def test_sigterm_checkpoints_at_the_next_log_step_and_the_rerun_resumes_identically(setup: Path) -> None:
    """What Slurm does before a time limit (--signal=TERM@…), on scancel and on pre-emption: the job saves a
    checkpoint at its next logging step, exits 75, and the rerun resumes there to byte-identical outputs."""
    spec = json.dumps(SIGNAL_SPEC)
    reference = setup / "signal-reference"
    args = train_args(setup, reference)
    args[args.index("--train-spec") + 1] = spec
    sweet(*args)

    run = setup / "signalled"
    args = train_args(setup, run)
    args[args.index("--train-spec") + 1] = spec
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sweet", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    work = run / "model.checkpoints"
    deadline = time.monotonic() + 300
    while not (work / "checkpoint-6" / "trainer_state.json").is_file():
        assert proc.poll() is None, "training ended before it could be signalled"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-2000:]
    assert "interrupted: training stopped on SIGTERM" in stderr
    saved = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*"))
    assert saved and saved[-1] % 3 == 0 and saved[-1] % 6 != 0, saved  # a logging step, not a periodic one
    assert not (run / "model").exists() and not (run / "train_metrics.json").exists()

    rerun = sweet(*args)
    assert f"checkpoint-{saved[-1]}" in rerun.stderr
    assert (run / "train_metrics.json").read_bytes() == (reference / "train_metrics.json").read_bytes()
    for name in ("exit_heads.safetensors", "backbone/model.safetensors"):
        assert (run / "model" / name).read_bytes() == (reference / "model" / name).read_bytes(), name


def test_hub_backbone_is_fetched_once_then_read_offline(setup: Path, tmp_path: Path) -> None:
    """The submit host fetches a hub id through the hub (a stand-in on 127.0.0.1); the training job then runs
    with the hub offline *and* unreachable, and reads the cached snapshot."""
    from fake_hub import FakeHub

    repos = tmp_path / "repos" / "sweet-ci"
    repos.mkdir(parents=True)
    sweet("init-backbone", "--model-spec", json.dumps(MODEL_SPEC), "--out", repos / "tiny-bert")
    hub = FakeHub(tmp_path / "repos")
    server = hub.serve()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    cache = tmp_path / "hub-cache"
    try:
        fetched = sweet("fetch", "--model", "sweet-ci/tiny-bert", "--hub-cache", cache, "--out", tmp_path / "f.json",
                        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint})
        assert "sweet-ci/tiny-bert: main is commit" in fetched.stderr
        assert any("/resolve/" in r for r in hub.requests)
        record = json.loads((tmp_path / "f.json").read_text())
        assert {"config.json", "model.safetensors", "vocab.txt"} <= set(record["files"])
        asked = len(hub.requests)
        again = sweet("fetch", "--model", "sweet-ci/tiny-bert", "--hub-cache", cache,
                      env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint})
        assert len(hub.requests) == asked, "a complete cached snapshot must not be fetched again"
        assert again.returncode == 0
        # The README's other way to fill the cache, huggingface_hub's own CLI, gives the layout jobs read.
        hf = shutil.which("hf")
        if hf is not None:
            by_hand = tmp_path / "hand-filled-cache"
            subprocess.run([hf, "download", "sweet-ci/tiny-bert", "--cache-dir", str(by_hand)], check=True,
                           capture_output=True, env={**os.environ, "HF_ENDPOINT": endpoint})
            asked = len(hub.requests)
            sweet("fetch", "--model", "sweet-ci/tiny-bert", "--hub-cache", by_hand,
                  env={**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint})
            assert len(hub.requests) == asked
    finally:
        server.shutdown()

    offline = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "HF_ENDPOINT": endpoint}  # the stand-in is gone: any request would fail
    args = train_args(setup, tmp_path / "run")
    args[args.index("--backbone") + 1] = "sweet-ci/tiny-bert"
    spec = json.loads(args[args.index("--train-spec") + 1])
    args[args.index("--train-spec") + 1] = json.dumps({**spec, "epochs": 1})
    sweet(*args, "--hub-cache", cache, env=offline)
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["backbone"] == "sweet-ci/tiny-bert" and metrics["backbone_revision"] == record["revision"]

    elsewhere = train_args(setup, tmp_path / "elsewhere")
    elsewhere[elsewhere.index("--backbone") + 1] = "sweet-ci/tiny-bert"
    missing = sweet(*elsewhere, "--hub-cache", tmp_path / "empty-cache", check=False, env=offline)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr[-2000:]
    assert "'sweet-ci/tiny-bert' is not in the hub cache" in lines[0] and "hf download sweet-ci/tiny-bert" in lines[0]
    assert not (tmp_path / "elsewhere").exists()


def test_infer_offers_every_registered_exit_rule() -> None:
    """`python -m sweet infer --rule` takes its choices from sweet.exits.EXIT_RULES, so a new rule is offered."""
    from sweet.cli import build_parser
    from sweet.exits import EXIT_RULES

    parser = build_parser()
    base = ["infer", "--model", "m", "--task-dir", "t", "--temperatures", "t.json", "--threshold", "0.5"]
    for rule in EXIT_RULES:
        assert parser.parse_args([*base, "--rule", rule]).rule == rule
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--rule", "softmax-difference"])
