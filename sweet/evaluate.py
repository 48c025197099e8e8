"""Every exit, computed once: one batched pass over a split stores per-example, per-exit logits.

Nothing downstream re-runs a model: each exit's own score, every exit rule at every threshold, and the speed
accounting are exact functions of these logits (an exit's logits do not depend on whether an earlier exit was
taken), which is what ``sweet.curves`` computes and ``sweet.infer`` proves equal to real early exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sweet import methods
from sweet.batches import encode, load_tokenizer, model_device, sorted_batches, to_device
from sweet.cost import EncoderShape, encoder_shape, layer_costs
from sweet.errors import UserError
from sweet.io import write_npz
from sweet.model import CONFIG_NAME, EarlyExitModel
from sweet.multimodel import MultiModel


def load_model(model_dir: str | Path) -> EarlyExitModel | MultiModel:
    """A trained EarlyExitModel or MultiModel folder, told apart by its ``sweet_config.json``."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"--model: {model_dir} has no {CONFIG_NAME}; give the folder written by `sweet train` / `sweet combine`")
    kind = json.loads(config_path.read_text()).get("kind")
    model = MultiModel.from_pretrained(model_dir) if kind == "multi-model" else EarlyExitModel.from_pretrained(model_dir)
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model


def method_of(model: EarlyExitModel | MultiModel) -> str:
    """The method a model was trained with: an EarlyExitModel's config records it, as does a MultiModel folder
    that `combine` wrote with its method; one written before records none and is the registry's per-exit method
    when there is exactly one (MM)."""
    if not isinstance(model, MultiModel):
        return model.config.method
    if model.method is not None:
        return methods.get(model.method).name
    per_exit = methods.names("per-exit")
    if len(per_exit) != 1:
        raise UserError(f"--model: this MultiModel folder does not record its method, and the per-exit methods are "
                        f"{', '.join(per_exit)}; rerun `sweet combine --method …` to record it")
    return per_exit[0]


@torch.inference_mode()
def exit_logits(
    model: nn.Module, features: list[dict], batch_size: int = 64, pad_token_id: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-exit logits [E, N, C] (and learned-to-exit scores [E, N]) in the order of ``features``."""
    device = model_device(model)
    logits: np.ndarray | None = None
    lte: np.ndarray | None = None
    for idx, batch in sorted_batches(features, batch_size, pad_token_id):
        batch.pop("labels", None)
        out = model(**to_device(batch, device))
        chunk = out.exit_logits.float().cpu().numpy()
        if logits is None:
            logits = np.zeros((chunk.shape[0], len(features), chunk.shape[2]), dtype=np.float32)
            if out.lte_scores is not None:
                lte = np.zeros((chunk.shape[0], len(features)), dtype=np.float32)
        logits[:, idx] = chunk
        if lte is not None:
            lte[:, idx] = out.lte_scores.float().cpu().numpy()
    assert logits is not None, "no examples"
    return logits, lte


def flops_shape(model: EarlyExitModel | MultiModel, num_labels: int) -> EncoderShape:
    """What the FLOPs count needs: the architecture of the full-depth model (MM: the deepest member) and its exits."""
    if isinstance(model, MultiModel):
        member = model.members[-1]
        return encoder_shape(member.encoder_config, member.pooling, num_labels)
    return encoder_shape(model.backbone.config, model.pooling, num_labels)


def logits_record(
    model: EarlyExitModel | MultiModel, rows: list[dict], features: list[dict], logits: np.ndarray,
    lte: np.ndarray | None, temperatures: list[float] | None,
) -> dict[str, np.ndarray]:
    """What ``logits.npz`` (and ``calibration_logits.npz``) holds for ``rows``: the per-exit logits of one pass,
    the temperatures, labels, lengths and everything the curves' speed and FLOPs accounting needs."""
    if temperatures is None:
        temperatures = [1.0] * logits.shape[0]
    if len(temperatures) != logits.shape[0]:
        raise UserError(f"--temperatures: {len(temperatures)} temperatures for {logits.shape[0]} exits; recalibrate this model")
    method = method_of(model)
    shape = flops_shape(model, logits.shape[2])
    arrays = {
        "exit_logits": logits,
        "temperatures": np.asarray(temperatures, dtype=np.float32),
        "labels": np.array([r["label"] for r in rows], dtype=np.int64),
        "ids": np.array([r["id"] for r in rows], dtype=np.int64),
        "lengths": np.array([len(f["input_ids"]) for f in features], dtype=np.int64),
        "exit_layers": np.asarray(model.exit_layers, dtype=np.int64),
        "layer_costs": layer_costs(model.exit_layers, method),
        "method": np.array(method),
        "num_labels": np.array(logits.shape[2]),
        "flops_shape": np.array(shape.to_json()),  # sweet.cost.EncoderShape
        "hidden_size": np.array(shape.hidden_size),  # kept for readers of runs stored before flops_shape
        "intermediate_size": np.array(shape.intermediate_size),
    }
    if lte is not None:
        arrays["lte_scores"] = lte
    return arrays


def evaluate(
    model_dir: str | Path, rows: list[dict], temperatures: list[float] | None, out: str | Path, batch_size: int = 64
) -> None:
    """Write ``logits.npz`` for ``rows`` (the evaluation split) with everything the curves need."""
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    features = encode(rows, tokenizer)
    logits, lte = exit_logits(model, features, batch_size, tokenizer.pad_token_id or 0)
    write_npz(out, logits_record(model, rows, features, logits, lte, temperatures))
