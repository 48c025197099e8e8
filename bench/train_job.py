"""One BERT-base-shaped training job, timed whole, against the runtime the workflow asks the cluster for.

The job is what a cluster runs: `python -m sweet train` in a fresh process (imports, model loading, training,
saving), on a randomly initialised BERT-base-shaped encoder (12 layers, hidden 768; the offline synthetic
vocabulary, so embeddings are small) and the synthetic task, on the GPU when there is one (else the CPU).
Reported: the job's wall time, the training throughput it sustained in the FLOPs `sweet/plan/cluster.py` counts
(6 per parameter and token, tokens = examples × epochs × max_length, the padding bound the estimate assumes),
and the estimate's ratio to the measured time (>= 1: the request is long enough). On a GPU, the measured
throughput is the value to put in `cluster.gpu_tflops`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import Row

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 512, "tokenizer": "synthetic", "seed": 0}
SPEC = {"learning_rate": 5e-5, "batch_size": 16, "epochs": 1, "max_length": 64, "save_steps": 1000}


def _sweet(*args: str | Path, cwd: Path, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "sweet", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"sweet {args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc


def bench_train_job(budget: int, threads: int) -> list[Row]:
    from sweet.plan.cluster import JOB_START_MINUTES, SAFETY, Estimator
    from sweet.plan.config import load_config_file
    from sweet.plan.estimates import parameter_count
    from sweet.plan.settings import Model

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {threads} threads"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _sweet("prepare", "--task", "synthetic", "--task-spec", json.dumps({"source": "synthetic"}),
               "--out", work / "task", cwd=ROOT)
        _sweet("init-backbone", "--model-spec", json.dumps(BACKBONE), "--out", work / "backbone", cwd=ROOT)
        _sweet("split", "--task-dir", work / "task", "--budget", budget, "--seed", 1, "--calibration-size", 100,
               "--out", work / "splits.json", cwd=ROOT)
        start = time.perf_counter()
        train = _sweet("train", "--task-dir", work / "task", "--splits", work / "splits.json", "--backbone",
                       work / "backbone", "--exit-layers", "1,4,6,12", "--method", "sweet", "--seed", 1,
                       "--train-spec", json.dumps(SPEC), "--out", work / "model", "--metrics", work / "metrics.json",
                       cwd=ROOT, threads=threads)
        job_seconds = time.perf_counter() - start
        vocab = json.loads((work / "backbone" / "config.json").read_text())["vocab_size"]
    # The Trainer prints its closing metrics to stdout; without them the loop cannot be told from start-up.
    runtime = re.search(r"'train_runtime': '?([\d.]+)", train.stdout)
    if runtime is None:
        raise RuntimeError("the Trainer's closing 'train_runtime' line is missing from `sweet train`'s stdout")
    train_seconds = float(runtime.group(1))
    arch = {k: BACKBONE[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                     "max_position_embeddings")}
    arch["vocab_size"] = vocab
    params = parameter_count(arch)
    counted_flops = 6 * params * budget * SPEC["epochs"] * SPEC["max_length"]
    measured = counted_flops / train_seconds  # FLOP/s in the estimate's own accounting
    config = load_config_file(ROOT / "config.yaml")
    gpus = 1 if torch.cuda.is_available() else 0
    model = Model(name="bert-base-shaped", slug="b", backbone="x", kind="local", exit_layers=[1, 4, 6, 12],
                  training=SPEC, arch=arch)
    estimate = Estimator(config, gpus=gpus, threads=threads).train_estimate(model, budget)
    assumed = "cluster.gpu_tflops" if gpus else "cluster.cpu_gflops_per_thread"
    per_unit = measured / 1e12 if gpus else measured / 1e9 / threads
    return [
        Row("train_job_seconds", job_seconds, "-", "s",
            f"`python -m sweet train` whole job, SWEET, BERT-base shape ({params / 1e6:.0f}M parameters with the "
            f"synthetic vocabulary), budget {budget}, 1 epoch, batch 16, max_length 64, on {device}; training loop "
            f"{train_seconds:.1f} s of it"),
        Row("train_estimate_ratio", estimate * 60 / job_seconds, ">=1.0", "x",
            f"the runtime the workflow requests ({estimate:.1f} min = {JOB_START_MINUTES} min start allowance + "
            f"{SAFETY:g} × 6·N·tokens at the assumed throughput) / the measured job; the start allowance alone is "
            f"{JOB_START_MINUTES * 60 / job_seconds:.1f}× this job, the FLOPs term "
            f"{((estimate - JOB_START_MINUTES) * 60) / train_seconds:.2f}× its training loop"),
        Row("train_throughput", per_unit, "-", "TFLOP/s per GPU" if gpus else "GFLOP/s per thread",
            f"6·N·(examples × epochs × max_length) / training-loop time: the measured value of {assumed} "
            f"(config.yaml assumes {config['cluster'][assumed.split('.')[1]]}); real batches are shorter than "
            f"max_length, so this is the throughput in the estimate's own (padded) accounting"),
    ]
