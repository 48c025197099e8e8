"""Export a run and predict with it: the deployable classifier takes the exits the offline simulation takes.

Run folders are built in-process as the workflow would leave them (a prepared synthetic task, a tiny randomly
initialised BERT with the offline tokenizer, exit heads scaled so that confidences spread, the model saved with
its tokenizer, `sweet.evaluate.evaluate`'s logits.npz, the `curves` command's CSVs), for EE, SWEET and MM. The
other branch's operating_points.csv and risk_control.csv are small hand-written fixtures of its column contract.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_features  # noqa: F401  (sets one torch thread and quiet transformers, as other tests)

import sweet
import sweet.compiled
from sweet.cli import main
from sweet.curves import load_logits
from sweet.data import load_prepared, prepare_task
from sweet.errors import UserError
from sweet.exits import EXIT_RULES, calibrated_probs, simulate
from sweet.export import ExportPaths, PolicyRequest, check_exports, export_run

EXITS = [1, 2, 4]
TEMPERATURES = [1.3, 0.9, 1.1]
TASK_SPEC = {"source": "synthetic", "train_size": 300, "eval_size": 80}
BACKBONE_SPEC = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "intermediate_size": 64, "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0,
                 "initializer_range": 0.2}
MAX_LENGTH = 24  # below the synthetic sentences' longest, so truncation matters


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from sweet.backbones import init_backbone

    root = tmp_path_factory.mktemp("export")
    prepare_task("synthetic", TASK_SPEC, root / "data" / "synthetic")
    init_backbone(BACKBONE_SPEC, str(root / "backbone"))
    return root


def _scale(model, factor: float = 4.0) -> None:
    with torch.no_grad():
        for head in model.heads:
            head.classifier.weight.mul_(factor)


def _build_run(base: Path, method: str) -> Path:
    """A finished run folder: model/ (with its tokenizer), temperatures.json, logits.npz, individual_exits.csv."""
    from transformers import AutoTokenizer

    from sweet import EarlyExitModel, MultiModel
    from sweet.evaluate import evaluate

    run = base / "runs" / "synthetic" / "tiny-bert" / "b200" / method / "s1"
    if (run / "logits.npz").is_file():
        return run
    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(str(base / "backbone"))
    tokenizer.model_max_length = MAX_LENGTH  # as sweet.train saves it
    if method == "mm":
        model = MultiModel.from_pretrained(base / "backbone", num_labels=2, exit_layers=EXITS)
        with torch.no_grad():
            for member in model.members:
                member.classifier.classifier.weight.mul_(4.0)
        model.save_pretrained(run / "model")
        for k in range(1, len(EXITS) + 1):
            tokenizer.save_pretrained(str(run / "model" / f"member_{k}"))
    else:
        model = EarlyExitModel.from_pretrained(base / "backbone", num_labels=2, exit_layers=EXITS, method=method)
        _scale(model)
        model.save_pretrained(run / "model")
        tokenizer.save_pretrained(str(run / "model" / "backbone"))
    (run / "model.checkpoints").mkdir()  # a leftover that must not be exported
    (run / "temperatures.json").write_text(json.dumps({"temperatures": TEMPERATURES, "exits": []}))
    task = load_prepared(base / "data" / "synthetic")
    evaluate(run / "model", list(task.eval), TEMPERATURES, run / "logits.npz")
    main(["curves", "--logits", str(run / "logits.npz"), "--task-dir", str(base / "data" / "synthetic"), "--meta",
          "task=synthetic", "model=tiny-bert", "budget=200", f"method={method}", "seed=1",
          "--out", str(run / "curves.csv"), "--exits-out", str(run / "individual_exits.csv")])
    return run


def _gap_threshold(run: Path, quantile: float) -> float:
    """A confidence threshold inside a wide gap between exit-1 confidences (so no float tie can flip an exit),
    written as %.6g would write it (how the policy CSVs store thresholds)."""
    logits = load_logits(run / "logits.npz")
    confidences = calibrated_probs(logits["exit_logits"], logits["temperatures"]).max(axis=-1)
    conf = np.unique(confidences)
    first = confidences[0]
    # gaps between any exits' confidences that split exit 1's examples
    gaps = [(a, b) for a, b in zip(conf, conf[1:]) if b - a > 1e-3 and first.min() < a and b <= first.max()]
    a, b = gaps[int(quantile * (len(gaps) - 1))]
    return float(f"{(a + b) / 2:.6g}")


def _offline(run: Path, rule: str, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions, exit indices, probabilities at the exit) of the simulation on the stored logits."""
    logits = load_logits(run / "logits.npz")
    probs = calibrated_probs(logits["exit_logits"], logits["temperatures"])
    exits = simulate(EXIT_RULES[rule], probs, None, threshold)
    at_exit = probs[exits, np.arange(probs.shape[1])]
    return at_exit.argmax(-1), exits, at_exit


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _operating_points(run: Path, threshold: float) -> None:
    """operating_points.csv by its contract: thresholds chosen on the calibration split per target speedup."""
    rows = []
    for strategy in ("confidence", "entropy"):
        for target, t in ((1.5, 0.999), (2.0, threshold), (3.0, 0.6)):
            rows.append({"strategy": strategy, "target_speedup": target, "threshold": t if strategy == "confidence"
                         else 0.3, "calibration_speedup": target * 1.01, "calibration_score": 0.8, "eval_speedup": 1.9,
                         "eval_score": 0.7, "envelope_score": 0.75})
    _write_csv(run / "operating_points.csv", rows)


def _risk_control(run: Path, threshold: float) -> None:
    rows = []
    for risk in ("disagreement", "accuracy-drop"):
        for epsilon, delta, t, certified, why in ((0.05, 0.1, threshold, True, ""),
                                                  (0.01, 0.1, 1.0, False, "no threshold meets the bound")):
            rows.append({"strategy": "confidence", "risk": risk, "epsilon": epsilon, "delta": delta, "threshold": t,
                         "certified": certified, "why": why, "calibration_risk": 0.03, "upper_bound": 0.049,
                         "eval_risk": 0.04, "eval_speedup": 1.7, "eval_score": 0.7})
    _write_csv(run / "risk_control.csv", rows)


def _texts(base: Path) -> tuple[list[str], list[int]]:
    rows = load_prepared(base / "data" / "synthetic").eval
    return [r["text"] for r in rows], [r["label"] for r in rows]


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ee", "sweet", "mm"])
def test_predict_takes_the_simulated_exits_at_the_policy(base: Path, tmp_path: Path, method: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = _build_run(base, method)
    threshold = _gap_threshold(run, 0.5)
    _operating_points(run, threshold)
    out = tmp_path / "classifier"
    policy = export_run(ExportPaths(run), PolicyRequest("held-out", target_speedup=2.0), base / "data" / "synthetic",
                        out, grid="smoke")
    assert policy["threshold"] == threshold and policy["chosen_by"]["how"] == "held-out"
    assert policy["chosen_by"]["row"]["target_speedup"] == "2.0"
    assert policy["run"] == {"task": "synthetic", "model": "tiny-bert", "budget": 200, "method": method, "seed": 1,
                             "folder": str(run)}
    assert policy["model"]["max_length"] == MAX_LENGTH
    assert not list(out.rglob("*.checkpoints"))

    preds, exits, probs = _offline(run, "confidence", threshold)
    assert 0 < (exits == 0).sum() < len(exits)  # the policy really splits the examples between exits
    # The measured numbers are recomputed from the logits at this policy (the fixture's eval_* are made up).
    logits = load_logits(run / "logits.npz")
    accuracy = float((preds == logits["labels"]).mean())
    assert policy["evaluation"]["score"] == pytest.approx(accuracy)
    costs = logits["layer_costs"]
    assert policy["evaluation"]["speedup"] == pytest.approx(EXITS[-1] / costs[exits].mean())

    texts, _ = _texts(base)
    # the hook runner, and the compiled path's segments (as plain Python: see sweet.compiled.CPU_BACKEND)
    monkeypatch.setattr(sweet.compiled, "CPU_BACKEND", None)
    for compile in (False, True):
        classifier = sweet.load_classifier(out, compile=compile)
        assert classifier.compiled is compile
        for batch_size in (1, 7, 32):
            predicted = classifier.predict(texts, batch_size=batch_size)
            assert [p.label_id for p in predicted] == preds.tolist()
            assert [p.exit_layer for p in predicted] == [EXITS[e] for e in exits]
            assert [p.exit for p in predicted] == (exits + 1).tolist()
            assert np.allclose([p.probabilities for p in predicted], probs, atol=1e-5)
    assert set(classifier._runners) == {1, 7, 32}
    names = load_prepared(base / "data" / "synthetic").label_names
    assert [p.label for p in predicted] == [names[i] for i in preds]


def test_risk_control_and_manual_policies(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    run = _build_run(base, "sweet")
    threshold = _gap_threshold(run, 0.3)
    _risk_control(run, threshold)
    task_dir = base / "data" / "synthetic"
    policy = export_run(ExportPaths(run), PolicyRequest("risk-control", risk="disagreement", epsilon=0.05),
                        task_dir, tmp_path / "risk")
    assert policy["threshold"] == threshold
    assert policy["chosen_by"] | {"row": None} == {
        "how": "risk-control", "split": "calibration", "risk": "disagreement", "epsilon": 0.05, "delta": 0.1,
        "certified": True, "why": "", "table": "risk_control.csv", "row": None}
    card = (tmp_path / "risk" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sweet\n") and "certified: yes" in card
    assert f"threshold {threshold:.6g}" in card and f"{policy['evaluation']['speedup']:.3f}×" in card

    # An uncertified row is exported with a warning, and the card says so.
    uncertified = export_run(ExportPaths(run), PolicyRequest("risk-control", risk="accuracy-drop", epsilon=0.01,
                                                             delta=0.1), task_dir, tmp_path / "uncertified")
    assert uncertified["chosen_by"]["certified"] is False
    assert "NO (no threshold meets the bound)" in (tmp_path / "uncertified" / "README.md").read_text()

    # manual, through the CLI; predict through the CLI gives the simulation's labels and exits
    manual = tmp_path / "manual"
    main(["export", "--run", str(run), "--out", str(manual), "--rule", "confidence", "--threshold", str(threshold),
          "--task-dir", str(task_dir), "--name", "sweet-demo"])
    written = json.loads((manual / "exit_policy.json").read_text())
    assert written["chosen_by"] == {"how": "manual"} and written["name"] == "sweet-demo"
    assert written["command"].startswith("python -m sweet export --run ")
    assert written["temperatures"] == [float(np.float32(t)) for t in TEMPERATURES]
    texts, labels = _texts(base)
    (tmp_path / "in.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    main(["predict", str(manual), "--input", str(tmp_path / "in.tsv"), "--out", str(tmp_path / "preds.tsv")])
    with open(tmp_path / "preds.tsv", encoding="utf-8", newline="") as fh:
        out_rows = list(csv.DictReader(fh, delimiter="\t"))
    # --compile on (segments as plain Python here: sweet.compiled.CPU_BACKEND) writes the same file as off, and
    # says once how long its warm-up took; --precision bf16 on a CPU is a one-line error
    monkeypatch.setattr(sweet.compiled, "CPU_BACKEND", None)
    capsys.readouterr()
    for mode in ("on", "off"):
        main(["predict", str(manual), "--input", str(tmp_path / "in.tsv"), "--out", str(tmp_path / f"{mode}.tsv"),
              "--compile", mode, "--batch-size", "8"])
        err = capsys.readouterr().err
        assert err.count("warm-up") == (mode == "on")
    on, off = (list(csv.DictReader((tmp_path / f"{mode}.tsv").read_text(encoding="utf-8").splitlines(),
                                   delimiter="\t")) for mode in ("on", "off"))
    probabilities = [k for k in on[0] if k.startswith("prob_")]
    # labels and exits equal; probabilities to float tolerance (padding to a length bucket changes rounding)
    assert [{k: v for k, v in r.items() if k not in probabilities} for r in on] == \
        [{k: v for k, v in r.items() if k not in probabilities} for r in off]
    np.testing.assert_allclose([[float(r[k]) for k in probabilities] for r in on],
                               [[float(r[k]) for k in probabilities] for r in off], atol=1e-5)
    line = _one_line_error(capsys, ["predict", str(manual), "--input", str(tmp_path / "in.tsv"), "--precision", "bf16"])
    assert "precision: bf16 needs a CUDA device" in line
    preds, exits, _ = _offline(run, "confidence", threshold)
    assert [int(r["label_id"]) for r in out_rows] == preds.tolist()
    assert [int(r["exit_layer"]) for r in out_rows] == [EXITS[e] for e in exits]
    assert [r["sentence"] for r in out_rows] == texts
    assert {f"prob_{n}" for n in written["task"]["label_names"]} <= set(out_rows[0])


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_requests_are_one_line_errors(base: Path, tmp_path: Path, capsys) -> None:
    run = _build_run(base, "ee")
    _operating_points(run, 0.9)
    _risk_control(run, 0.9)
    task = ["--task-dir", str(base / "data" / "synthetic")]
    out = tmp_path / "out"
    cases = {
        "--target-speedup: 2.5 is not a target": ["--policy", "held-out", "--target-speedup", "2.5"],
        "--strategy: ": ["--policy", "held-out", "--target-speedup", "2", "--strategy", "patience"],
        "--epsilon: 0.2 is not in": ["--policy", "risk-control", "--risk", "disagreement", "--epsilon", "0.2"],
        "--delta: 0.5 is not in": ["--policy", "risk-control", "--risk", "disagreement", "--epsilon", "0.05",
                                   "--delta", "0.5"],
        "--epsilon: policy risk-control needs it": ["--policy", "risk-control", "--risk", "disagreement"],
        "--policy: give held-out": [],
        "--rule: only policy manual": ["--policy", "held-out", "--target-speedup", "2", "--rule", "entropy"],
    }
    for expected, argv in cases.items():
        line = _one_line_error(capsys, ["export", "--run", str(run), "--out", str(out), *task, *argv])
        assert expected in line, (expected, line)
    assert "--run:" in _one_line_error(capsys, ["export", "--run", str(tmp_path / "nope"), "--out", str(out), *task,
                                                "--threshold", "0.9"])
    # A finished run whose model was deleted (keep_checkpoints: false): refused, nothing retrained or written.
    gone = tmp_path / "gone"
    shutil.copytree(run, gone, ignore=shutil.ignore_patterns("model"))
    line = _one_line_error(capsys, ["export", "--run", str(gone), "--out", str(out), *task, "--threshold", "0.9"])
    assert line.startswith(f"error: --model: {gone / 'model'} holds no trained model") and "retrain" in line
    assert not out.exists()
    # predict: a folder that is not an export, and a column the input lacks
    assert "exit_policy.json" in _one_line_error(capsys, ["predict", str(run), "--input", str(tmp_path / "x.tsv")])
    export_run(ExportPaths(run), PolicyRequest("manual", threshold=0.9), base / "data" / "synthetic", out)
    (tmp_path / "x.tsv").write_text("review\nfine\n")
    line = _one_line_error(capsys, ["predict", str(out), "--input", str(tmp_path / "x.tsv")])
    assert line.startswith("error: --text-column:") and "['review']" in line
    with pytest.raises(UserError, match=r"texts\[1\]"):
        sweet.load_classifier(out).predict(["fine", 3])


def test_config_exports_name_the_field() -> None:
    grid = {"tasks": ["t"], "models": ["m"], "budgets": [200], "methods": ["ee", "sweet"], "seeds": [1]}
    run = {"task": "t", "model": "m", "budget": 200, "method": "sweet", "seed": 1}
    good = {"a": {**run, "policy": "held-out", "target_speedup": 2.0},
            "b": {**run, "policy": "manual", "rule": "entropy", "threshold": 0.2},
            "c": {**run, "policy": "risk-control", "risk": "disagreement", "epsilon": 0.05}}
    check_exports({"grids": {"g": {**grid, "exports": good}}})
    bad = {
        "grids.g.exports.x.method: 'mm' is not one of grid g's methods": {**run, "method": "mm", "policy": "manual",
                                                                         "threshold": 0.9},
        "grids.g.exports.x.budget: 300": {**run, "budget": 300, "policy": "manual", "threshold": 0.9},
        "grids.g.exports.x.target_speedup: policy held-out needs it": {**run, "policy": "held-out"},
        "grids.g.exports.x.threshold: not used by policy held-out": {**run, "policy": "held-out",
                                                                    "target_speedup": 2, "threshold": 0.5},
        "grids.g.exports.x.rule: only policy manual": {**run, "policy": "held-out", "target_speedup": 2,
                                                      "rule": "entropy"},
    }
    for message, entry in bad.items():
        with pytest.raises(UserError) as err:
            check_exports({"grids": {"g": {**grid, "exports": {"x": entry}}}})
        assert str(err.value).startswith(message), str(err.value)
