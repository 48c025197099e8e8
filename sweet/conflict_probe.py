"""The gradient-conflict probe (``training.gradient_conflict_every``, EE only): on one batch every N steps, the
cosine between each block's own-exit gradient and every later exit's. It restores the RNG state, so turning it on
changes no weight of the run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweet.backbones import embedding_module, first_layer_extra
from sweet.model import EarlyExitModel, exit_loss_terms


def gradient_conflict(model: nn.Module, inputs: dict, step: int) -> list[dict]:
    """Cosine between each block's own-exit gradient and every later exit's (and their sum), on one batch.

    Block k holds the layers between exit k-1 and exit k (block 1 also the embeddings). The RNG state is restored
    afterwards, so turning the probe on does not change the training run.
    """
    if not isinstance(model, EarlyExitModel):
        return []
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    # Each exit's loss is rebuilt from the hidden state at its own layer: the model's stacked exit_losses would
    # send exit k's backward pass through every later layer too (with zero gradients). This way it stops at
    # block k: one forward plus Σ_k (layers up to exit k) of backward.
    hidden_at_exit: dict[int, torch.Tensor] = {}

    def capture(k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden_at_exit[k] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [module.register_forward_hook(capture(k)) for k, module in enumerate(model.exit_modules)]
    try:
        model(**{key: value for key, value in inputs.items() if key != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    exit_losses = []
    for k in range(model.num_exits):
        logits, lte = model.exit_head(k, hidden_at_exit[k], inputs.get("attention_mask"))
        exit_losses.append(exit_loss_terms(logits[None], inputs["labels"], None if lte is None else lte[None])[0])
    blocks = block_parameters(model)
    per_exit: list[list[list[torch.Tensor]]] = []  # [exit][block][parameter]
    for k in range(model.num_exits):
        own_blocks = blocks[: k + 1]
        params = [p for block in own_blocks for p in block]
        grads = torch.autograd.grad(exit_losses[k], params, retain_graph=k < model.num_exits - 1, allow_unused=True)
        grads_by_block, start = [], 0
        for block in own_blocks:
            block_grads = grads[start : start + len(block)]
            grads_by_block.append([torch.zeros_like(p) if g is None else g for p, g in zip(block, block_grads)])
            start += len(block)
        per_exit.append(grads_by_block)
    torch.random.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    rows = []
    for b in range(len(blocks)):
        own = per_exit[b][b]
        later = {str(j + 1): per_exit[j][b] for j in range(b + 1, model.num_exits)}
        if len(later) > 1:
            later["sum"] = [sum(gs) for gs in zip(*later.values())]
        for other, grads in later.items():
            rows.append({"step": step, "block": b + 1, "exit": b + 1, "other": other, "cosine": _cosine(own, grads)})
    return rows


def block_parameters(model: EarlyExitModel) -> list[list[nn.Parameter]]:
    """Backbone parameters grouped by block: block 1 = embeddings + layers 1..L_1, block k = layers L_{k-1}+1..L_k."""
    layers = model.layers
    blocks: list[list[nn.Parameter]] = []
    previous = 0
    for k, layer in enumerate(model.exit_layers):
        params = [p for m in layers[previous:layer] for p in m.parameters()]
        if k == 0:
            params = list(embedding_module(model.backbone).parameters()) + params
            extra = first_layer_extra(model.backbone)
            if extra is not None:
                params += list(extra.parameters())
        blocks.append(params)
        previous = layer
    return blocks


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Cosine of two gradients given per parameter (summed per tensor: no concatenated copy of the block)."""
    dot = sum(float((x.float() * y.float()).sum()) for x, y in zip(a, b))
    norm_a = sum(float(x.float().square().sum()) for x in a) ** 0.5
    norm_b = sum(float(y.float().square().sum()) for y in b) ** 0.5
    return dot / (norm_a * norm_b) if norm_a * norm_b > 0 else float("nan")
