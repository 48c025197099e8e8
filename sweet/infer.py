"""Real early exit: stop computing once an example's exit rule fires.

EE/SWEET: forward hooks on the stock backbone. At each exit layer the exit head runs on the rows still in the
batch (with their attention mask, which the pooling reads); rows whose rule fires are answered and removed from
the batch: the hidden state handed to the next layer shrinks, and a pre-hook on every layer cuts whatever else it
receives per row to match (the attention mask, and for rotary models the per-row positions where they are
batched); when no row is left the forward pass is abandoned, so later layers are never computed. MM: members run
in order on the rows not yet answered.

The decision at exit k is ``sweet.exits`` rule's causal ``fires`` on exits 1..k (its last row, which
``ExitRule.fires_at_last`` computes without redoing exits 1..k-1), the same function the offline curves use, so
predictions and exit layers equal the offline simulation (``tests/test_infer.py``).

At batch 1 the pass is short and every fixed cost per sentence and per exit shows in the speedup, so the hooks
are installed once per call (not per batch), the per-layer pre-hooks only where rows can leave mid-pass (batches
of more than one row), and an exit nobody leaves at hands the layer's output on untouched.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
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
    """Keeps the calibrated probabilities each row has produced so far and applies the rule at each exit."""

    def __init__(self, rule: ExitRule, threshold: float, temperatures: np.ndarray, batch: int, num_exits: int) -> None:
        self.rule, self.threshold = rule, threshold
        self.temperatures = np.asarray(temperatures, dtype=np.float64)
        self.num_exits = num_exits
        self.batch = batch
        # [num_exits, batch, C]: softmax(logits / T_k) per exit, kept (not the logits) so that exit k's decision
        # does not recompute every earlier exit's softmax; allocated at the first exit, which knows C.
        self.probs: np.ndarray | None = None
        self.lte = np.zeros((num_exits, batch), dtype=np.float32)
        self.exit_index = np.full(batch, -1, dtype=np.int64)
        self.prediction = np.full(batch, -1, dtype=np.int64)
        self.probabilities: np.ndarray | None = None  # [batch, C]: the calibrated probabilities at the exit taken

    def decide(self, k: int, rows: np.ndarray, logits: torch.Tensor, lte: torch.Tensor | None) -> np.ndarray:
        """Record exit k's outputs for ``rows`` (original indices); return which of them leave here."""
        values = logits.float().cpu().numpy()
        # calibrated_probs works per exit and per row, so exit k alone gives the numbers it gives as the k-th of a
        # stack of exits (the offline simulation's [K, N, C] on all examples).
        here = calibrated_probs(values[None], self.temperatures[k : k + 1])[0]
        if self.probs is None:
            self.probs = np.zeros((self.num_exits, self.batch, values.shape[-1]), dtype=np.float64)
            self.probabilities = np.zeros((self.batch, values.shape[-1]), dtype=np.float64)
        everyone = len(rows) == self.batch  # no row has left yet: plain slices instead of gathering rows
        self.probs[k, rows] = here
        if lte is not None:
            self.lte[k, rows] = lte.float().cpu().numpy()
        if k == self.num_exits - 1:
            leave = np.ones(len(rows), dtype=bool)
        else:
            probs = self.probs[: k + 1] if everyone else self.probs[: k + 1, rows]
            lte_so_far = None
            if self.rule.needs_lte:
                lte_so_far = self.lte[: k + 1] if everyone else self.lte[: k + 1, rows]
            leave = self.rule.fires_at_last(probs, lte_so_far, self.threshold)
        if leave.any():
            answered = rows[leave]
            self.exit_index[answered] = k
            self.prediction[answered] = values[leave].argmax(axis=-1)
            self.probabilities[answered] = here[leave]
        return leave


class _EarlyExitRunner:
    """The hooks of real early exit on an EE/SWEET model, installed once for a whole ``early_exit`` call.

    Registering and removing a hook per layer and exit for every batch was a fixed cost per sentence at batch 1;
    the hooks read the current batch from this object instead. Use as a context manager (the hooks are removed on
    leaving it), then ``run`` each batch.
    """

    def __init__(self, model: EarlyExitModel, batch_size: int) -> None:
        self.model = model
        self.rowless = backbone_spec(model.backbone.config.model_type).rowless_layer_kwargs
        self.last = model.num_exits - 1
        # Per batch (set by ``run``): its size, attention mask, decider, the original indices of the rows still
        # being computed, and (once rows have left) those rows as an index tensor and their attention mask.
        self.full = 0
        self.mask: torch.Tensor | None = None
        self.decider: _Decider | None = None
        self.rows = np.zeros(0, dtype=np.int64)
        self.keep: torch.Tensor | None = None
        self.rows_mask: torch.Tensor | None = None
        layers = model.layers
        self.handles = [module.register_forward_hook(self._exit_hook(k)) for k, module in enumerate(model.exit_modules)]
        if batch_size > 1:
            # With one row per batch rows never leave mid-pass (the row leaves and the pass stops, or it stays),
            # so there is nothing to cut and no pre-hook: each costs a Python call per layer.
            self.handles += [layers[i].register_forward_pre_hook(self._cut_rows, with_kwargs=True)
                             for i in range(model.exit_layers[-1])]

    def __enter__(self) -> _EarlyExitRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def run(self, batch: dict[str, torch.Tensor], decider: _Decider) -> None:
        self.full = batch["input_ids"].shape[0]
        self.mask = batch.get("attention_mask")
        self.decider = decider
        self.rows = np.arange(self.full)
        self.keep = self.rows_mask = None
        try:
            self.model.backbone(**backbone_inputs(self.model.backbone, batch["input_ids"], self.mask,
                                                  batch.get("token_type_ids")))
        except StopForward:
            pass
        finally:
            self.decider = self.mask = self.keep = self.rows_mask = None

    def _cut_rows(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # The hidden state (args[0]) was already cut by the exit hook; every other per-row tensor is cut here.
        if self.keep is None:
            return None
        keep, full, rowless = self.keep, self.full, self.rowless
        args = (args[0], *(_select_rows(a, keep, full) for a in args[1:]))
        kwargs = {k: v if k in rowless else _select_rows(v, keep, full) for k, v in kwargs.items()}
        return args, kwargs

    def _exit_hook(self, k: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            rows = self.rows
            logits, lte = self.model.exit_head(k, hidden, self.mask if self.keep is None else self.rows_mask)
            leave = self.decider.decide(k, rows, logits, lte)
            if k == self.last or leave.all():
                raise StopForward
            if not leave.any():
                return None  # every row goes on: the layer's output unchanged, no copy
            stay = ~leave
            self.rows = rows[stay]
            self.keep = torch.as_tensor(self.rows, device=hidden.device)
            if self.mask is not None:
                self.rows_mask = self.mask.index_select(0, self.keep)
            kept = hidden[torch.as_tensor(stay, device=hidden.device)]
            return (kept, *output[1:]) if isinstance(output, tuple) else kept

        return hook


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
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())  # once for the call, not per batch
        if isinstance(model, MultiModel):
            step = functools.partial(_cascade_batch, model)
        else:
            step = stack.enter_context(_EarlyExitRunner(model, batch_size)).run
        for idx, batch in sorted_batches(features, batch_size, pad_token_id):
            batch.pop("labels", None)
            decider = _Decider(rule, threshold, temperatures, len(idx), model.num_exits)
            step(to_device(batch, device), decider)
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


def _select_rows(value: Any, keep: torch.Tensor, full: int, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """``value`` with only the rows in ``keep`` where it is per row: a tensor of ≥ 2 dimensions whose first is the
    full batch (masks [batch, 1, q, k], positions [batch, seq], rotary cos/sin [batch, seq, dim]), also inside
    tuples and lists. Anything else (broadcast [1, …] tensors, 1-D tensors, None, caches) passes unchanged.
    ``memo`` (id of a tensor → its selection), shared across calls, selects a tensor that several layers receive
    once and hands them one tensor again."""
    if isinstance(value, torch.Tensor):
        if value.dim() < 2 or value.shape[0] != full:
            return value
        if memo is None:
            return value.index_select(0, keep)
        if id(value) not in memo:
            memo[id(value)] = value.index_select(0, keep)
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(_select_rows(v, keep, full, memo) for v in value)
    return value
