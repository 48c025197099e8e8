"""EarlyExitModel / MultiModel on tiny random encoders of every supported architecture.

Exact checks: SWEET's gradient separation (∂loss_k/∂θ is exactly zero for every parameter of earlier blocks),
EE's sharing, identical forward values, save/load round trips, MM members equal to the truncated checkpoint,
the separation audit's exact parameter sets, user errors, and that layers after the last exit never run.
"""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHITECTURES, DEPTH, VOCAB, backbone, gpt2_folder, hf_model_type, pad_id, random_batch
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from sweet import EarlyExitModel, MultiModel
from sweet.audit import separation_audit
from sweet.backbones import BACKBONES
from sweet.errors import UserError

EXITS = [1, 3, 4]
NUM_LABELS = 3


def _model(model_type: str, tmp_path_factory, method: str = "ee", exits=EXITS, **options) -> EarlyExitModel:
    torch.manual_seed(1)
    model = EarlyExitModel.from_pretrained(
        backbone(model_type, tmp_path_factory), num_labels=NUM_LABELS, exit_layers=exits, method=method, **options
    )
    return model.eval()  # no dropout: values are compared exactly


def _batch(model_type: str, n: int = 4, seq_len: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(n, seq_len, seed=seed, num_labels=NUM_LABELS, pad=pad_id(model_type))


def _grads(model: EarlyExitModel, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return dict(zip(names, grads))


def _is_zero(g: torch.Tensor | None) -> bool:
    return g is None or not bool(g.abs().sum() > 0)


def _layer_of(name: str) -> int | None:
    """1-based encoder layer of a backbone parameter name, 0 for the embeddings, None for anything else."""
    if name.startswith("backbone.embeddings."):
        return 0
    if name.startswith("backbone.encoder.conv."):
        return 1  # DeBERTa-v2's convolution is applied to layer 1's output: part of "after layer 1"
    prefix = "backbone.encoder.layer."
    if name.startswith(prefix):
        return int(name[len(prefix) :].split(".")[0]) + 1
    return None


# ----------------------------------------------------------------------------------------------------------------
# gradients
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_sweet_separation_is_exact(model_type, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, "sweet")
    out = model(**_batch(model_type))
    bounds = [0, *EXITS]
    for k in range(len(EXITS)):
        grads = _grads(model, out.exit_losses[k])
        # earlier blocks: the embeddings (part of block 1) and layers 1..exit_layers[k-1]
        earlier = {n: g for n, g in grads.items() if k > 0 and _layer_of(n) is not None and _layer_of(n) <= bounds[k]}
        if k > 0:
            assert any(n.startswith("backbone.embeddings.") for n in earlier)
            assert any(_layer_of(n) == bounds[k] for n in earlier)
        reached = sorted(n for n, g in earlier.items() if not _is_zero(g))
        assert reached == [], f"exit {k + 1} reaches earlier blocks: {reached}"
        # its own block: every layer between the previous exit and this one gets gradient
        own_layers = range(bounds[k] + 1, bounds[k + 1] + 1)
        for layer in own_layers:
            total = sum(g.abs().sum() for n, g in grads.items() if _layer_of(n) == layer and g is not None)
            assert total > 0, f"exit {k + 1} does not train its own layer {layer}"
        if k == 0:
            assert not _is_zero(grads["backbone.embeddings.word_embeddings.weight"])
        # later blocks are not reached either (they are not on the path to exit k)
        later = [n for n, g in grads.items() if (_layer_of(n) or 0) > bounds[k + 1] and not _is_zero(g)]
        assert later == []


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_ee_later_exits_reach_the_first_block(model_type, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, "ee")
    out = model(**_batch(model_type))
    for k in (1, 2):
        grads = _grads(model, out.exit_losses[k])
        assert not _is_zero(grads["backbone.embeddings.word_embeddings.weight"])
        layer1 = sum(g.abs().sum() for n, g in grads.items() if _layer_of(n) == 1 and g is not None)
        assert layer1 > 0


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_ee_and_sweet_forward_values_identical(model_type, tmp_path_factory):
    ee = _model(model_type, tmp_path_factory, "ee", learned_exit=True)
    sweet = _model(model_type, tmp_path_factory, "sweet", learned_exit=True)
    sweet.load_state_dict(ee.state_dict())
    batch = _batch(model_type)
    a, b = ee(**batch), sweet(**batch)
    assert a.exit_logits.shape == (len(EXITS), 4, NUM_LABELS)
    assert torch.equal(a.exit_logits, b.exit_logits)
    assert torch.equal(a.lte_scores, b.lte_scores)
    assert torch.equal(a.exit_losses, b.exit_losses)
    assert torch.equal(a.loss, a.exit_losses.sum())
    # the exits are not all the same function of the input
    assert not torch.equal(a.exit_logits[0], a.exit_logits[-1])


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_exits_read_the_stock_hidden_states(model_type, tmp_path_factory):
    """Exit k classifies exactly what the stock encoder reports as the hidden state after layer L_k."""
    model = _model(model_type, tmp_path_factory, "sweet")
    batch = _batch(model_type)
    out = model(**batch)
    stock = model.backbone(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states
    for k, layer in enumerate(EXITS):
        expected, _ = model.exit_head(k, stock[layer])
        torch.testing.assert_close(out.exit_logits[k], expected, rtol=0, atol=1e-6)
    if model_type == "deberta-v2-conv":
        assert model.exit_modules[0] is model.backbone.encoder.conv


def test_loss_is_unweighted_sum_of_cross_entropies(tmp_path_factory):
    model = _model("bert", tmp_path_factory, "ee")
    batch = _batch("bert")
    out = model(**batch)
    expected = [torch.nn.functional.cross_entropy(out.exit_logits[k], batch["labels"]) for k in range(len(EXITS))]
    torch.testing.assert_close(out.exit_losses, torch.stack(expected))
    torch.testing.assert_close(out.loss, torch.stack(expected).sum())
    assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).loss is None


# ----------------------------------------------------------------------------------------------------------------
# save / load
def _perturb_backbone(model: EarlyExitModel) -> None:
    """Stand-in for fine-tuning: the saved backbone must be the modified one, not the original checkpoint."""
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))


@pytest.mark.parametrize(
    ("model_type", "method", "options"),
    [
        ("bert", "ee", {}),
        ("bert", "sweet", {}),
        ("bert", "sweet", {"shared_pooler": True}),
        ("bert", "ee", {"learned_exit": True}),
        ("electra", "sweet", {"shared_pooler": True, "learned_exit": True}),
        ("deberta-v2", "sweet", {"learned_exit": True}),
        ("roberta", "ee", {"shared_pooler": True}),
        ("deberta", "ee", {}),
    ],
)
def test_save_load_restores_identical_logits(model_type, method, options, tmp_path_factory, tmp_path):
    model = _model(model_type, tmp_path_factory, method, **options)
    _perturb_backbone(model)
    batch = _batch(model_type, seed=3)
    before = model(**batch)
    model.save_pretrained(tmp_path / "saved")
    restored = EarlyExitModel.from_pretrained(tmp_path / "saved").eval()
    after = restored(**batch)
    assert restored.config == model.config
    assert restored.exit_layers == EXITS
    assert torch.equal(before.exit_logits, after.exit_logits)
    if options.get("learned_exit"):
        assert torch.equal(before.lte_scores, after.lte_scores)
    else:
        assert after.lte_scores is None
    # every parameter, backbone and heads, comes back bit for bit
    sd_a, sd_b = model.state_dict(), restored.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # the backbone folder is a stock Hugging Face model with the fine-tuned weights
    stock = AutoModel.from_pretrained(tmp_path / "saved" / "backbone")
    assert type(stock) is type(model.backbone)
    for name, value in stock.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[name]), name


def test_saved_model_refuses_extra_arguments(tmp_path_factory, tmp_path):
    _model("bert", tmp_path_factory).save_pretrained(tmp_path / "m")
    with pytest.raises(UserError):
        EarlyExitModel.from_pretrained(tmp_path / "m", num_labels=2, exit_layers=[1])


def test_shared_pooler_is_one_module(tmp_path_factory):
    bert = _model("bert", tmp_path_factory, "sweet", shared_pooler=True)
    assert all(h.pooler is None for h in bert.heads)
    assert bert.pooler_for_shared_heads() is bert.backbone.pooler.dense  # the reference's pretrained pooler
    electra = _model("electra", tmp_path_factory, "sweet", shared_pooler=True)
    assert electra.pooler_for_shared_heads() is electra.shared_pooler
    own = _model("bert", tmp_path_factory, "sweet")
    poolers = [h.pooler for h in own.heads]
    assert len({id(p) for p in poolers}) == len(EXITS)
    # each exit's own pooler starts from the pretrained one
    for p in poolers:
        assert torch.equal(p.weight, own.backbone.pooler.dense.weight)


# ----------------------------------------------------------------------------------------------------------------
# MultiModel
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_multimodel_members_are_truncated_stock_classifiers(model_type, tmp_path_factory):
    folder = backbone(model_type, tmp_path_factory)
    mm = MultiModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=[1, 2, 4])
    assert mm.exit_layers == [1, 2, 4]
    reference = AutoModel.from_pretrained(folder).state_dict()
    for member, depth in zip(mm.members, [1, 2, 4]):
        clf = member.classifier
        assert type(clf) is MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(clf.config)]
        assert clf.config.num_hidden_layers == depth
        assert clf.config.num_labels == NUM_LABELS
        assert len(clf.base_model.encoder.layer) == depth
        base = clf.base_model.state_dict()
        compared = 0
        for name, value in reference.items():
            layer = _layer_of("backbone." + name)
            if name.startswith("pooler."):
                continue  # the classifier's pooler is part of its head
            if layer is not None and layer > depth:
                assert name not in base
                continue
            assert torch.equal(base[name], value), name
            compared += 1
        assert compared > 0
        assert not any(f"encoder.layer.{depth}." in n for n in base)


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_multimodel_save_load_exact(model_type, tmp_path_factory, tmp_path):
    folder = backbone(model_type, tmp_path_factory)
    torch.manual_seed(0)
    mm = MultiModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=[2, 4], learned_exit=True).eval()
    batch = _batch(model_type, seed=5)
    before = mm(**batch)
    assert before.exit_logits.shape == (2, 4, NUM_LABELS)
    assert before.loss is not None and torch.equal(before.loss, before.exit_losses.sum())
    mm.save_pretrained(tmp_path / "mm")
    assert (tmp_path / "mm" / "member_1" / "config.json").is_file()
    restored = MultiModel.from_pretrained(tmp_path / "mm").eval()
    after = restored(**batch)
    assert restored.exit_layers == [2, 4]
    assert torch.equal(before.exit_logits, after.exit_logits)
    assert torch.equal(before.lte_scores, after.lte_scores)
    # each member folder is a stock HF classifier on its own
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mm" / "member_2").eval()
    assert torch.equal(stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, after.exit_logits[1])


# ----------------------------------------------------------------------------------------------------------------
# separation audit
def _audit(model_type, tmp_path_factory, method, **options) -> dict:
    return separation_audit(_model(model_type, tmp_path_factory, method, **options), VOCAB)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_audit_sweet_per_exit_heads_shares_nothing(model_type, tmp_path_factory):
    report = _audit(model_type, tmp_path_factory, "sweet")
    assert report["shared"] == {}
    assert report["n_parameters_shared"] == 0
    assert report["method"] == "sweet" and report["exit_layers"] == EXITS


def test_audit_sweet_shared_pooler_is_exactly_the_pooler(tmp_path_factory):
    report = _audit("bert", tmp_path_factory, "sweet", shared_pooler=True)
    assert report["shared"] == {"backbone.pooler.dense.weight": [1, 2, 3], "backbone.pooler.dense.bias": [1, 2, 3]}
    assert report["shared_pooler"] is True
    report = _audit("electra", tmp_path_factory, "sweet", shared_pooler=True)  # no pretrained pooler: a new one
    assert report["shared"] == {"shared_pooler.weight": [1, 2, 3], "shared_pooler.bias": [1, 2, 3]}


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("deberta-v2", {"backbone.encoder.rel_embeddings.weight", "backbone.encoder.LayerNorm.weight", "backbone.encoder.LayerNorm.bias"}),
        ("deberta-v2-conv", {"backbone.encoder.rel_embeddings.weight", "backbone.encoder.LayerNorm.weight", "backbone.encoder.LayerNorm.bias"}),
        ("deberta", {"backbone.encoder.rel_embeddings.weight"}),
    ],
)
def test_audit_sweet_deberta_shares_relative_embeddings(model_type, expected, tmp_path_factory):
    report = _audit(model_type, tmp_path_factory, "sweet")
    assert set(report["shared"]) == expected
    assert all(exits == [1, 2, 3] for exits in report["shared"].values())
    # and that is exactly what the registry declares as read by every layer
    declared = {
        name
        for name, _ in _model(model_type, tmp_path_factory).named_parameters()
        if any(name.startswith(f"backbone.{p}.") for p in BACKBONES[hf_model_type(model_type)].shared_across_layers)
    }
    assert declared == expected


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_audit_ee_shares_the_backbone(model_type, tmp_path_factory):
    report = _audit(model_type, tmp_path_factory, "ee")
    shared = report["shared"]
    assert report["n_parameters_shared"] == len(shared) > 30
    assert shared["backbone.embeddings.word_embeddings.weight"] == [1, 2, 3]
    assert any(_layer_of(n) == 1 for n in shared)
    assert any(_layer_of(n) == 3 and exits == [2, 3] for n, exits in shared.items())
    assert not any(_layer_of(n) == 4 for n in shared)  # only the last exit reads layer 4
    assert not any(n.startswith("heads.") for n in shared)


# ----------------------------------------------------------------------------------------------------------------
# user errors
@pytest.mark.parametrize("bad", [[4, 2], [0, 1], [1, 9], [], [2, 2], [1.5, 3]])
def test_bad_exit_layers_are_user_errors(bad, tmp_path_factory):
    folder = backbone("bert", tmp_path_factory)
    with pytest.raises(UserError, match="exit_layers"):
        EarlyExitModel.from_pretrained(folder, num_labels=2, exit_layers=bad)
    with pytest.raises(UserError, match="exit_layers"):
        MultiModel.from_pretrained(folder, num_labels=2, exit_layers=bad)


def test_unsupported_model_type_is_a_user_error(tmp_path):
    folder = gpt2_folder(tmp_path / "gpt2")
    with pytest.raises(UserError, match="backbone: model_type 'gpt2'"):
        EarlyExitModel.from_pretrained(folder, num_labels=2, exit_layers=[1])
    with pytest.raises(UserError, match="gpt2"):
        MultiModel.from_pretrained(folder, num_labels=2, exit_layers=[1])


def test_missing_backbone_and_bad_options_are_user_errors(tmp_path, tmp_path_factory):
    with pytest.raises(UserError, match="backbone"):
        EarlyExitModel.from_pretrained(tmp_path / "nowhere", num_labels=2, exit_layers=[1])
    folder = backbone("bert", tmp_path_factory)
    with pytest.raises(UserError, match="method"):
        EarlyExitModel.from_pretrained(folder, num_labels=2, exit_layers=[1], method="mm")
    with pytest.raises(UserError, match="num_labels"):
        EarlyExitModel.from_pretrained(folder, num_labels=1, exit_layers=[1])
    with pytest.raises(UserError, match="num_labels"):
        EarlyExitModel.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------------------------
# layers after the last exit are never computed
@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
@pytest.mark.parametrize("method", ["ee", "sweet"])
def test_layers_after_last_exit_not_computed(model_type, method, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, method, exits=[1, 2])
    calls = [0] * DEPTH

    def counter(i):
        def hook(module, args, output):
            calls[i] += 1

        return hook

    handles = [layer.register_forward_hook(counter(i)) for i, layer in enumerate(model.layers)]
    try:
        out = model(**_batch(model_type))
    finally:
        for h in handles:
            h.remove()
    assert calls == [1, 1, 0, 0]
    assert out.exit_logits.shape[0] == 2
    assert out.loss is not None
    out.loss.backward()  # the abandoned forward pass leaves a usable graph


def test_gradient_conflict_probe_matches_a_direct_computation(tmp_path_factory):
    """The probe's cosines equal cosines of concatenated per-block gradients computed from scratch, and the
    probe leaves the RNG (hence the training run) untouched."""
    from sweet.train import block_parameters, gradient_conflict

    model = _model("bert", tmp_path_factory, method="ee").eval()
    batch = _batch("bert")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    rows = gradient_conflict(model, batch, step=7)
    assert torch.equal(before, torch.random.get_rng_state())

    blocks = block_parameters(model)
    flat = []
    for k in range(model.num_exits):
        model.zero_grad()
        model(**batch).exit_losses[k].backward()
        flat.append([torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in b]) for b in blocks])
    expected = {}
    for b in range(len(blocks)):
        later = {str(j + 1): flat[j][b] for j in range(b + 1, model.num_exits)}
        if len(later) > 1:
            later["sum"] = sum(later.values())
        for other, g in later.items():
            expected[(b + 1, other)] = float(torch.nn.functional.cosine_similarity(flat[b][b], g, dim=0))
    got = {(r["block"], r["other"]): r["cosine"] for r in rows}
    assert got.keys() == expected.keys() and all(r["step"] == 7 for r in rows)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
