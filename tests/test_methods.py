"""The method registry and each method's training, checked exactly on tiny random BERT and RoBERTa backbones.

Gradient routing: for every method and every exit's own loss ℓ_k, the gradient a backbone parameter of block j
receives equals EE's on the same weights times the product of the boundary factors between them (GE's and partial
separation's values written out by hand), and is exactly zero where the method cuts it. Losses: PABEE's weights,
BERxiT's odd and even steps, self-distillation's value and its teacher, DeeBERT's two stages (what each one
trains) and a kill in stage 2 resuming without redoing stage 1, to the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import backbone, pad_id, random_batch
from transformers import TrainerCallback

from sweet import EarlyExitModel, losses, methods
from sweet.backbones import init_backbone
from sweet.conflict_probe import block_parameters
from sweet.errors import UserError
from sweet.plan.settings import TrainSpec
from sweet.resume import TrainingInterrupted
from sweet.synthetic import make_task
from sweet.train import train

EXITS = [1, 2, 4]  # three blocks: layer 1 (+ embeddings), layer 2, layers 3-4
NUM_LABELS = 3
ARCHS = ("bert", "roberta")
JOINT = methods.names("joint")


def _model(arch: str, tmp_path_factory, method: str, **options) -> EarlyExitModel:
    torch.manual_seed(1)
    model = EarlyExitModel.from_pretrained(backbone(arch, tmp_path_factory), num_labels=NUM_LABELS,
                                           exit_layers=EXITS, method=method, method_options=options)
    return model.eval()


def _exit_grads(model: EarlyExitModel, arch: str) -> list[dict[str, torch.Tensor]]:
    """Per exit k: every parameter's gradient of ℓ_k alone (zeros where none arrives)."""
    out = model(**random_batch(4, 10, seed=3, num_labels=NUM_LABELS, pad=pad_id(arch)))
    names, params = zip(*model.named_parameters())
    per_exit = []
    for k in range(model.num_exits):
        grads = torch.autograd.grad(out.exit_losses[k], params, retain_graph=True, allow_unused=True)
        per_exit.append({n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)})
    return per_exit


def _block_names(model: EarlyExitModel) -> list[list[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [[ids[id(p)] for p in block] for block in block_parameters(model)]


# --------------------------------------------------------------------------------------------------- registry
def test_registry_entries_are_complete_and_distinct():
    assert methods.names()[:3] == ("ee", "sweet", "mm")
    assert methods.names("per-exit") == ("mm",)
    entries = list(methods.METHODS.values())
    assert len({m.color.lower() for m in entries}) == len(entries)
    assert len({m.marker for m in entries}) == len(entries)
    for method in entries:
        assert method.cite and method.summary and method.label
        assert all(stage.loss in losses.LOSSES for stage in method.stages), method.name
        for option in method.options.values():
            assert option.source and option.low <= option.default <= option.high


def test_registry_imports_no_torch():
    code = "import sys, sweet.methods; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_method_options_are_checked_in_one_line():
    assert methods.resolve_options("sep", None) == {"separation": 0.5}
    assert methods.resolve_options("distill", {"gamma": 1}) == {"gamma": 1.0, "temperature": 2.0}
    assert methods.resolve_options("ee", {}) == {}
    with pytest.raises(UserError, match=r"^method_options\.sep\.separation: 1\.5 is outside \[0\.0, 1\.0\]"):
        methods.resolve_options("sep", {"separation": 1.5})
    with pytest.raises(UserError, match=r"^method_options\.distill\.temperature: 0 is outside \(0\.0"):
        methods.resolve_options("distill", {"temperature": 0})
    with pytest.raises(UserError, match=r"^method_options\.ee\.gamma: ee has no such option \(its options: none\)"):
        methods.resolve_options("ee", {"gamma": 0.5})
    with pytest.raises(UserError, match=r"^method: 'fastbert' is not a method; use one of ee, sweet, mm"):
        methods.get("fastbert")
    assert methods.label("sep", {"separation": 0.25}) == "Partial separation α=0.25"


def test_boundary_scales_by_hand():
    """Gradient equilibrium over 3 exits: r = 3, 2, 1 exits at or after each."""
    assert methods.boundary_scales("ge", 3) == [(1 / 3, 2 / 3), (1 / 2, 1 / 2), (1.0, 0.0)]
    assert methods.boundary_scales("sep", 3, {"separation": 0.25}) == [(1, 0.75), (1, 0.75), (1, 0)]
    assert methods.boundary_scales("sweet", 3) == [(1, 0), (1, 0), (1, 0)]
    assert methods.boundary_scales("ee", 3) == [(1, 1), (1, 1), (1, 0)]


# --------------------------------------------------------------------------------------------------- gradients
# Factor on ℓ_k's gradient into a block-j parameter (1-based, j ≤ k) relative to EE's, written out by hand.
HAND_FACTORS = {
    # GE: exit k's head passes 1/r_k, each boundary i < k passes (r_i − 1)/r_i; r = 3, 2, 1
    "ge": {(1, 1): 1 / 3, (1, 2): 1 / 2 * 2 / 3, (1, 3): 1 * 1 / 2 * 2 / 3,
           (2, 2): 1 / 2, (2, 3): 1 * 1 / 2, (3, 3): 1.0},
    # α = 0.5: each boundary crossed halves the gradient
    "sep": {(1, 1): 1, (1, 2): 0.5, (1, 3): 0.25, (2, 2): 1, (2, 3): 0.5, (3, 3): 1},
    "sweet": {(1, 1): 1, (1, 2): 0, (1, 3): 0, (2, 2): 1, (2, 3): 0, (3, 3): 1},
}
for _name in ("pabee", "deebert", "berxit", "distill"):  # the gradient is shared as in EE: only the loss differs
    HAND_FACTORS[_name] = {(j, k): 1.0 for j in (1, 2, 3) for k in (1, 2, 3) if j <= k}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", [m for m in JOINT if m != "ee"])
def test_each_exits_gradient_into_each_block_is_eess_times_the_boundary_factors(arch, method, tmp_path_factory):
    # in float64, so a factor applied mid-way (rounded differently from EE's sum) is checked to 1e-10
    ee = _model(arch, tmp_path_factory, "ee").double()
    other = _model(arch, tmp_path_factory, method).double()
    other.load_state_dict(ee.state_dict())
    ee_grads, grads = _exit_grads(ee, arch), _exit_grads(other, arch)
    blocks = _block_names(ee)
    # the forward pass is the same function of the weights
    batch = random_batch(4, 10, seed=3, num_labels=NUM_LABELS, pad=pad_id(arch))
    assert torch.equal(ee(**batch).exit_logits, other(**batch).exit_logits)
    for k in range(1, 4):
        for j, names in enumerate(blocks, start=1):
            factor = HAND_FACTORS[method].get((j, k), 0.0)  # later blocks: nothing reaches them from ℓ_k
            for name in names:
                expected = ee_grads[k - 1][name] * factor
                if factor in (0.0, 1.0):
                    assert torch.equal(grads[k - 1][name], expected), (method, name, k)
                else:
                    torch.testing.assert_close(grads[k - 1][name], expected, rtol=1e-10, atol=1e-14)
        # an exit's own head parameters receive their gradient unscaled, and no other exit's head any
        for h in range(3):
            for name in (n for n in ee_grads[k - 1] if n.startswith(f"heads.{h}.")):
                expected = ee_grads[k - 1][name] if h == k - 1 else torch.zeros_like(ee_grads[k - 1][name])
                assert torch.equal(grads[k - 1][name], expected), (method, name, k)
    reached = [n for names in blocks for n in names if grads[2][n].abs().sum() > 0]
    assert reached, "ℓ_3 reaches the backbone"


@pytest.mark.parametrize("arch", ARCHS)
def test_separation_zero_is_ee_and_one_is_sweet_exactly(arch, tmp_path_factory):
    for alpha, same_as in ((0.0, "ee"), (1.0, "sweet")):
        reference = _model(arch, tmp_path_factory, same_as)
        sep = _model(arch, tmp_path_factory, "sep", separation=alpha)
        sep.load_state_dict(reference.state_dict())
        for a, b in zip(_exit_grads(reference, arch), _exit_grads(sep, arch)):
            assert all(torch.equal(a[n], b[n]) for n in a)


# --------------------------------------------------------------------------------------------------- losses
def test_pabee_weights_by_depth_and_equal_weights_are_ees_sum_normalised():
    exit_losses = torch.tensor([1.0, 2.0, 3.0])
    assert losses.depth_weighted(exit_losses, exit_layers=[1, 4, 6]) == pytest.approx((1 + 8 + 18) / 11)
    equal = losses.depth_weighted(exit_losses, exit_layers=[4, 4, 4])
    assert equal == pytest.approx(float(losses.total(exit_losses)) / 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_berxit_alternates_between_the_last_exit_and_every_exit(arch, tmp_path_factory):
    model = _model(arch, tmp_path_factory, "berxit")
    out = model(**random_batch(4, 10, seed=3, num_labels=NUM_LABELS, pad=pad_id(arch)))
    names, params = zip(*model.named_parameters())

    def grads(step: int) -> dict[str, torch.Tensor | None]:
        loss = losses.alternating(out.exit_losses, step=step)
        return dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))

    for even in (0, 2, 10):
        assert losses.alternating(out.exit_losses, step=even) == out.exit_losses[-1]
        g = grads(even)
        assert all(g[n] is None or not g[n].any() for n in names if n.startswith(("heads.0.", "heads.1.")))
    for odd in (1, 3):
        assert torch.equal(losses.alternating(out.exit_losses, step=odd), out.exit_losses.sum())
        g = grads(odd)
        assert all(g[n] is not None and g[n].abs().sum() > 0 for n in names if n.startswith("heads.0.classifier"))


def test_self_distillation_value_by_hand():
    exit_logits = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # 2 exits, 1 example, 2 classes
    exit_losses = torch.tensor([0.7, 0.3])
    gamma, temperature = 0.25, 2.0
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)  # teacher z_2 / T
    q = torch.softmax(torch.tensor([0.5, 0.0]), -1)  # student z_1 / T
    kl = float((p * (p.log() - q.log())).sum())
    expected = 0.3 + (1 - gamma) * 0.7 + gamma * temperature**2 * kl
    value = losses.self_distillation(exit_losses, exit_logits, gamma=gamma, temperature=temperature)
    assert float(value) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_self_distillation_last_exit_learns_from_its_labels_only(arch, tmp_path_factory):
    model = _model(arch, tmp_path_factory, "distill")
    out = model(**random_batch(4, 10, seed=3, num_labels=NUM_LABELS, pad=pad_id(arch)))
    names, params = zip(*model.named_parameters())
    loss = losses.self_distillation(out.exit_losses, out.exit_logits, gamma=0.5, temperature=2.0)
    distilled = dict(zip(names, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))
    own = dict(zip(names, torch.autograd.grad(out.exit_losses[-1], params, retain_graph=True, allow_unused=True)))
    last_head = [n for n in names if n.startswith("heads.2.")]
    assert last_head and all(torch.equal(distilled[n], own[n]) for n in last_head)
    # the soft term does reach the earlier exits: with γ = 1 their heads learn from the teacher alone
    soft = losses.self_distillation(out.exit_losses, out.exit_logits, gamma=1.0, temperature=2.0)
    g = dict(zip(names, torch.autograd.grad(soft, params, retain_graph=True, allow_unused=True)))
    student = out.exit_logits[0].detach().requires_grad_(True)
    teacher = out.exit_logits[-1].detach()
    kl = F.kl_div(F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1), log_target=True,
                  reduction="batchmean") * 4
    (expected_logit_grad,) = torch.autograd.grad(kl, student)
    assert g["heads.0.classifier.bias"] is not None
    torch.testing.assert_close(g["heads.0.classifier.bias"], expected_logit_grad.sum(0), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------- DeeBERT
SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 48,
         "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0}
SPEC = TrainSpec(learning_rate=1e-3, epochs=2, batch_size=8, max_length=32, save_steps=2)


class Snapshots(TrainerCallback):
    """The weights at the start and end of every Trainer run (one per stage), and a SIGTERM on request."""

    def __init__(self, kill_in_run: int | None = None, kill_at_step: int = 0) -> None:
        self.runs: list[dict[str, dict[str, torch.Tensor]]] = []
        self.kill_in_run, self.kill_at_step = kill_in_run, kill_at_step

    def _state(self, model) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.runs.append({"begin": self._state(model)})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.runs[-1]["end"] = self._state(model)

    def on_step_end(self, args, state, control, **kwargs):
        if len(self.runs) == self.kill_in_run and state.global_step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def deebert_setup(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("deebert")
    init_backbone({"model_type": "bert", **SIZES}, folder / "backbone")
    pool, _ = make_task(train_size=40, eval_size=4, seed=0)
    rows = [{**r, "id": i} for i, r in enumerate(pool)]
    return folder, rows


def test_deebert_stage_one_trains_the_backbone_and_last_exit_stage_two_only_the_earlier_exits(deebert_setup):
    folder, rows = deebert_setup
    snapshots = Snapshots()
    record = train(rows, 2, str(folder / "backbone"), [1, 2, 3], "deebert", 0, SPEC, folder / "m1", folder / "w1",
                   callbacks=[snapshots])
    assert len(snapshots.runs) == 2
    (b1, e1), (b2, e2) = ((r["begin"], r["end"]) for r in snapshots.runs)
    early = ("heads.0.", "heads.1.")
    changed = {k for k in b1 if not torch.equal(b1[k], e1[k])}
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("heads.2.") for k in changed)
    assert not any(k.startswith(early) for k in changed), "stage 1 trains on the last exit's loss alone"
    # stage 2 starts from stage 1's weights, every earlier exit a copy of the fine-tuned last exit
    assert all(torch.equal(b2[k], e1[k]) for k in b2 if not k.startswith(early))
    for k in (k for k in b2 if k.startswith(early)):
        assert torch.equal(b2[k], e1["heads.2." + k.split(".", 2)[2]])
    changed = {k for k in b2 if not torch.equal(b2[k], e2[k])}
    assert changed and all(k.startswith(early) for k in changed), "stage 2 changes no backbone or last-exit weight"
    assert {e["stage"] for e in record["log_history"]} == {"last-exit", "early-exits"}
    steps = [e["step"] for e in record["log_history"]]
    assert steps == sorted(steps) and record["global_steps"] == 2 * math.ceil(40 / 8) * 2
    saved = EarlyExitModel.from_pretrained(folder / "m1")
    assert saved.config.method == "deebert"
    assert all(torch.equal(v, e2[k]) for k, v in saved.state_dict().items())


def test_deebert_killed_in_stage_two_resumes_there_to_the_same_bytes(deebert_setup, capfd):
    folder, rows = deebert_setup
    args = (rows, 2, str(folder / "backbone"), [1, 2, 3], "deebert", 0, SPEC)
    reference = train(*args, folder / "ref", folder / "wref")
    killer = Snapshots(kill_in_run=2, kill_at_step=4)
    with pytest.raises(TrainingInterrupted):
        train(*args, folder / "killed", folder / "wkilled", callbacks=[killer])
    assert not (folder / "killed").exists()
    capfd.readouterr()
    rerun = Snapshots()
    resumed = train(*args, folder / "killed", folder / "wkilled", callbacks=[rerun])
    assert len(rerun.runs) == 1, "stage 1 is not redone"
    assert "stage-2-early-exits/checkpoint-4" in capfd.readouterr().err
    for name in ("exit_heads.safetensors", "backbone/model.safetensors"):
        a, b = load_file(folder / "ref" / name), load_file(folder / "killed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["log_history"] == reference["log_history"]
    assert resumed["global_steps"] == reference["global_steps"]
