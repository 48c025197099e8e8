"""EarlyExitModel / MultiModel on tiny random backbones of every supported architecture, and every pooling.

Exact checks: SWEET's gradient separation (∂loss_k/∂θ is exactly zero for every parameter of earlier blocks),
EE's sharing, identical forward values, each exit equal to its head on the stock hidden states (and the last exit
equal to the stock sequence classifier), save/load round trips, MM members equal to the truncated checkpoint,
the separation audit's exact parameter sets, the poolings on hand-made hidden states with left and right
padding, user errors, and that layers after the last exit never run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import ARCHITECTURES, DEPTH, VOCAB, backbone, gpt2_folder, hf_model_type, pad_id, random_batch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from sweet import EarlyExitModel, MultiModel
from sweet.audit import separation_audit
from sweet.backbones import BACKBONES, encoder_layers, final_norm
from sweet.errors import UserError
from sweet.model import CONFIG_NAME, pool

EXITS = [1, 3, 4]
NUM_LABELS = 3
# Every architecture with its default pooling, plus the other poolings on a BERT-like encoder, ModernBERT and the
# decoder (None: the architecture's default, cls for encoders and last for decoders).
VARIANTS = [(a, None) for a in ARCHITECTURES] + [
    ("bert", "mean"), ("bert", "last"), ("modernbert", "mean"), ("modernbert", "last"), ("qwen2", "mean"),
]
VARIANT_IDS = [f"{a}-{p or 'default'}" for a, p in VARIANTS]


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


def _layer_of(name: str, model_type: str = "bert", prefix: str = "backbone.") -> int | None:
    """1-based layer of a backbone parameter name, 0 for the embeddings, None for anything else (heads, the final
    norm that only the stock model's last layer feeds)."""
    spec = BACKBONES[hf_model_type(model_type)]
    if name.startswith(f"{prefix}{spec.embeddings}."):
        return 0
    if spec.after_first_layer and name.startswith(f"{prefix}{spec.after_first_layer}."):
        return 1  # DeBERTa-v2's convolution is applied to layer 1's output: part of "after layer 1"
    layers = f"{prefix}{spec.layers}."
    if name.startswith(layers):
        return int(name[len(layers) :].split(".")[0]) + 1
    return None


def _word_embeddings(model: EarlyExitModel) -> str:
    """Name of the token-embedding matrix in ``model.named_parameters()``."""
    weight = model.backbone.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters() if p is weight)


# ----------------------------------------------------------------------------------------------------------------
# gradients
@pytest.mark.parametrize(("model_type", "pooling"), VARIANTS, ids=VARIANT_IDS)
def test_sweet_separation_is_exact(model_type, pooling, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, "sweet", pooling=pooling)
    out = model(**_batch(model_type))
    bounds = [0, *EXITS]
    layer_of = {n: _layer_of(n, model_type) for n, _ in model.named_parameters()}
    for k in range(len(EXITS)):
        grads = _grads(model, out.exit_losses[k])
        # earlier blocks: the embeddings (part of block 1) and layers 1..exit_layers[k-1]
        earlier = {n: g for n, g in grads.items() if k > 0 and layer_of[n] is not None and layer_of[n] <= bounds[k]}
        if k > 0:
            assert any(layer_of[n] == 0 for n in earlier)
            assert any(layer_of[n] == bounds[k] for n in earlier)
        reached = sorted(n for n, g in earlier.items() if not _is_zero(g))
        assert reached == [], f"exit {k + 1} reaches earlier blocks: {reached}"
        # its own block: every layer between the previous exit and this one gets gradient
        own_layers = range(bounds[k] + 1, bounds[k + 1] + 1)
        for layer in own_layers:
            total = sum(g.abs().sum() for n, g in grads.items() if layer_of[n] == layer and g is not None)
            assert total > 0, f"exit {k + 1} does not train its own layer {layer}"
        if k == 0:
            assert not _is_zero(grads[_word_embeddings(model)])
        # later blocks are not reached either (they are not on the path to exit k)
        later = [n for n, g in grads.items() if (layer_of[n] or 0) > bounds[k + 1] and not _is_zero(g)]
        assert later == []
        # nor any other exit's head (its norm copy included), nor the backbone's own final norm; outside the layers
        # only what every layer reads by construction (DeBERTa's relative embeddings, the audit's list)
        heads = [n for n, g in grads.items() if n.startswith("heads.") and not _is_zero(g)]
        assert heads and all(n.startswith(f"heads.{k}.") for n in heads)
        declared = tuple(f"backbone.{m}." for m in BACKBONES[hf_model_type(model_type)].shared_across_layers)
        others = [n for n, g in grads.items() if layer_of[n] is None and n.startswith("backbone.") and not _is_zero(g)]
        assert [n for n in others if not n.startswith(declared)] == []


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_ee_later_exits_reach_the_first_block(model_type, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, "ee")
    out = model(**_batch(model_type))
    for k in (1, 2):
        grads = _grads(model, out.exit_losses[k])
        assert not _is_zero(grads[_word_embeddings(model)])
        layer1 = sum(g.abs().sum() for n, g in grads.items() if _layer_of(n, model_type) == 1 and g is not None)
        assert layer1 > 0


@pytest.mark.parametrize(("model_type", "pooling"), VARIANTS, ids=VARIANT_IDS)
def test_ee_and_sweet_forward_values_identical(model_type, pooling, tmp_path_factory):
    ee = _model(model_type, tmp_path_factory, "ee", learned_exit=True, pooling=pooling)
    sweet = _model(model_type, tmp_path_factory, "sweet", learned_exit=True, pooling=pooling)
    sweet.load_state_dict(ee.state_dict())
    batch = _batch(model_type)
    a, b = ee(**batch), sweet(**batch)
    assert a.exit_logits.shape == (len(EXITS), 4, NUM_LABELS)
    assert torch.equal(a.exit_logits, b.exit_logits)
    assert torch.equal(a.lte_scores, b.lte_scores)
    assert torch.equal(a.exit_losses, b.exit_losses)
    # the exits are not all the same function of the input
    assert not torch.equal(a.exit_logits[0], a.exit_logits[-1])


@pytest.mark.parametrize(("model_type", "pooling"), VARIANTS, ids=VARIANT_IDS)
def test_exits_read_the_stock_hidden_states(model_type, pooling, tmp_path_factory):
    """Exit k classifies exactly what the stock backbone reports as the hidden state after layer L_k.

    Where the architecture has a final norm (ModernBERT, decoders), the stock ``hidden_states[L]`` of the last
    layer is already normalised while earlier ones are not, and every exit normalises with its own copy of that
    norm (equal to the pretrained one before training): so exit k equals its head on the raw state for L_k < L, and
    its head without the norm on the stock ``last_hidden_state`` for L_k = L.
    """
    model = _model(model_type, tmp_path_factory, "sweet", pooling=pooling)
    batch = _batch(model_type)
    mask = batch["attention_mask"]
    out = model(**batch)
    stock = model.backbone(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
    norm = final_norm(model.backbone)  # None for BERT-like encoders
    for k, layer in enumerate(EXITS):
        if layer < DEPTH or norm is None:
            expected, _ = model.exit_head(k, stock.hidden_states[layer], mask)
        else:
            head = model.heads[k]
            assert all(torch.equal(a, b) for a, b in zip(head.norm.state_dict().values(), norm.state_dict().values()))
            expected = head(pool(stock.last_hidden_state, mask, model.pooling))
        torch.testing.assert_close(out.exit_logits[k], expected, rtol=0, atol=1e-6)
    if model_type == "deberta-v2-conv":
        assert model.exit_modules[0] is model.backbone.encoder.conv
    if norm is not None:
        # each exit normalises with its own copy: not the backbone's module, not another exit's
        norms = [p for head in model.heads for p in head.norm.parameters()]
        assert len({id(p) for p in norms}) == len(norms) and not {id(p) for p in norm.parameters()} & {id(p) for p in norms}


# Dropout rates that tell the stock head's two DeBERTa dropouts apart (pooler_dropout is 0 by default), and some
# dropout in ModernBERT (none by default).
_STOCK_OPTIONS = {
    "deberta": {"pooler_dropout": 0.2},
    "deberta-v2": {"pooler_dropout": 0.2},
    "modernbert": {"classifier_dropout": 0.2, "mlp_dropout": 0.1},
}
STOCK_VARIANTS = [(a, None) for a in ARCHITECTURES] + [("modernbert", "mean")]


def _stock_classifier(model_type: str, folder, pooling: str | None):
    options = dict(_STOCK_OPTIONS.get(hf_model_type(model_type), {}))
    if model_type == "modernbert":
        options["classifier_pooling"] = pooling or "cls"
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=NUM_LABELS, **options)


def _copy_stock_head(head, stock, model_type: str) -> None:
    """The stock classifier's head weights into an exit head (module names differ, shapes do not)."""
    kind = BACKBONES[hf_model_type(model_type)].head
    if kind == "tanh-pooler":
        pairs = [(head.pooler, stock.base_model.pooler.dense), (head.classifier, stock.classifier)]
    elif kind == "context-pooler":
        pairs = [(head.pooler, stock.pooler), (head.classifier, stock.classifier)]
    elif kind == "classification-head":
        pairs = [(head.pooler.dense, stock.classifier.dense), (head.classifier, stock.classifier.out_proj)]
    elif kind == "prediction-head":
        pairs = [(head.norm, stock.model.final_norm), (head.pooler, stock.head), (head.classifier, stock.classifier)]
    else:
        pairs = [(head.norm, stock.model.norm), (head.classifier, stock.score)]
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize(("model_type", "pooling"), STOCK_VARIANTS, ids=[f"{a}-{p or 'default'}" for a, p in STOCK_VARIANTS])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_last_exit_is_the_stock_classifier(model_type, pooling, mode, tmp_path_factory):
    """With the stock classifier's backbone and head weights, the exit after the last layer computes the stock
    classifier: the exit heads have the stock shape (pooler, activation, norm, dropout, classifier), so EE/SWEET
    exits and MM's stock members are the same kind of classifier. In train mode, with the same seed, the dropout
    masks fall on the same tensors in the same order, so the outputs agree too: dropout sits where the stock
    head has it, at the stock rates (one exit only: earlier exits' dropout would draw from the RNG first)."""
    folder = backbone(model_type, tmp_path_factory)
    torch.manual_seed(4)
    stock = _stock_classifier(model_type, folder, pooling)
    exits = EXITS if mode == "eval" else [DEPTH]
    config = EarlyExitModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=exits, pooling=pooling).config
    model = EarlyExitModel(config, stock.base_model)
    _copy_stock_head(model.heads[-1], stock, model_type)
    batch = _batch(model_type, n=5, seed=9)
    stock.train(mode == "train")
    model.train(mode == "train")
    torch.manual_seed(5)
    expected = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.manual_seed(5)
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).exit_logits[-1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if mode == "train" and BACKBONES[hf_model_type(model_type)].head != "score":
        torch.manual_seed(6)  # and dropout is really on: another seed gives other logits
        other = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).exit_logits[-1]
        assert not torch.allclose(other, expected, atol=1e-4)


@pytest.mark.parametrize("model_type", ["deberta", "deberta-v2"])
def test_deberta_exit_head_is_the_context_pooler(model_type, tmp_path_factory):
    """DeBERTa's exits: dropout (pooler_dropout) → dense → ACT2FN[pooler_hidden_act] → dropout (cls_dropout, else
    hidden_dropout_prob) → linear, like the stock ContextPooler + classifier; ``shared_pooler`` shares one
    ContextPooler (the reference's) and each exit keeps its own classifier and dropout."""
    from transformers.activations import ACT2FN

    from sweet.model import ContextPooler

    folder = backbone(model_type, tmp_path_factory)
    config = AutoConfig.from_pretrained(folder)
    for options, act, rates in [({}, "gelu", (0.0, config.hidden_dropout_prob)),
                                ({"pooler_hidden_act": "tanh", "pooler_dropout": 0.3, "cls_dropout": 0.2}, "tanh", (0.3, 0.2))]:
        base_config = AutoConfig.from_pretrained(folder)
        for key, value in options.items():
            setattr(base_config, key, value)
        base = AutoModel.from_pretrained(folder, config=base_config)
        model = EarlyExitModel(EarlyExitModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=EXITS).config, base)
        assert model.config.head == "context-pooler"
        for head in model.heads:
            assert isinstance(head.pooler, ContextPooler)
            assert [name for name, _ in head.pooler.named_children()] == ["dense", "dropout", "activation"]
            assert type(head.pooler.activation) is type(ACT2FN[act])
            assert (head.pooler.dropout.p, head.dropout.p) == rates
            assert head.pooler.dense.weight.shape == (config.hidden_size, config.hidden_size)
            # the order: dropout on the pooled vector, then dense, activation; the exit's dropout, then classifier
            pooled = torch.randn(3, config.hidden_size)
            expected = head.classifier(ACT2FN[act](head.pooler.dense(pooled)))
            torch.testing.assert_close(head.eval()(pooled), expected, rtol=0, atol=0)
        # fresh, at the stock init std (the tiny checkpoint has no pooler)
        weight = model.heads[0].pooler.dense.weight
        assert abs(float(weight.detach().std()) - config.initializer_range) < 0.05 and not bool(model.heads[0].pooler.dense.bias.any())
    shared = _model(model_type, tmp_path_factory, "sweet", shared_pooler=True)
    assert isinstance(shared.shared_pooler, ContextPooler) and all(h.pooler is None for h in shared.heads)
    assert len({id(h.classifier) for h in shared.heads}) == len(EXITS)


def test_modernbert_exits_start_from_the_pretrained_head(tmp_path_factory):
    """ModernBERT ships as a masked-LM checkpoint whose prediction head its stock classifier reuses; every exit's
    head (and a shared one) starts from it too, while the classifier layers are new."""
    folder = backbone("modernbert", tmp_path_factory)
    pretrained = {k[len("head."):]: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith("head.")}
    assert pretrained  # the checkpoint really has one
    for options in ({}, {"shared_pooler": True}):
        model = _model("modernbert", tmp_path_factory, **options)
        poolers = [model.shared_pooler] if options else [h.pooler for h in model.heads]
        for pooler in poolers:
            assert pooler.state_dict().keys() == pretrained.keys()
            assert all(torch.equal(pooler.state_dict()[k], v) for k, v in pretrained.items())
    member = MultiModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=[2]).members[0].classifier
    assert all(torch.equal(member.head.state_dict()[k], v) for k, v in pretrained.items())


def test_modernbert_fresh_head_layers_are_drawn_as_the_stock_classifier_draws_them():
    """ModernBERT's stock classifier draws what it adds from normals truncated at ± initializer_cutoff_factor σ: the prediction head's dense
    at initializer_range / √(2 · layers), the classifier at hidden_size^-½. The exits' fresh layers are drawn
    alike (BERT's N(0, initializer_range) would make this dense 2.8× and this classifier 1.6× too wide)."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    from sweet.model import EarlyExitConfig

    config = ModernBertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=DEPTH,
                              num_attention_heads=4, initializer_range=0.2, num_labels=NUM_LABELS,
                              pad_token_id=0, bos_token_id=3, cls_token_id=3, eos_token_id=2, sep_token_id=2)
    dense_std, classifier_std = 0.2 / (2 * DEPTH) ** 0.5, 64**-0.5
    torch.manual_seed(0)
    model = EarlyExitModel(EarlyExitConfig(EXITS, NUM_LABELS), ModernBertModel(config))  # no pretrained head
    stock = ModernBertForSequenceClassification(config)
    cut = config.initializer_cutoff_factor  # 2 by default
    mass = math.erf(cut / 2**0.5)  # the std of a unit normal cut at ±cut:
    truncated = (1 - 2 * cut * math.exp(-cut**2 / 2) / (2 * math.pi) ** 0.5 / mass) ** 0.5

    def drawn_as(weights: torch.Tensor, std: float, tolerance: float) -> bool:
        weights = weights.detach().flatten()
        return bool(weights.abs().max() <= cut * std) and abs(float(weights.std()) / (truncated * std) - 1) < tolerance

    # the analytic values are the stock classifier's (128 classifier weights: a wider tolerance)
    assert drawn_as(stock.head.dense.weight, dense_std, 0.05) and drawn_as(stock.classifier.weight, classifier_std, 0.2)
    assert drawn_as(torch.cat([h.pooler.dense.weight.flatten() for h in model.heads]), dense_std, 0.05)
    assert drawn_as(torch.cat([h.classifier.weight.flatten() for h in model.heads]), classifier_std, 0.1)
    assert all(not bool(h.classifier.bias.any()) for h in model.heads)


def test_exit_losses_are_each_exits_cross_entropy(tmp_path_factory):
    model = _model("bert", tmp_path_factory, "ee")
    batch = _batch("bert")
    out = model(**batch)
    expected = [torch.nn.functional.cross_entropy(out.exit_logits[k], batch["labels"]) for k in range(len(EXITS))]
    torch.testing.assert_close(out.exit_losses, torch.stack(expected))
    assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).exit_losses is None


# ----------------------------------------------------------------------------------------------------------------
# save / load
def _perturb(model: EarlyExitModel) -> None:
    """Stand-in for fine-tuning: the saved backbone (and each exit's norm copy) must be the modified one, not the
    original checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
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
        ("bert", "sweet", {"pooling": "mean"}),
        ("modernbert", "sweet", {"pooling": "mean", "learned_exit": True}),
        ("modernbert", "ee", {"shared_pooler": True}),
        ("qwen2", "sweet", {"learned_exit": True}),
        ("qwen2", "ee", {"pooling": "mean"}),
    ],
)
def test_save_load_restores_identical_logits(model_type, method, options, tmp_path_factory, tmp_path):
    model = _model(model_type, tmp_path_factory, method, **options)
    _perturb(model)
    batch = _batch(model_type, seed=3)
    before = model(**batch)
    model.save_pretrained(tmp_path / "saved")
    restored = EarlyExitModel.from_pretrained(tmp_path / "saved").eval()
    after = restored(**batch)
    assert restored.config == model.config
    assert restored.exit_layers == EXITS
    saved = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert saved["pooling"] == options.get("pooling", "last" if model_type == "qwen2" else "cls")  # always explicit
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


def test_folder_saved_before_pooling_loads_as_cls(tmp_path_factory, tmp_path):
    model = _model("bert", tmp_path_factory, "sweet", learned_exit=True)
    batch = _batch("bert", seed=2)
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / CONFIG_NAME).read_text())
    del config["pooling"]
    (tmp_path / "old" / CONFIG_NAME).write_text(json.dumps(config))
    restored = EarlyExitModel.from_pretrained(tmp_path / "old").eval()
    assert restored.pooling == "cls"
    assert torch.equal(restored(**batch).exit_logits, model(**batch).exit_logits)


@pytest.mark.parametrize(("model_type", "options"), [("roberta", {"shared_pooler": True}), ("deberta", {}), ("electra", {})])
def test_folder_saved_before_stock_heads_loads_with_its_tanh_pooler(model_type, options, tmp_path_factory, tmp_path):
    """Folders saved before exits took the stock head have no "head" key: BERT's tanh pooler then sat on every
    BERT-like encoder (RoBERTa's shared one being its AutoModel's pooler), and they load bit for bit as saved."""
    old = _model(model_type, tmp_path_factory, "sweet", head="tanh-pooler", **options)
    _perturb(old)
    old.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / CONFIG_NAME).read_text())
    assert config.pop("head") == "tanh-pooler"
    (tmp_path / "old" / CONFIG_NAME).write_text(json.dumps(config))
    restored = EarlyExitModel.from_pretrained(tmp_path / "old").eval()
    assert restored.config.head == "tanh-pooler"
    batch = _batch(model_type, seed=2)
    assert torch.equal(restored(**batch).exit_logits, old(**batch).exit_logits)
    # new folders name their head, the stock one
    assert _model(model_type, tmp_path_factory).config.head == BACKBONES[model_type].head != "tanh-pooler"
    with pytest.raises(UserError, match=f"head: 'score' is not an exit head {model_type} builds"):
        _model(model_type, tmp_path_factory, head="score")


def test_default_pooling_follows_the_architecture_and_decoders_refuse_cls(tmp_path_factory):
    assert _model("bert", tmp_path_factory).pooling == "cls"  # the paper's
    assert _model("modernbert", tmp_path_factory).pooling == "cls"
    assert _model("qwen2", tmp_path_factory).pooling == "last"
    folder = backbone("qwen2", tmp_path_factory)
    with pytest.raises(UserError, match="pooling: 'cls' .*causal decoder 'qwen2'.*use last"):
        EarlyExitModel.from_pretrained(folder, num_labels=2, exit_layers=[1], pooling="cls")
    with pytest.raises(UserError, match="pooling: 'cls'"):
        MultiModel.from_pretrained(folder, num_labels=2, exit_layers=[1], pooling="cls")
    with pytest.raises(UserError, match="pooling: 'max' is not a pooling"):
        EarlyExitModel.from_pretrained(backbone("bert", tmp_path_factory), num_labels=2, exit_layers=[1], pooling="max")
    with pytest.raises(UserError, match="shared_pooler: qwen2"):
        EarlyExitModel.from_pretrained(folder, num_labels=2, exit_layers=[1], shared_pooler=True)


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
# pooling, on hand-made hidden states
# hidden[b, t] = (10·b + t, -(10·b + t)); three rows of lengths 5, 3 and 1 in a sequence of 5.
_HIDDEN = torch.tensor([[[10.0 * b + t, -(10.0 * b + t)] for t in range(5)] for b in range(3)])
_RIGHT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
_LEFT = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (_RIGHT, {"cls": [0, 10, 20], "last": [4, 12, 20], "mean": [2, 11, 20]}),
        # "cls" is position 0 as in the stock classifiers, whatever the padding
        (_LEFT, {"cls": [0, 10, 20], "last": [4, 14, 24], "mean": [2, 13, 24]}),
        (None, {"cls": [0, 10, 20], "last": [4, 14, 24], "mean": [2, 12, 22]}),
    ],
    ids=["right-padded", "left-padded", "no-mask"],
)
def test_pooling_reads_only_real_tokens(mask, expected):
    for pooling, values in expected.items():
        want = torch.tensor([[v, -v] for v in values], dtype=torch.float32)
        assert torch.equal(pool(_HIDDEN, mask, pooling), want), pooling
    # padding positions may hold anything: the result does not move
    if mask is not None:
        noisy = torch.where(mask.bool().unsqueeze(-1), _HIDDEN, torch.full_like(_HIDDEN, 1e6))
        for pooling in expected if mask is _RIGHT else ("last", "mean"):
            assert torch.equal(pool(noisy, mask, pooling), pool(_HIDDEN, mask, pooling)), pooling


def test_exit_norm_is_applied_before_a_mean_and_to_the_picked_token_otherwise(tmp_path_factory):
    """A per-token norm commutes with picking one token, not with a mean: the exit normalises every token before
    averaging (as ModernBERT's stock mean pooling does) and only the picked token otherwise."""
    mask = _RIGHT
    hidden = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    for pooling in ("cls", "last", "mean"):
        head = _model("modernbert", tmp_path_factory, pooling=pooling).heads[0]
        with torch.no_grad():
            head.norm.weight.mul_(torch.linspace(0.5, 2.0, 32))
        expected = pool(head.norm(hidden), mask, pooling)
        torch.testing.assert_close(head.pool(hidden, mask), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(head.norm(pool(hidden, mask, "mean")), expected, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# MultiModel
def _assert_truncated_copy(base: torch.nn.Module, reference: dict, model_type: str, depth: int) -> None:
    """``base`` holds exactly the checkpoint's embeddings and first ``depth`` layers (and no deeper layer)."""
    assert len(encoder_layers(base)) == depth
    state = base.state_dict()
    compared = 0
    for name, value in reference.items():
        layer = _layer_of(name, model_type, prefix="")
        if name.startswith("pooler."):
            continue  # the classifier's pooler is part of its head
        if layer is not None and layer > depth:
            assert name not in state
            continue
        assert torch.equal(state[name], value), name
        compared += 1
    assert compared > 0


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
        assert member.pooling == ("last" if model_type == "qwen2" else "cls")
        _assert_truncated_copy(clf.base_model, reference, model_type, depth)


@pytest.mark.parametrize(("model_type", "pooling"), [("bert", "mean"), ("modernbert", "last"), ("qwen2", "mean")])
def test_multimodel_members_pool_like_ee_where_the_stock_class_cannot(model_type, pooling, tmp_path_factory):
    """A pooling the stock classifier lacks: the member is the truncated stock encoder plus one exit head of EE's
    shape, i.e. a one-exit EarlyExitModel whose exit is its last layer."""
    folder = backbone(model_type, tmp_path_factory)
    mm = MultiModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=[2, 4], pooling=pooling).eval()
    reference = AutoModel.from_pretrained(folder).state_dict()
    batch = _batch(model_type)
    for member, depth in zip(mm.members, [2, 4]):
        exits = member.classifier
        assert isinstance(exits, EarlyExitModel) and member.pooling == exits.pooling == pooling
        assert exits.exit_layers == [depth] and exits.backbone.config.num_hidden_layers == depth
        assert type(exits.backbone) is type(AutoModel.from_config(AutoConfig.from_pretrained(folder)))
        _assert_truncated_copy(exits.backbone, reference, model_type, depth)
        # the member's logits are its exit head on the truncated stock encoder's output (which is normalised where
        # the architecture has a final norm: the head's own copy of it is still the pretrained one here)
        head = exits.heads[0]
        hidden = exits.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        expected = head(pool(hidden, batch["attention_mask"], pooling) if head.norm else head.pool(hidden, batch["attention_mask"]))
        torch.testing.assert_close(member(**batch).exit_logits[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("model_type", "pooling"), [("bert", None), ("deberta-v2", None), ("modernbert", "mean"), ("qwen2", None), ("bert", "mean")])
def test_multimodel_save_load_exact(model_type, pooling, tmp_path_factory, tmp_path):
    folder = backbone(model_type, tmp_path_factory)
    torch.manual_seed(0)
    mm = MultiModel.from_pretrained(folder, num_labels=NUM_LABELS, exit_layers=[2, 4], learned_exit=True, pooling=pooling)
    mm.eval()
    batch = _batch(model_type, seed=5)
    before = mm(**batch)
    assert before.exit_logits.shape == (2, 4, NUM_LABELS)
    assert before.exit_losses is not None and before.exit_losses.shape == (2,)
    mm.save_pretrained(tmp_path / "mm")
    assert (tmp_path / "mm" / "member_1" / "config.json").is_file() != (pooling == "mean" and model_type == "bert")
    restored = MultiModel.from_pretrained(tmp_path / "mm").eval()
    after = restored(**batch)
    assert restored.exit_layers == [2, 4]
    assert [m.pooling for m in restored.members] == [m.pooling for m in mm.members]
    assert torch.equal(before.exit_logits, after.exit_logits)
    assert torch.equal(before.lte_scores, after.lte_scores)
    member_2 = tmp_path / "mm" / "member_2"
    if (member_2 / CONFIG_NAME).is_file():
        # a pooled member: a stock encoder folder of the truncated depth plus the exit head
        assert AutoModel.from_pretrained(member_2 / "backbone").config.num_hidden_layers == 4
        return
    # each stock member folder is a stock HF classifier on its own
    stock = AutoModelForSequenceClassification.from_pretrained(member_2).eval()
    assert torch.equal(stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, after.exit_logits[1])


def test_decoder_member_needs_a_pad_token_id(tmp_path):
    """The stock decoder classifier finds the last token through ``pad_token_id``: a config without one takes the
    tokenizer's, and none at all is a user error."""
    from tiny import build_backbone

    folder = build_backbone("qwen2", tmp_path / "qwen2")
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="pad_token_id"):
        MultiModel.from_pretrained(folder, num_labels=2, exit_layers=[2])
    mm = MultiModel.from_pretrained(folder, num_labels=2, exit_layers=[2], pad_token_id=0)
    assert mm.members[0].classifier.config.pad_token_id == 0


# ----------------------------------------------------------------------------------------------------------------
# separation audit
def _audit(model_type, tmp_path_factory, method, **options) -> dict:
    return separation_audit(_model(model_type, tmp_path_factory, method, **options), VOCAB)


@pytest.mark.parametrize(
    ("model_type", "pooling"),
    [("bert", None), ("roberta", None), ("electra", None), ("bert", "mean"), ("modernbert", None),
     ("modernbert", "mean"), ("qwen2", None), ("qwen2", "mean")],
)
def test_audit_sweet_per_exit_heads_shares_nothing(model_type, pooling, tmp_path_factory):
    """Nothing is shared by construction in these architectures: ModernBERT's and Qwen2's final norm is copied
    into every exit (so it is no shared parameter), their rotary tables are buffers."""
    report = _audit(model_type, tmp_path_factory, "sweet", pooling=pooling)
    assert report["shared"] == {}
    assert report["n_parameters_shared"] == 0
    assert report["method"] == "sweet" and report["exit_layers"] == EXITS
    assert report["pooling"] == pooling or (pooling is None and report["pooling"] in ("cls", "last"))


def test_audit_sweet_shared_pooler_is_exactly_the_pooler(tmp_path_factory):
    report = _audit("bert", tmp_path_factory, "sweet", shared_pooler=True)
    assert report["shared"] == {"backbone.pooler.dense.weight": [1, 2, 3], "backbone.pooler.dense.bias": [1, 2, 3]}
    assert report["shared_pooler"] is True
    # ELECTRA's stock head (dropout → dense → GELU) is new in its classifier: one new one, shared
    report = _audit("electra", tmp_path_factory, "sweet", shared_pooler=True)
    assert report["shared"] == {"shared_pooler.dense.weight": [1, 2, 3], "shared_pooler.dense.bias": [1, 2, 3]}
    # DeBERTa's: one ContextPooler, the reference's, besides what every layer reads
    report = _audit("deberta", tmp_path_factory, "sweet", shared_pooler=True)
    assert set(report["shared"]) == {"shared_pooler.dense.weight", "shared_pooler.dense.bias", "backbone.encoder.rel_embeddings.weight"}
    # ModernBERT's pooler is its prediction head (no biases in this config), shared, outside the backbone
    report = _audit("modernbert", tmp_path_factory, "sweet", shared_pooler=True)
    assert report["shared"] == {"shared_pooler.dense.weight": [1, 2, 3], "shared_pooler.norm.weight": [1, 2, 3]}


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
def test_sweet_training_accepts_every_registered_architecture(model_type, tmp_path_factory):
    """The registry as shipped: every SWEET model's audit finds only what is declared shared (with the shared
    pooler too, where the architecture has one)."""
    from sweet.audit import require_separation

    options = [{}] if model_type == "qwen2" else [{}, {"shared_pooler": True}]
    for option in options:
        model = _model(model_type, tmp_path_factory, "sweet", **option)
        require_separation(model, separation_audit(model, VOCAB))


def test_sweet_training_refuses_a_registry_entry_that_leaks_gradient(monkeypatch, tmp_path_factory):
    """A registry entry that forgets DeBERTa-v2's layer-1 convolution cuts SWEET's graph at layer 1's output, but
    the convolution also reads the embeddings (un-detached): exit 2 then trains block 1. One that forgets the
    relative-position table every layer reads leaks it. Both are refused for SWEET, named, not for EE."""
    import dataclasses

    from sweet.audit import require_separation

    spec = BACKBONES["deberta-v2"]
    monkeypatch.setitem(BACKBONES, "deberta-v2", dataclasses.replace(spec, after_first_layer=None))
    model = _model("deberta-v2-conv", tmp_path_factory, "sweet")
    report = separation_audit(model, VOCAB)
    leaked = sorted(n for n in report["shared"] if not n.startswith(("backbone.encoder.rel_embeddings", "backbone.encoder.LayerNorm")))
    assert leaked and all(report["shared"][n][0] == 1 for n in leaked)
    with pytest.raises(UserError, match=r"^sweet: parameter 'backbone\.(embeddings|encoder\.conv)\..*' receives gradient from exits 1, 2.*BACKBONES\['deberta-v2'\]") as refused:
        require_separation(model, report)
    assert "\n" not in str(refused.value)
    ee = _model("deberta-v2-conv", tmp_path_factory, "ee")
    require_separation(ee, separation_audit(ee, VOCAB))  # EE shares by design

    monkeypatch.setitem(BACKBONES, "deberta", dataclasses.replace(BACKBONES["deberta"], shared_across_layers=()))
    model = _model("deberta", tmp_path_factory, "sweet")
    with pytest.raises(UserError, match=r"'backbone\.encoder\.rel_embeddings\.weight' receives gradient from exits 1, 2, 3, "):
        require_separation(model, separation_audit(model, VOCAB))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_audit_ee_shares_the_backbone(model_type, tmp_path_factory):
    model = _model(model_type, tmp_path_factory, "ee")
    report = separation_audit(model, VOCAB)
    shared = report["shared"]
    layer_of = {n: _layer_of(n, model_type) for n in shared}
    assert report["n_parameters_shared"] == len(shared) > 15
    assert shared[_word_embeddings(model)] == [1, 2, 3]
    assert any(layer == 1 for layer in layer_of.values())
    assert any(layer_of[n] == 3 and exits == [2, 3] for n, exits in shared.items())
    assert not any(layer == 4 for layer in layer_of.values())  # only the last exit reads layer 4
    assert not any(n.startswith("heads.") for n in shared)
    # every parameter of layers 1..3 and of the embeddings is shared
    layers = {n: _layer_of(n, model_type) for n, _ in model.named_parameters()}
    expected = {n for n, layer in layers.items() if layer is not None and layer <= 3}
    assert expected <= set(shared), sorted(expected - set(shared))


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
@pytest.mark.parametrize("model_type", ["bert", "deberta-v2", "modernbert", "qwen2"])
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
    assert out.exit_losses is not None
    out.exit_losses.sum().backward()  # the abandoned forward pass leaves a usable graph


@pytest.mark.parametrize(("model_type", "pooling"), [("bert", None), ("qwen2", "mean")])
def test_gradient_conflict_probe_matches_a_direct_computation(model_type, pooling, tmp_path_factory):
    """The probe's cosines equal cosines of concatenated per-block gradients computed from scratch."""
    from sweet.conflict_probe import block_parameters, gradient_conflict

    model = _model(model_type, tmp_path_factory, method="ee", pooling=pooling).eval()
    batch = _batch(model_type)
    blocks = block_parameters(model)
    # the blocks hold exactly the embeddings and layers 1..L_last, each parameter once
    in_blocks = {id(p) for block in blocks for p in block}
    names = {n for n, p in model.named_parameters() if id(p) in in_blocks}
    layers = {n: _layer_of(n, model_type) for n, _ in model.named_parameters()}
    assert names == {n for n, layer in layers.items() if layer is not None and layer <= EXITS[-1]}
    assert sum(len(b) for b in blocks) == len(in_blocks)
    rows = gradient_conflict(model, batch, step=7)

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


def test_gradient_conflict_probe_leaves_a_training_run_unchanged(tmp_path_factory):
    """In train mode with dropout on, the probe's own forward pass draws dropout masks; it restores the RNG, so a
    few optimizer steps with the probe before each give the same losses and parameters as without it."""
    from sweet.conflict_probe import gradient_conflict

    def run(probe: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        model = _model("bert", tmp_path_factory, "ee").train()
        assert model.backbone.config.hidden_dropout_prob > 0 and model.heads[0].dropout.p > 0
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(11)
        losses = []
        for step in range(3):
            batch = _batch("bert", seed=step)
            if probe:
                assert gradient_conflict(model, batch, step)
            optimizer.zero_grad()
            loss = model(**batch).exit_losses.sum()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return losses, {n: p.detach().clone() for n, p in model.named_parameters()}

    losses, params = run(probe=False)
    probed_losses, probed_params = run(probe=True)
    assert all(torch.equal(a, b) for a, b in zip(losses, probed_losses))
    assert all(torch.equal(params[n], probed_params[n]) for n in params)
    # dropout really draws from the RNG here: another seed moves the losses
    model = _model("bert", tmp_path_factory, "ee").train()
    torch.manual_seed(12)
    assert not torch.equal(model(**_batch("bert", seed=0)).exit_losses.sum(), losses[0])


def test_config_name_is_the_runs_sweet_config():
    """A saved model's config file is the one the workflow expects in a run's model folder (sweet.plan.layout)."""
    from sweet.plan import layout

    assert f"{layout.MODEL}/{CONFIG_NAME}" == layout.SWEET_CONFIG
