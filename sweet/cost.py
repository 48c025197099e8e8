"""What early exit saves: layer fraction, speedup and an analytic FLOPs fraction.

``layer_fraction = Σ_examples cost(exit) / (N · L)`` with ``cost`` the layers computed to reach an exit (for MM
the layers of every member run so far) and ``L`` the depth of the full model (the last exit's layer).
``speedup = 1 / layer_fraction``. The FLOPs count is BERT-shaped: per layer, the Q/K/V/output projections and
feed-forward (2·n·(4d² + 2df)) plus attention scores and mixing (4·n²·d), from each example's real token count;
embeddings (≈7·n·d: three lookups added and a LayerNorm) and exit heads (pooler 2d², classifier 2dC) are
counted, and MM pays embeddings and a head again for every member it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def layer_costs(exit_layers: list[int] | np.ndarray, method: str) -> np.ndarray:
    """Layers computed when an example leaves at each exit."""
    layers = np.asarray(exit_layers, dtype=np.int64)
    return np.cumsum(layers) if method == "mm" else layers


def layer_fraction(exit_index: np.ndarray, costs: np.ndarray, full_depth: int) -> float:
    return float(np.asarray(costs)[exit_index].sum() / (len(exit_index) * full_depth))


@dataclass(frozen=True)
class EncoderShape:
    hidden_size: int
    intermediate_size: int
    num_labels: int


def layer_flops(lengths: np.ndarray, shape: EncoderShape) -> np.ndarray:
    n = np.asarray(lengths, dtype=np.float64)
    d, f = shape.hidden_size, shape.intermediate_size
    return 2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d


def flops_fraction(
    exit_index: np.ndarray,
    lengths: np.ndarray,
    exit_layers: np.ndarray,
    method: str,
    shape: EncoderShape,
) -> float:
    """FLOPs of the adaptive run over those of one full-depth classifier on the same examples."""
    exit_index = np.asarray(exit_index)
    n = np.asarray(lengths, dtype=np.float64)
    d = shape.hidden_size
    embed = 7 * n * d
    head = 2 * d * d + 2 * d * shape.num_labels
    per_layer = layer_flops(n, shape)
    costs = layer_costs(exit_layers, method)[exit_index]
    heads_run = exit_index + 1
    embeds_run = heads_run if method == "mm" else 1
    adaptive = embeds_run * embed + costs * per_layer + heads_run * head
    full = embed + int(np.asarray(exit_layers)[-1]) * per_layer + head
    return float(adaptive.sum() / full.sum())
