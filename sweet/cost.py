"""What early exit saves: layer fraction, speedup and an analytic FLOPs fraction.

``layer_fraction = Σ_examples cost(exit) / (N · L)`` with ``cost`` the layers computed to reach an exit (for MM
the layers of every member run so far) and ``L`` the depth of the full model (the last exit's layer).
``speedup = 1 / layer_fraction``.

The FLOPs count follows the architecture (``EncoderShape``, read from the backbone's config), from each example's
real token count n, at 2 FLOPs per multiply-add. Per layer: the Q/K/V/output projections, 2·n·d·(2·a + 2·kv)
with a the attention width (heads × head size) and kv the key/value width (smaller under grouped-query
attention); the feed-forward, 2·n·d·f times 2 (two matrices) or 3 (a gated GLU); attention scores and mixing,
4·a per attended (query, key) pair: n² pairs for global bidirectional attention, n(n+1)/2 for causal, fewer in
a sliding window. For BERT this is the familiar 2·n·(4d² + 2df) + 4·n²·d. Norms, activations and residual adds
inside layers are left out (under 1 % of a layer). Embeddings cost ``embedding_flops``·n·d (BERT: three lookups
added and a LayerNorm, 7). Each exit head run costs its matrices (the d×d pooler or prediction head, the d×C
classifier) plus its pooling and norm: a mean reads n·d values (and normalises all n tokens first, 5 FLOPs per
value, where the exit has its own final norm), a single token needs no arithmetic (and one normalised vector).
MM pays embeddings and a head again for every member it runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sweet import methods

NORM_FLOPS = 5  # per normalised value: mean, variance, subtract, divide, scale (and shift)


def layer_costs(exit_layers: list[int] | np.ndarray, method: str) -> np.ndarray:
    """Layers computed when an example leaves at each exit."""
    layers = np.asarray(exit_layers, dtype=np.int64)
    return np.cumsum(layers) if methods.get(method).per_exit else layers


def layer_fraction(exit_index: np.ndarray, costs: np.ndarray, full_depth: int) -> float:
    return float(np.asarray(costs)[exit_index].sum() / (len(exit_index) * full_depth))


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOPs count needs to know about a backbone and its exits; the defaults are BERT's."""

    hidden_size: int
    intermediate_size: int
    num_labels: int
    attention_size: int | None = None  # heads × head size; None: hidden_size
    kv_size: int | None = None  # width of the key and value projections; None: attention_size
    gated_mlp: bool = False  # GLU feed-forward: three d×f matrices instead of two
    causal: bool = False  # token i attends to tokens ≤ i
    # Per layer, how far a sliding window reaches (|i-j| ≤ r; causal: 0 ≤ i-j ≤ r); None: global. Empty: all global.
    layer_windows: tuple[int | None, ...] = ()
    embedding_flops: int = 7
    head: str = "tanh-pooler"  # sweet.backbones.HEADS
    head_norm: bool = False  # each exit applies its own copy of the final norm
    pooling: str = "cls"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_logits(cls, logits: dict[str, np.ndarray]) -> EncoderShape:
        """The shape stored in a run's logits.npz (runs stored before it was: BERT's, from the two sizes kept)."""
        if "flops_shape" in logits:
            values = json.loads(str(logits["flops_shape"]))
            values["layer_windows"] = tuple(values.get("layer_windows", ()))
            return cls(**values)
        return cls(int(logits["hidden_size"]), int(logits["intermediate_size"]), int(logits["num_labels"]))


def encoder_shape(config: Any, pooling: str, num_labels: int) -> EncoderShape:
    """The FLOPs shape of a Hugging Face backbone config (``model_type`` in `sweet.backbones`) and its exits."""
    from sweet.backbones import backbone_spec

    spec = backbone_spec(config.model_type)
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    windows: list[int | None] = []
    for layer_type in (getattr(config, "layer_types", None) or [])[: config.num_hidden_layers]:
        if layer_type != "sliding_attention":
            windows.append(None)
        elif spec.causal:
            windows.append(int(config.sliding_window) - 1)  # keys j with i - window < j ≤ i
        else:
            windows.append(int(config.sliding_window))  # ModernBERT: |i - j| ≤ local_attention // 2
    return EncoderShape(
        hidden_size=d,
        intermediate_size=config.intermediate_size,
        num_labels=num_labels,
        attention_size=heads * head_dim,
        kv_size=kv_heads * head_dim,
        gated_mlp=spec.gated_mlp,
        causal=spec.causal,
        layer_windows=tuple(windows) if any(w is not None for w in windows) else (),
        embedding_flops=spec.embedding_flops,
        head=spec.head,
        head_norm=spec.final_norm is not None,
        pooling=pooling,
    )


def attended_pairs(lengths: np.ndarray, causal: bool, window: int | None) -> np.ndarray:
    """(query, key) pairs one attention layer computes for sequences of ``lengths`` tokens."""
    n = np.asarray(lengths, dtype=np.float64)
    # Σ_{i<n} min(i, r): the keys on one side of each query, within reach r.
    if window is None:
        one_side = n * (n - 1) / 2
    else:
        r = float(window)
        one_side = np.where(n - 1 <= r, n * (n - 1) / 2, r * (r + 1) / 2 + (n - 1 - r) * r)
    return n + one_side if causal else n + 2 * one_side


def layer_flops(lengths: np.ndarray, shape: EncoderShape, window: int | None = None) -> np.ndarray:
    """FLOPs of one layer (attention reaching ``window``; None: global) per example."""
    n = np.asarray(lengths, dtype=np.float64)
    d, f = shape.hidden_size, shape.intermediate_size
    a = shape.attention_size or d
    kv = shape.kv_size or a
    projections = 2 * n * d * (2 * a + 2 * kv)
    feed_forward = 2 * n * d * f * (3 if shape.gated_mlp else 2)
    return projections + feed_forward + 4 * a * attended_pairs(n, shape.causal, window)


def cumulative_layer_flops(lengths: np.ndarray, shape: EncoderShape, depth: int) -> np.ndarray:
    """[depth + 1, N]: FLOPs of layers 1..k per example, for k = 0..depth."""
    windows = list(shape.layer_windows) + [None] * max(0, depth - len(shape.layer_windows))
    per_layer = [layer_flops(lengths, shape, windows[i]) for i in range(depth)]
    return np.concatenate([np.zeros((1, len(lengths))), np.cumsum(per_layer, axis=0)])


def head_flops(lengths: np.ndarray, shape: EncoderShape) -> np.ndarray:
    """FLOPs of one exit head run per example: pooling (and its norm), pooler, classifier."""
    n = np.asarray(lengths, dtype=np.float64)
    d = shape.hidden_size
    pooler = 0 if shape.head == "score" else 2 * d * d
    classifier = 2 * d * shape.num_labels
    pooled_values = n * d if shape.pooling == "mean" else np.zeros_like(n)
    normalised = (n if shape.pooling == "mean" else np.ones_like(n)) * d if shape.head_norm else np.zeros_like(n)
    return pooled_values + NORM_FLOPS * normalised + pooler + classifier


def flops_fraction(
    exit_index: np.ndarray,
    lengths: np.ndarray,
    exit_layers: np.ndarray,
    method: str,
    shape: EncoderShape,
) -> float:
    """FLOPs of the adaptive run over those of one full-depth classifier on the same examples."""
    exit_index = np.asarray(exit_index)
    exit_layers = np.asarray(exit_layers)
    n = np.asarray(lengths, dtype=np.float64)
    columns = np.arange(len(n))
    embed = shape.embedding_flops * n * shape.hidden_size
    head = head_flops(n, shape)
    cumulative = cumulative_layer_flops(n, shape, int(exit_layers[-1]))
    through_exit = cumulative[exit_layers]  # [E, N]: layers up to each exit
    if methods.get(method).per_exit:
        # Member j runs its own embeddings, its L_j layers and its head; leaving at member k ran members 1..k.
        members = np.cumsum(embed + through_exit + head, axis=0)
        adaptive = members[exit_index, columns]
    else:
        adaptive = embed + through_exit[exit_index, columns] + (exit_index + 1) * head
    full = embed + cumulative[-1] + head
    return float(adaptive.sum() / full.sum())
