"""FLOPs accounting that follows the architecture: hand-computed decoder and ModernBERT cases, the attended-pair
counts against the masks transformers really builds, the exit heads' pooling cost, and the shape stored with a
run's logits (BERT's for runs stored before it was)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import backbone, random_batch
from transformers import AutoConfig, AutoModel

from sweet import EarlyExitModel, MultiModel
from sweet.cost import (
    NORM_FLOPS,
    EncoderShape,
    attended_pairs,
    cumulative_layer_flops,
    encoder_shape,
    flops_fraction,
    head_flops,
    layer_flops,
)
from sweet.evaluate import flops_shape


def _pairs_by_definition(n: int, causal: bool, reach: int | None) -> int:
    reach = n if reach is None else reach
    return sum(1 for i in range(n) for j in range(n) if abs(i - j) <= reach and (not causal or j <= i))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("reach", [None, 0, 1, 2, 5, 40])
def test_attended_pairs_closed_form(causal, reach):
    lengths = np.arange(1, 30)
    expected = [_pairs_by_definition(int(n), causal, reach) for n in lengths]
    np.testing.assert_array_equal(attended_pairs(lengths, causal, reach), expected)


@pytest.mark.parametrize("model_type", ["modernbert", "qwen2"])
def test_attended_pairs_equal_the_masks_transformers_builds(model_type, tmp_path_factory):
    """Per layer, the pairs counted are exactly the (query, key) pairs the stock mask of that layer allows."""
    folder = backbone(model_type, tmp_path_factory)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()  # eager: masks always built
    shape = encoder_shape(model.config, "cls", 2)
    n = 11
    masks: list[torch.Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda m, a, kw: masks.append(kw["attention_mask"]), with_kwargs=True)
        for layer in model.layers
    ]
    padded = torch.ones(2, n, dtype=torch.long)
    padded[1, 7:] = 0  # a padded second row, so that every layer's mask is materialised; row 0 is counted
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, n)), attention_mask=padded, use_cache=False)
    for handle in handles:
        handle.remove()
    windows = list(shape.layer_windows) or [None] * len(masks)
    for mask, window in zip(masks, windows, strict=True):
        row = mask[0]
        allowed = int(row.sum()) if row.dtype == torch.bool else int((row == 0).sum())
        assert allowed == attended_pairs(np.array([n]), shape.causal, window)[0]
    if model_type == "modernbert":
        assert shape.layer_windows == (None, 2, None, 2)  # global, ±2 tokens, global, ±2 tokens


def test_encoder_shapes_read_from_the_configs(tmp_path_factory):
    bert = encoder_shape(AutoConfig.from_pretrained(backbone("bert", tmp_path_factory)), "cls", 2)
    assert bert == EncoderShape(32, 64, 2, attention_size=32, kv_size=32)  # BERT's defaults otherwise
    modern = encoder_shape(AutoConfig.from_pretrained(backbone("modernbert", tmp_path_factory)), "mean", 3)
    assert (modern.gated_mlp, modern.causal, modern.head, modern.head_norm, modern.embedding_flops) == (
        True, False, "prediction-head", True, 5)
    qwen = encoder_shape(AutoConfig.from_pretrained(backbone("qwen2", tmp_path_factory)), "last", 3)
    assert (qwen.attention_size, qwen.kv_size) == (32, 16)  # 4 query heads, 2 key/value heads of size 8
    assert (qwen.gated_mlp, qwen.causal, qwen.head, qwen.head_norm, qwen.embedding_flops) == (True, True, "score", True, 0)


def test_decoder_flops_hand_case():
    """GQA, a gated MLP, causal attention, a norm and a bias-free score on the last token, counted by hand."""
    d, f, a, kv, c = 8, 16, 8, 4, 3
    shape = EncoderShape(d, f, c, attention_size=a, kv_size=kv, gated_mlp=True, causal=True, embedding_flops=0,
                         head="score", head_norm=True, pooling="last")
    n = np.array([3, 6])

    def layer(n):  # q, k, v, o projections; three d×f matrices; 4·a per causal pair
        return 2 * n * d * a + 2 * 2 * n * d * kv + 2 * n * a * d + 3 * 2 * n * d * f + 4 * a * n * (n + 1) / 2

    np.testing.assert_array_equal(layer_flops(n, shape), layer(n))
    assert layer(3) == 384 + 384 + 384 + 2304 + 192
    head = NORM_FLOPS * d + 2 * d * c  # one normalised vector (the last token), no pooler
    np.testing.assert_array_equal(head_flops(n, shape), [head, head])
    exit_index, exit_layers = np.array([0, 1]), np.array([1, 3])
    full = (3 * layer(3) + head) + (3 * layer(6) + head)
    ee = (layer(3) + head) + (3 * layer(6) + 2 * head)
    assert flops_fraction(exit_index, n, exit_layers, "ee", shape) == pytest.approx(ee / full, rel=1e-12)
    mm = (layer(3) + head) + (layer(6) + head + 3 * layer(6) + head)
    assert flops_fraction(exit_index, n, exit_layers, "mm", shape) == pytest.approx(mm / full, rel=1e-12)


def test_sliding_window_layers_and_mean_pooling_hand_case():
    """Layers differ in cost (global, then ±1 token); a mean-pooling exit with its own norm reads every token."""
    d, f, c = 4, 8, 2
    shape = EncoderShape(d, f, c, layer_windows=(None, 1), embedding_flops=5, head="prediction-head",
                         head_norm=True, pooling="mean")
    n = np.array([5])
    projections_and_mlp = 2 * 5 * (4 * d * d + 2 * d * f)
    global_layer = projections_and_mlp + 4 * d * 25
    window_layer = projections_and_mlp + 4 * d * (5 + 2 * 4)  # each token, and 4 neighbour pairs on each side
    np.testing.assert_array_equal(cumulative_layer_flops(n, shape, 3)[:, 0],
                                  [0, global_layer, global_layer + window_layer, 2 * global_layer + window_layer])
    head = 5 * d + NORM_FLOPS * 5 * d + 2 * d * d + 2 * d * c  # mean over 5 tokens, each normalised first
    assert head_flops(n, shape)[0] == head
    embed = 5 * 5 * d
    full = embed + 2 * global_layer + window_layer + head
    at_exit_1 = embed + global_layer + head
    assert flops_fraction(np.array([0]), n, np.array([1, 3]), "sweet", shape) == pytest.approx(at_exit_1 / full)


def test_flops_shape_is_stored_with_the_logits_and_old_runs_read_as_bert(tmp_path_factory):
    torch.manual_seed(0)
    model = EarlyExitModel.from_pretrained(backbone("qwen2", tmp_path_factory), num_labels=3, exit_layers=[2, 4],
                                           pooling="mean")
    shape = flops_shape(model, 3)
    assert shape.pooling == "mean" and shape.causal and shape.kv_size == 16
    stored = {"flops_shape": np.array(shape.to_json())}
    assert EncoderShape.from_logits(stored) == shape
    assert json.loads(shape.to_json())["layer_windows"] == []
    legacy = {"hidden_size": np.array(8), "intermediate_size": np.array(16), "num_labels": np.array(2)}
    assert EncoderShape.from_logits(legacy) == EncoderShape(8, 16, 2)
    mm = MultiModel.from_pretrained(backbone("modernbert", tmp_path_factory), num_labels=2, exit_layers=[1, 4],
                                    pooling="mean")
    assert flops_shape(mm, 2) == encoder_shape(mm.members[-1].encoder_config, "mean", 2)
    assert flops_shape(mm, 2).layer_windows == (None, 2, None, 2)
    # the stored architecture makes a difference: the same exits cost another fraction than a BERT of that size
    lengths = random_batch(6, 12, seed=1)["attention_mask"].sum(dim=1).numpy()
    exits = np.array([0, 1, 0, 1, 1, 0])
    assert flops_fraction(exits, lengths, np.array([2, 4]), "ee", shape) != pytest.approx(
        flops_fraction(exits, lengths, np.array([2, 4]), "ee", EncoderShape(32, 64, 3)))
