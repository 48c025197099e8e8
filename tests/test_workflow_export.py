"""The workflow's exports (`grids.<grid>.exports`, target `classifiers`) with keep_checkpoints: false: the export
consumes the trained model in the same DAG, so the model is deleted only after it was exported and nothing is
retrained afterwards; an export listed after its run's model is gone is refused in one line. One tiny SWEET run
through the real workflow in a copy of the repository (about half a minute on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_workflow_kill import _copy_tree

pytestmark = [pytest.mark.slow,  # the real workflow in a copy of the repository: minutes on 2 cores
              pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")]

NEEDS_THE_MODEL = {"train", "train_member", "combine", "calibrate", "evaluate", "export"}
RUNS = "results/runs/synthetic-tiny/tiny-bert/b200"  # then sweet-<run id>/s1 (sweet.plan.layout)
EXPORT = {"task": "synthetic-tiny", "model": "tiny-bert", "budget": 200, "method": "sweet", "seed": 1,
          "policy": "manual", "rule": "confidence", "threshold": 0.8}


def overlay(exports: dict) -> str:
    return json.dumps({  # JSON is YAML: the overlay a user would write
        "grid": "exporting", "calibration_size": 100, "keep_checkpoints": False,
        "tasks": {"synthetic-tiny": {"source": "synthetic", "train_size": 400, "eval_size": 80}},
        "grids": {"exporting": {"tasks": ["synthetic-tiny"], "models": ["tiny-bert"], "budgets": [200],
                                "methods": ["sweet"], "seeds": [1], "training": {"gradient_conflict_every": 0},
                                "exports": exports}},
    })


def snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", "overlay.yaml"],
                          cwd=repo, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})


def planned(result: subprocess.CompletedProcess) -> set[str]:
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return set()
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()}


def test_export_keeps_the_model_until_exported_and_retrains_nothing(tmp_path: Path) -> None:
    repo = _copy_tree(tmp_path)
    (repo / "overlay.yaml").write_text(overlay({"sweet-fast": EXPORT}))
    assert planned(snakemake(repo, "-n", "classifiers")) >= {"train", "calibrate", "evaluate", "export"}
    result = snakemake(repo, "classifiers")
    assert result.returncode == 0, result.stderr[-4000:]
    folder = repo / "results/exporting/classifiers/sweet-fast"
    (run,) = (repo / RUNS).glob("sweet-*/s1")
    assert not (run / "model").exists()  # temp(): deleted once calibrated, evaluated and exported
    policy = json.loads((folder / "exit_policy.json").read_text())
    assert policy["grid"] == "exporting" and policy["run"]["model"] == "tiny-bert"
    assert policy["request"] == {"policy": "manual", "strategy": "confidence", "threshold": 0.8}
    assert "snakemake" not in policy["command"] and policy["command"].startswith("python -m sweet export --run ")

    # The exported classifier predicts what the offline simulation on the run's stored logits says.
    sys.path.insert(0, str(repo))
    try:
        import sweet
        from sweet.curves import load_logits
        from sweet.data import load_prepared
        from sweet.exits import EXIT_RULES, calibrated_probs, simulate

        logits = load_logits(run / "cal-pool100" / "logits.npz")
        probs = calibrated_probs(logits["exit_logits"], logits["temperatures"])
        exits = simulate(EXIT_RULES["confidence"], probs, None, 0.8)
        texts = [r["text"] for r in load_prepared(repo / "results/data/synthetic-tiny").eval]
        predicted = sweet.load_classifier(folder).predict(texts)
    finally:
        sys.path.remove(str(repo))
    assert [p.exit for p in predicted] == (exits + 1).tolist()
    assert [p.label_id for p in predicted] == probs[exits, np.arange(len(exits))].argmax(-1).tolist()

    # Afterwards nothing retrains: the target is up to date, and the rest of the grid needs no model.
    assert planned(snakemake(repo, "-n", "classifiers")) == set()
    assert not planned(snakemake(repo, "-n")) & NEEDS_THE_MODEL
    # An export asked for once the model is gone (a new one, or a changed request) is refused in one line.
    for exports in ({"sweet-fast": EXPORT, "late": {**EXPORT, "threshold": 0.9}},
                    {"sweet-fast": {**EXPORT, "threshold": 0.9}}):
        (repo / "overlay.yaml").write_text(overlay(exports))
        refused = snakemake(repo, "-n")
        assert refused.returncode == 1
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("error: grids.exporting.exports.") and "would retrain it" in last, last
        assert "Traceback" not in refused.stderr
    # A bad export entry is refused before anything is planned, naming the key.
    (repo / "overlay.yaml").write_text(overlay({"x": {**EXPORT, "budget": 300}}))
    bad = snakemake(repo, "-n")
    assert bad.returncode == 1 and "grids.exporting.exports.x.budget: 300" in bad.stderr.strip().splitlines()[-1]
