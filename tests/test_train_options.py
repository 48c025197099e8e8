"""Training options through `sweet.train.train` on tiny inline backbones: the warmup ratio's schedule, and SWEET
refusing to start when the registry lets gradient leak across an exit boundary.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from transformers import TrainerCallback

from sweet.backbones import BACKBONES, init_backbone
from sweet.errors import UserError
from sweet.plan.settings import TrainSpec
from sweet.synthetic import make_task
from sweet.train import train

SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 48,
         "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0}
# DeBERTa-v2 with the convolution the encoder applies to layer 1's output (as deberta-v2-xlarge has)
DEBERTA_V2_CONV = {"model_type": "deberta-v2", "conv_kernel_size": 3, "relative_attention": True,
                   "pos_att_type": ["c2p", "p2c"], "position_buckets": 8, "max_relative_positions": 16,
                   "norm_rel_ebd": "layer_norm", "share_att_key": True, "type_vocab_size": 0}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    pool, _ = make_task(train_size=40, eval_size=4, seed=0)
    return [{**r, "id": i} for i, r in enumerate(pool)]


class LearningRates(TrainerCallback):
    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.by_step[state.global_step] = lr_scheduler.get_last_lr()[0]


def test_warmup_ratio_is_a_fraction_of_the_total_steps(rows, tmp_path):
    """40 examples, batch 8, 2 epochs: 10 steps; warmup_ratio 0.5 warms up over 5 of them, then decays linearly."""
    torch.set_num_threads(1)
    init_backbone({"model_type": "bert", **SIZES}, tmp_path / "backbone")
    spec = TrainSpec(learning_rate=1e-3, epochs=2, batch_size=8, max_length=32, save_steps=100, warmup_ratio=0.5)
    rates = LearningRates()
    record = train(rows, 2, str(tmp_path / "backbone"), [1, 3], "ee", 0, spec, tmp_path / "model", tmp_path / "work",
                   callbacks=[rates])
    assert record["global_steps"] == 10
    expected = {s: 1e-3 * (s / 5 if s < 5 else (10 - s) / 5) for s in range(1, 11)}
    assert rates.by_step == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bad", [1, 1.0, 2.5, -0.1, True, "0.1"])
def test_warmup_ratio_outside_zero_one_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"^training\.warmup_ratio: .*\[0, 1\)"):
        TrainSpec.from_dict({"warmup_ratio": bad})
    assert TrainSpec.from_dict({"warmup_ratio": 0}).warmup_ratio == 0
    assert TrainSpec.from_dict({"warmup_ratio": 0.06}).warmup_ratio == 0.06


def test_sweet_training_stops_before_the_first_step_when_gradient_leaks(rows, tmp_path, monkeypatch):
    """A DeBERTa-v2 entry that forgets the layer-1 convolution: SWEET cuts layer 1's output, but the convolution
    also reads the (uncut) embeddings, so exit 2 trains block 1. SWEET refuses before training; EE trains."""
    torch.set_num_threads(1)
    init_backbone({**DEBERTA_V2_CONV, **SIZES}, tmp_path / "backbone")
    monkeypatch.setitem(BACKBONES, "deberta-v2", dataclasses.replace(BACKBONES["deberta-v2"], after_first_layer=None))
    spec = TrainSpec(learning_rate=1e-3, epochs=1, batch_size=8, max_length=32, save_steps=100)
    steps = LearningRates()
    with pytest.raises(UserError, match=r"^sweet: parameter 'backbone\..*' receives gradient from exits 1, 2.*"
                                        r"BACKBONES\['deberta-v2'\]"):
        train(rows, 2, str(tmp_path / "backbone"), [1, 3], "sweet", 0, spec, tmp_path / "sweet", tmp_path / "work",
              callbacks=[steps])
    assert steps.by_step == {} and not (tmp_path / "sweet").exists() and not (tmp_path / "work").exists()
    record = train(rows, 2, str(tmp_path / "backbone"), [1, 3], "ee", 0, spec, tmp_path / "ee", tmp_path / "work")
    assert record["global_steps"] == 5


# ---------------------------------------------------------------------------------------------- training.report_to
@pytest.mark.parametrize("report_to", ["tensorboard", "wandb", "mlflow"])
def test_report_to_reaches_the_training_arguments(report_to, tmp_path):
    from sweet.train import training_arguments

    spec = TrainSpec.from_dict({"report_to": report_to})
    assert training_arguments(spec, 0, tmp_path, 10, on_gpu=False).report_to == [report_to]
    assert training_arguments(TrainSpec(), 0, tmp_path, 10, on_gpu=False).report_to == []  # none: no integration


def test_report_to_outside_the_integrations_is_a_user_error():
    with pytest.raises(UserError, match=r"^training\.report_to: 'comet' is not one of none, tensorboard, wandb"):
        TrainSpec.from_dict({"report_to": "comet"})


def test_a_missing_tracking_package_fails_in_one_line_before_anything_loads(rows, tmp_path, monkeypatch):
    import sweet.tracking
    import sweet.train

    real = sweet.tracking.importlib.util.find_spec
    monkeypatch.setattr(sweet.tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb"
                        else real(name, *a))
    spec = TrainSpec(report_to="wandb")
    # the backbone does not exist either: the tracking package is checked first, so its message is the one seen
    with pytest.raises(UserError) as info:
        train(rows, 2, str(tmp_path / "no-backbone"), [1, 3], "ee", 0, spec, tmp_path / "model", tmp_path / "work")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training.report_to: wandb") and "pip install wandb" in message
    sweet.tracking.require_tracking_package("none")  # nothing to install
    monkeypatch.setattr(sweet.tracking.importlib.util, "find_spec", lambda name, *a: None)  # nothing installed
    with pytest.raises(UserError, match=r"^training\.report_to: tensorboard needs .*`pip install tensorboard`"):
        sweet.tracking.require_tracking_package("tensorboard")
    monkeypatch.setattr(sweet.tracking.importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboardX"
                        else None)
    sweet.tracking.require_tracking_package("tensorboard")  # the Trainer writes through tensorboardX then


def test_tracking_logs_beside_the_model_and_offline(tmp_path, monkeypatch):
    from sweet.plan.layout import tracking_dir
    from sweet.tracking import tracking_environment

    run = tmp_path / "run"
    assert tracking_dir(run / "model") == run / "tracking"
    assert tracking_dir(run / "model" / "member_2", member=2) == run / "tracking" / "member_2"
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    with tracking_environment("wandb", run / "tracking"):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(run / "tracking")
    assert "WANDB_MODE" not in os.environ and "WANDB_DIR" not in os.environ  # restored: nothing leaks to the next run
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own choice is kept
    with tracking_environment("wandb", run / "tracking"):
        assert os.environ["WANDB_MODE"] == "online"
    assert os.environ["WANDB_MODE"] == "online"
    with tracking_environment("tensorboard", run / "tracking"):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run / "tracking" / "tensorboard")
    with tracking_environment("mlflow", run / "tracking"):
        assert os.environ["MLFLOW_TRACKING_URI"] == (run / "tracking" / "mlruns").as_uri()  # a local file store
    with tracking_environment("none", tmp_path / "unused"):
        pass
    assert not (tmp_path / "unused").exists()
