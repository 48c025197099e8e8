"""Real early exit: stop computing once an example's exit rule fires.

EE/SWEET: forward hooks on the stock backbone. At each exit layer the exit head runs on the rows still in the
batch (with their attention mask, which the pooling reads); rows whose rule fires are answered and removed from
the batch: the hidden state handed to the next layer shrinks, and a pre-hook on every layer cuts whatever else it
receives per row to match (the attention mask, and for rotary models the per-row positions where they are
batched); when no row is left the forward pass is abandoned, so later layers are never computed. MM: members run
in order on the rows not yet answered.

The decision at exit k is ``sweet.exits`` rule's causal ``fires`` on exits 1..k, the same function the offline
curves use, so predictions and exit layers equal the offline simulation (``tests/test_infer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sweet.backbones import backbone_spec
from sweet.batches import model_device, sorted_batches, to_device
from sweet.exits import ExitRule, calibrated_probs
from sweet.model import EarlyExitModel, StopForward, backbone_inputs
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
        self.probabilities: np.ndarray | None = None  # [batch, C]: the calibrated probabilities at the exit taken

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
            here = calibrated_probs(self.logits[k : k + 1, rows], self.temperatures[k : k + 1])[0]
        else:
            probs = calibrated_probs(self.logits[: k + 1, rows], self.temperatures[: k + 1])
            lte_so_far = self.lte[: k + 1, rows] if self.rule.needs_lte else None
            leave = self.rule.fires(probs, lte_so_far, self.threshold)[-1]
            here = probs[-1]
        if self.probabilities is None:
            self.probabilities = np.zeros((len(self.exit_index), values.shape[-1]), dtype=np.float64)
        self.exit_index[rows[leave]] = k
        self.prediction[rows[leave]] = values[leave].argmax(axis=-1)
        self.probabilities[rows[leave]] = here[leave]
        return leave


@torch.inference_mode()
def _early_exit_batch(model: EarlyExitModel, batch: dict[str, torch.Tensor], decider: _Decider) -> None:
    rowless = backbone_spec(model.backbone.config.model_type).rowless_layer_kwargs
    full = batch["input_ids"].shape[0]
    mask = batch.get("attention_mask")
    state = {"rows": np.arange(full)}  # original indices of the rows still being computed
    last = model.num_exits - 1

    def keep_index() -> torch.Tensor:
        return torch.as_tensor(state["rows"], device=batch["input_ids"].device)

    def cut_rows(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # The hidden state (args[0]) was already cut by the exit hook; every other per-row tensor is cut here.
        if len(state["rows"]) == full:
            return args, kwargs
        keep = keep_index()
        args = (args[0], *(_select_rows(a, keep, full) for a in args[1:]))
        kwargs = {k: v if k in rowless else _select_rows(v, keep, full) for k, v in kwargs.items()}
        return args, kwargs

    def make_exit_hook(k: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            rows = state["rows"]
            rows_mask = None if mask is None else mask if len(rows) == full else mask.index_select(0, keep_index())
            logits, lte = model.exit_head(k, hidden, rows_mask)
            leave = decider.decide(k, rows, logits, lte)
            if leave.all() or k == last:
                raise StopForward
            stay = torch.as_tensor(~leave, device=hidden.device)
            state["rows"] = rows[~leave]
            kept = hidden[stay]
            return (kept, *output[1:]) if isinstance(output, tuple) else kept

        return hook

    layers = model.layers
    handles = [layers[i].register_forward_pre_hook(cut_rows, with_kwargs=True) for i in range(model.exit_layers[-1])]
    handles += [module.register_forward_hook(make_exit_hook(k)) for k, module in enumerate(model.exit_modules)]
    try:
        model.backbone(**backbone_inputs(model.backbone, batch["input_ids"], mask, batch.get("token_type_ids")))
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


@dataclass
class EarlyExitResult:
    """Per example, in the order of the features: the class predicted, the exit (0-based) that answered, and the
    temperature-scaled probabilities there (what the rule read)."""

    predictions: np.ndarray  # [N] int64
    exits: np.ndarray  # [N] int64, 0-based exit index
    probabilities: np.ndarray  # [N, C] float64


def early_exit(
    model: EarlyExitModel | MultiModel,
    features: list[dict],
    rule: ExitRule,
    threshold: float,
    temperatures: np.ndarray,
    batch_size: int = 1,
    pad_token_id: int = 0,
) -> EarlyExitResult:
    """Real early-exit inference over ``features`` (``sweet.batches.encode``'s output): length-sorted batches."""
    model.eval()
    device = model_device(model)
    predictions = np.full(len(features), -1, dtype=np.int64)
    exits = np.full(len(features), -1, dtype=np.int64)
    probabilities: np.ndarray | None = None
    step = _cascade_batch if isinstance(model, MultiModel) else _early_exit_batch
    for idx, batch in sorted_batches(features, batch_size, pad_token_id):
        batch.pop("labels", None)
        decider = _Decider(rule, threshold, temperatures, len(idx), model.num_exits)
        step(model, to_device(batch, device), decider)
        predictions[idx] = decider.prediction
        exits[idx] = decider.exit_index
        if probabilities is None:
            probabilities = np.zeros((len(features), decider.probabilities.shape[1]), dtype=np.float64)
        probabilities[idx] = decider.probabilities
    if probabilities is None:
        probabilities = np.zeros((0, 0), dtype=np.float64)
    return EarlyExitResult(predictions, exits, probabilities)


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
    result = early_exit(model, features, rule, threshold, temperatures, batch_size, pad_token_id)
    return result.predictions, result.exits


def _select_rows(value: Any, keep: torch.Tensor, full: int) -> Any:
    """``value`` with only the rows in ``keep`` where it is per row: a tensor of ≥ 2 dimensions whose first is the
    full batch (masks [batch, 1, q, k], positions [batch, seq], rotary cos/sin [batch, seq, dim]), also inside
    tuples and lists. Anything else (broadcast [1, …] tensors, 1-D tensors, None, caches) passes unchanged."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, keep) if value.dim() >= 2 and value.shape[0] == full else value
    if isinstance(value, (tuple, list)):
        return type(value)(_select_rows(v, keep, full) for v in value)
    return value
