"""`calibrate --logits-out` keeps the calibration split's per-exit logits: the very numbers the temperatures were
fitted on, in logits.npz's format, equal to a fresh pass of the model over those rows (EE, SWEET and MM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from sweet.backbones import init_backbone
from sweet.batches import encode, load_tokenizer
from sweet.calibrate import calibrate_exits
from sweet.cli import main
from sweet.curves import load_logits
from sweet.data import load_prepared, make_splits, prepare_task
from sweet.errors import UserError
from sweet.evaluate import exit_logits, load_model
from sweet.exits import EXIT_RULES
from sweet.model import EarlyExitModel
from sweet.multimodel import MultiModel

EXITS = [1, 2, 4]
MODEL_SPEC = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibration_logits")
    prepare_task("synthetic", {"source": "synthetic", "train_size": 300, "eval_size": 50}, root / "task")
    init_backbone(MODEL_SPEC, root / "backbone")
    task = load_prepared(root / "task")
    splits = make_splits(len(task.train), budget=100, calibration_size=70, seed=1)
    (root / "splits.json").write_text(json.dumps({"task": task.name, **splits}))
    return root


def _untrained_model(setup: Path, method: str, name: str = "") -> Path:
    """A randomly initialised model folder as `train` leaves it (weights + tokenizer): its exits disagree, which
    is all an exactness test needs."""
    folder = setup / (name or method) / "model"
    tokenizer = AutoTokenizer.from_pretrained(setup / "backbone")
    if method == "mm":
        MultiModel.from_pretrained(setup / "backbone", num_labels=2, exit_layers=EXITS).save_pretrained(folder)
        tokenizer.save_pretrained(folder / "member_1")
    else:
        EarlyExitModel.from_pretrained(setup / "backbone", num_labels=2, exit_layers=EXITS,
                                       method=method).save_pretrained(folder)
        tokenizer.save_pretrained(folder / "backbone")
    return folder


@pytest.mark.parametrize("method", ["ee", "sweet", "mm"])
def test_calibration_logits_equal_a_fresh_pass_and_match_logits_npz(setup: Path, method: str) -> None:
    model_dir = _untrained_model(setup, method)
    run = model_dir.parent
    main(["calibrate", "--model", str(model_dir), "--task-dir", str(setup / "task"), "--splits",
          str(setup / "splits.json"), "--out", str(run / "temperatures.json"),
          "--logits-out", str(run / "calibration_logits.npz")])
    main(["evaluate", "--model", str(model_dir), "--task-dir", str(setup / "task"), "--temperatures",
          str(run / "temperatures.json"), "--out", str(run / "logits.npz")])
    stored = load_logits(run / "calibration_logits.npz")
    evaluation = load_logits(run / "logits.npz")

    task = load_prepared(setup / "task")
    splits = json.loads((setup / "splits.json").read_text())
    by_id = {r["id"]: r for r in task.train}
    rows = [by_id[i] for i in splits["calibration_ids"]]
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    # the same batching as the calibrate stage (its default batch size), so the same padding: bit-identical
    fresh, _ = exit_logits(model, encode(rows, tokenizer), batch_size=64)
    np.testing.assert_array_equal(stored["exit_logits"], fresh)
    np.testing.assert_array_equal(stored["ids"], splits["calibration_ids"])
    np.testing.assert_array_equal(stored["labels"], [r["label"] for r in rows])
    temperatures = json.loads((run / "temperatures.json").read_text())["temperatures"]
    np.testing.assert_array_equal(stored["temperatures"], np.asarray(temperatures, dtype=np.float32))
    np.testing.assert_allclose(calibrate_exits(fresh, stored["labels"])["temperatures"], temperatures)
    assert str(stored["calibrate_on"]) == "pool"
    assert str(stored["method"]) == method
    # logits.npz's format: the same keys (and kinds) apart from the split marker, so every reader of logits.npz
    # (curves, operating points, export) reads it unchanged
    assert set(stored) - {"calibrate_on"} == set(evaluation)
    for key in evaluation:
        assert stored[key].dtype == evaluation[key].dtype, key
        if key not in ("exit_logits", "labels", "ids", "lengths", "lte_scores"):
            np.testing.assert_array_equal(stored[key], evaluation[key])


def test_operating_points_stage_writes_the_contract_exactly_and_refuses_an_eval_calibration(setup: Path) -> None:
    import pandas as pd

    from sweet.operating_points import OPERATING_POINT_COLUMNS
    from sweet.reporting.collect import OPERATING_POINT_COLUMNS as COLLECTED_POINTS
    from sweet.reporting.collect import RISK_CONTROL_COLUMNS
    from sweet.risk import RISK_COLUMNS

    model_dir = _untrained_model(setup, "sweet", name="stage")
    run = model_dir.parent
    common = ["--task-dir", str(setup / "task")]
    main(["calibrate", "--model", str(model_dir), *common, "--splits", str(setup / "splits.json"),
          "--out", str(run / "temperatures.json"), "--logits-out", str(run / "calibration_logits.npz")])
    main(["evaluate", "--model", str(model_dir), *common, "--temperatures", str(run / "temperatures.json"),
          "--out", str(run / "logits.npz")])
    stage = ["operating-points", "--calibration-logits", str(run / "calibration_logits.npz"), "--logits",
             str(run / "logits.npz"), *common, "--meta", "task=synthetic", "model=tiny", "budget=100",
             "method=sweet", "seed=1", "--targets", "1.5,2", "--risk-control", '{"epsilons": [0.05], "delta": 0.1}',
             "--out", str(run / "operating_points.csv"), "--risk-out", str(run / "risk_control.csv")]
    main(stage)
    points = pd.read_csv(run / "operating_points.csv")
    risk = pd.read_csv(run / "risk_control.csv")
    assert list(points.columns) == ["task", "model", "budget", "method", "seed", *OPERATING_POINT_COLUMNS]
    assert list(risk.columns) == ["task", "model", "budget", "method", "seed", *RISK_COLUMNS]
    assert set(COLLECTED_POINTS) <= set(points.columns) and set(RISK_CONTROL_COLUMNS) <= set(risk.columns)
    rules = sum(not rule.needs_lte for rule in EXIT_RULES.values())  # every rule but learned-to-exit (not trained)
    assert len(points) == rules * 2 and len(risk) == rules * 2  # rules × targets (× risks)
    # thresholds are written exactly: each one read back is a point of the grid the curves use
    from sweet.curves import threshold_grid

    grid, _ = threshold_grid("confidence", 2, 3, 11, 101)
    reached = points[(points["strategy"] == "confidence") & points["reached"]]
    assert reached["threshold"].isin(grid).all()
    certified = risk[risk["certified"] & (risk["strategy"] == "confidence")]
    assert certified["threshold"].isin(grid).all()

    # calibrated on the evaluation set: no guarantee, so the stage refuses (one line, exit 2, nothing written)
    record = load_logits(run / "calibration_logits.npz")
    record["calibrate_on"] = np.array("eval")
    np.savez(run / "eval_calibration.npz", **record)
    stage[2] = str(run / "eval_calibration.npz")
    stage[-3], stage[-1] = str(run / "other_points.csv"), str(run / "other_risk.csv")
    with pytest.raises(SystemExit) as exit_info:
        main(stage)
    assert exit_info.value.code == 2
    assert not (run / "other_points.csv").exists() and not (run / "other_risk.csv").exists()


def test_combine_records_the_per_exit_method_and_evaluation_reads_it(setup: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`combine --method` records the per-exit method in sweet_config.json and the logits say it; with a second
    per-exit method registered, a folder that records none is refused rather than taken for MM."""
    from sweet import methods
    from sweet.evaluate import method_of

    folder = _untrained_model(setup, "mm", "combined")
    members = [str(folder / f"member_{k}") for k in range(1, len(EXITS) + 1)]
    second = methods.Method("mm2", "MM 2", "#123456", "8", "a second per-exit method", "none", layout="per-exit")
    monkeypatch.setitem(methods.METHODS, "mm2", second)
    main(["combine", "--members", *members, "--method", "mm2", "--out", str(folder / "sweet_config.json")])
    assert json.loads((folder / "sweet_config.json").read_text())["method"] == "mm2"
    assert method_of(load_model(folder)) == "mm2"
    main(["combine", "--members", *members, "--out", str(folder / "sweet_config.json")])  # as before: no method
    with pytest.raises(UserError, match="does not record its method"):
        method_of(load_model(folder))
    monkeypatch.delitem(methods.METHODS, "mm2")
    assert method_of(load_model(folder)) == "mm"  # folders written before: MM, the only per-exit method
