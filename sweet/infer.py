"""Real early exit: stop computing once an example's exit rule fires.

EE/SWEET: forward hooks on the stock encoder. At each exit layer the exit head runs on the rows still in the
batch; rows whose rule fires are answered and removed from the batch (the hidden state handed to the next layer
shrinks, and a pre-hook cuts the attention mask to match); when no row is left the forward pass is abandoned, so
later layers are never computed. MM: members run in order on the rows not yet answered.

The decision at exit k is ``sweet.exits`` rule's causal ``fires`` on exits 1..k, the same function the offline
curves use, so predictions and exit layers equal the offline simulation (``tests/test_infer.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from sweet.backbones import backbone_spec
from sweet.batches import model_device, sorted_batches, to_device
from sweet.exits import ExitRule, calibrated_probs
from sweet.model import EarlyExitModel, StopForward, _backbone_inputs
from sweet.multimodel import MultiModel


class _Decider:
    """Keeps the logits each row has produced so far and applies the rule at each exit."""

    def __init__(self, rule: ExitRule, threshold: float, temperatures: np.ndarray, batch: int, num_exits: int) -> None:
        self.rule, self.threshold = rule, threshold
        self.temperatures = np.asarray(temperatures, dtype=np.float64)
        self.num_exits = num_exits
        self.logits: np.ndarray | None = None
        self.lte = np.zeros((num_exits, batch), dtype=np.float32)
        self.exit_index = np.full(batch, -1, dtype=np.int64)
        self.prediction = np.full(batch, -1, dtype=np.int64)

    def decide(self, k: int, rows: np.ndarray, logits: torch.Tensor, lte: torch.Tensor | None) -> np.ndarray:
        """Record exit k's outputs for ``rows`` (original indices); return which of them leave here."""
        values = logits.float().cpu().numpy()
        if self.logits is None:
            self.logits = np.zeros((self.num_exits, len(self.exit_index), values.shape[-1]), dtype=np.float32)
        self.logits[k, rows] = values
        if lte is not None:
            self.lte[k, rows] = lte.float().cpu().numpy()
        if k == self.num_exits - 1:
            leave = np.ones(len(rows), dtype=bool)
        else:
            probs = calibrated_probs(self.logits[: k + 1, rows], self.temperatures[: k + 1])
            lte_so_far = self.lte[: k + 1, rows] if self.rule.needs_lte else None
            leave = self.rule.fires(probs, lte_so_far, self.threshold)[-1]
        self.exit_index[rows[leave]] = k
        self.prediction[rows[leave]] = values[leave].argmax(axis=-1)
        return leave


@torch.inference_mode()
def _early_exit_batch(model: EarlyExitModel, batch: dict[str, torch.Tensor], decider: _Decider) -> None:
    spec = backbone_spec(model.backbone.config.model_type)
    full = batch["input_ids"].shape[0]
    state = {"rows": np.arange(full)}  # original indices of the rows still being computed
    last = model.num_exits - 1

    def cut_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        rows = state["rows"]
        if len(rows) == full:
            return args, kwargs
        keep = torch.as_tensor(rows, device=batch["input_ids"].device)
        args = list(args)
        if len(args) > spec.mask_arg and _batched(args[spec.mask_arg], full):
            args[spec.mask_arg] = args[spec.mask_arg].index_select(0, keep)
        if _batched(kwargs.get("attention_mask"), full):
            kwargs["attention_mask"] = kwargs["attention_mask"].index_select(0, keep)
        return tuple(args), kwargs

    def make_exit_hook(k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            logits, lte = model.exit_head(k, hidden)
            rows = state["rows"]
            leave = decider.decide(k, rows, logits, lte)
            if leave.all() or k == last:
                raise StopForward
            stay = torch.as_tensor(~leave, device=hidden.device)
            state["rows"] = rows[~leave]
            kept = hidden[stay]
            return (kept, *output[1:]) if isinstance(output, tuple) else kept

        return hook

    layers = model.layers
    handles = [layers[i].register_forward_pre_hook(cut_mask, with_kwargs=True) for i in range(model.exit_layers[-1])]
    handles += [module.register_forward_hook(make_exit_hook(k)) for k, module in enumerate(model.exit_modules)]
    try:
        model.backbone(**_backbone_inputs(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")))
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def _cascade_batch(model: MultiModel, batch: dict[str, torch.Tensor], decider: _Decider) -> None:
    rows = np.arange(batch["input_ids"].shape[0])
    for k, member in enumerate(model.members):
        keep = torch.as_tensor(rows, device=batch["input_ids"].device)
        sub = {key: value.index_select(0, keep) for key, value in batch.items()}
        out = member(**sub)
        leave = decider.decide(k, rows, out.exit_logits[0], None if out.lte_scores is None else out.lte_scores[0])
        rows = rows[~leave]
        if len(rows) == 0:
            return


def run_early_exit(
    model: EarlyExitModel | MultiModel,
    features: list[dict],
    rule: ExitRule,
    threshold: float,
    temperatures: np.ndarray,
    batch_size: int = 1,
    pad_token_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and exit indices (0-based) of real early-exit inference over ``features``."""
    model.eval()
    device = model_device(model)
    predictions = np.full(len(features), -1, dtype=np.int64)
    exits = np.full(len(features), -1, dtype=np.int64)
    step = _cascade_batch if isinstance(model, MultiModel) else _early_exit_batch
    for idx, batch in sorted_batches(features, batch_size, pad_token_id):
        batch.pop("labels", None)
        decider = _Decider(rule, threshold, temperatures, len(idx), model.num_exits)
        step(model, to_device(batch, device), decider)
        predictions[idx] = decider.prediction
        exits[idx] = decider.exit_index
    return predictions, exits


def _batched(value: Any, full: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == full
