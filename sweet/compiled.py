"""Compiled early exit: the model cut at its exits into segments, each one compiled unit per static shape.

Why: on a GPU the hook-based runner (``sweet.infer``) is bound by Python and launches, not by layers (issue 25:
1,792 kernel launches and 116 device-to-host copies for 7 batches of 32). Here each batch costs one compiled call
and one small device-to-host read per exit boundary.

Segments. Exit k's segment runs the layers after exit k-1 up to exit k, exit k's head, the calibrated
probabilities softmax(logits / T_k) and the exit rule's decision, all on the device, and returns one packed
[batch, C + 2] float64 tensor (probabilities, "leaves here", predicted class): the only thing read back to the
host. What every layer receives besides the hidden state (attention masks in the backbone's own format, rotary
cos/sin, DeBERTa's relative tables, ...) is not rebuilt here: one stock forward of the backbone per batch runs
with each layer's ``forward`` replaced by a recorder, which keeps the layer's inputs and hands the hidden state
on unchanged (``_capture``); the embeddings' output is the first layer's input. So the stock modeling code
decides the layer call convention for every architecture in ``sweet.backbones``, and a backbone whose encoder does
more between layers than calling them (DeBERTa-v2's convolution after layer 1) falls back to the hook runner, with
the reason in ``SegmentedRunner.fallback_reason``. The embeddings and mask preparation run eagerly in that capture
pass (a handful of kernels per batch): compiling them too would mean re-implementing each architecture's prefix.

Rules on the device. Each exit rule of ``sweet.exits.EXIT_RULES`` carries its device version (``fires_device``: the
same comparisons in float64, with patience's streak and previous prediction as tensors); a rule without one runs on
the hook runner. ``tests/test_exits.py`` checks each against its numpy verdict, ``tests/test_compiled.py`` the whole
runner against the offline simulation.

Shapes. CUDA graphs replay one static shape each, so on CUDA batch sizes are padded up to buckets 1, 2, 4, 8 and
then multiples of 8 (capped at the batch size asked for) by repeating the last row, and sequence lengths up to a
multiple of ``seq_multiple`` tokens with padding the attention mask hides: a handful of static shapes cover every
input. Rows of a batch are independent and padding tokens are masked, so padding changes no result (tested). When
rows leave, the survivors are compacted (``index_select``) into the smallest batch bucket that holds them; while
they still need the same bucket they stay in place and the rows that left are only masked out (ignored):
compacting then would buy nothing and cost a gather of every per-row layer input. On a CPU the segments compile
with dynamic shapes instead (inductor, ``dynamic=True``) and run unpadded: one graph per segment covers every
length and every batch size above 1 (dynamo specialises size 1), where static shapes would cost minutes of
compiling per segment and bucket, and a padded row or token costs a CPU as much as a real one (measured: padding
made the plain segments 2× slower at batch 32). Uncompiled segments run unpadded too.

The CUDA-graph trap. On CUDA the segments compile with ``mode="reduce-overhead"``: inductor plus CUDA graphs
(cudagraph trees), chosen over a hand-made ``torch.cuda.CUDAGraph`` capture because it already handles the static
input buffers, the warm-up runs before capture and the memory pool shared across shapes. A replay writes its
outputs into static buffers that the next replay overwrites: the packed decision is copied to the host at once,
a hidden state carried over to a later segment is either consumed by the next segment of the same batch or
gathered into a fresh tensor when rows are compacted, and every batch starts with
``torch.compiler.cudagraph_mark_step_begin()``. Nothing this module returns aliases a graph buffer.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sweet.backbones import backbone_spec, first_layer_extra
from sweet.batches import model_device, sorted_batches, to_device
from sweet.errors import UserError
from sweet.exits import EXIT_RULES, ExitRule
from sweet.infer import EarlyExitResult, _select_rows, early_exit
from sweet.model import EarlyExitModel, StopForward, backbone_inputs
from sweet.multimodel import MultiModel

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

def _decide(
    logits: torch.Tensor,
    lte: torch.Tensor | None,
    rule: str,
    temperature: torch.Tensor,
    threshold: torch.Tensor,
    streak: torch.Tensor,
    previous: torch.Tensor,
    first: bool,
    last: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exit k's verdict on the device: packed [B, C + 2] (calibrated probabilities, leaves, predicted class), and
    the rule's state for the next exit (streak, the calibrated argmax)."""
    scaled = logits.double() / temperature  # sweet.exits.calibrated_probs, in torch
    scaled = scaled - scaled.amax(dim=-1, keepdim=True)
    exp = torch.exp(scaled)
    probs = exp / exp.sum(dim=-1, keepdim=True)
    fires_device = EXIT_RULES[rule].fires_device
    fires, streak = fires_device(probs, None if lte is None else lte.double(), threshold, streak, previous, first)
    if last:
        fires = torch.ones_like(fires)
    prediction = logits.argmax(dim=-1)  # what the hook runner answers: the raw logits' argmax
    packed = torch.cat([probs, fires.double()[:, None], prediction.double()[:, None]], dim=-1)
    return packed, streak, probs.argmax(dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# buckets


@dataclass(frozen=True)
class Buckets:
    """The static shapes inputs are padded up to: batch sizes 1, 2, 4, 8, then multiples of 8 up to ``max_batch``;
    lengths a multiple of ``seq_multiple``. ``static=False``: every size is its own bucket (no padding), for the
    segments run as plain Python, where shapes need not repeat and padding would be computed for nothing."""

    max_batch: int
    seq_multiple: int = 16
    static: bool = True

    def batch(self, n: int) -> int:
        if not self.static:
            return n
        bucket = 1 << max(0, n - 1).bit_length() if n <= 8 else -(-n // 8) * 8
        return min(self.max_batch, bucket)

    def seq(self, length: int) -> int:
        if not self.static:
            return length
        return -(-length // self.seq_multiple) * self.seq_multiple

    def all_batches(self) -> list[int]:
        sizes = {self.batch(n) for n in range(1, self.max_batch + 1)}
        return sorted(sizes)


def pad_to_bucket(batch: dict[str, torch.Tensor], rows: int, length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """``batch`` grown to ``rows`` × ``length``: new tokens are padding (mask 0), new rows repeat the last row."""
    out = {}
    for key, value in batch.items():
        extra = length - value.shape[1]
        if extra > 0:
            fill = pad_token_id if key == "input_ids" else 0
            value = torch.cat([value, value.new_full((value.shape[0], extra), fill)], dim=1)
        if rows > value.shape[0]:
            value = torch.cat([value, value[-1:].expand(rows - value.shape[0], -1)], dim=0)
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# compiling


# The backend of ``compile=True`` off CUDA. None runs the segments as plain Python: the tests of the classifier and
# CLI set it so, since inductor takes minutes per model on a shared CPU (tests/test_compiled.py compiles for real).
CPU_BACKEND: str | None = "inductor"


def compile_settings(compile: bool | str, device: torch.device) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments for ``compile`` (False: none, run the segments as plain Python; True or
    "auto": inductor, with CUDA graphs and static shapes on CUDA and dynamic shapes on a CPU; any other string:
    that dynamo backend with static shapes, e.g. "eager" in tests, which then exercise the CUDA path's buckets)."""
    if compile is False or compile == "off":
        return None
    if compile in (True, "auto", "on"):
        if device.type == "cuda":
            return {"mode": "reduce-overhead", "dynamic": False}
        return None if CPU_BACKEND is None else {"backend": CPU_BACKEND, "dynamic": True}
    return {"backend": str(compile), "dynamic": False}


def _raise_recompile_limit(needed: int) -> None:
    # Dynamo keys its cache on the code object, which every segment and bucket shares; its default limit (8) would
    # silently send the later shapes to eager Python.
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < needed:
            setattr(dynamo_config, name, needed)
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * needed)


# ----------------------------------------------------------------------------------------------------------------
# EE/SWEET: segments of one encoder


class _Recorded(Exception):
    """Raised by the last recorder: the layers after the last exit (and the final norm) are not needed."""


class EncoderSegments:
    """An EarlyExitModel's layers cut at its exits, and the capture pass that gathers each layer's inputs."""

    def __init__(self, model: EarlyExitModel, settings: dict[str, Any] | None) -> None:
        self.model = model
        self.layers = model.layers
        self.bounds = [0, *model.exit_layers]  # segment k runs layers bounds[k] .. bounds[k+1]-1
        self.fallback_reason: str | None = None
        if first_layer_extra(model.backbone) is not None:
            self.fallback_reason = (f"{model.backbone.config.model_type}: its encoder transforms layer 1's output "
                                    "between layers (a convolution), which the segments would skip")
        # per-row layer inputs that are not per row although their first dimension may equal the batch
        self.rowless = backbone_spec(model.backbone.config.model_type).rowless_layer_kwargs
        self._tuple_length: int | None = None  # how many values a layer returns (0: the tensor alone)
        # One function for every segment (k is an argument): compiled once per (k, bucket) shape.
        self.function = self._segment if settings is None else torch.compile(self._segment, **settings)

    def select_rows(self, inputs: list[tuple[tuple, dict]], keep: torch.Tensor, full: int) -> list[tuple[tuple, dict]]:
        """Every layer's inputs with only the rows in ``keep`` (``sweet.infer._select_rows`` per value). A tensor
        several layers share (the attention mask, rotary tables) is selected once and stays shared: compiled
        segments guard on which inputs are the same tensor, and a copy per layer would compile another graph."""
        memo: dict[int, torch.Tensor] = {}
        return [(_select_rows(args, keep, full, memo),
                 {k: v if k in self.rowless else _select_rows(v, keep, full, memo) for k, v in kwargs.items()})
                for args, kwargs in inputs]

    def _segment(self, k: int, hidden: torch.Tensor, inputs: list[tuple[tuple, dict]], mask: torch.Tensor | None,
                 rule: str, temperature: torch.Tensor, threshold: torch.Tensor, streak: torch.Tensor,
                 previous: torch.Tensor, first: bool, last: bool):
        for layer, (args, kwargs) in zip(self.layers[self.bounds[k] : self.bounds[k + 1]], inputs, strict=True):
            out = layer(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        logits, lte = self.model.exit_head(k, hidden, mask)
        packed, streak, previous = _decide(logits, lte, rule, temperature, threshold, streak, previous, first, last)
        return hidden, packed, streak, previous

    def _probe_output(self, batch: dict[str, torch.Tensor]) -> None:
        """Learn once how the stock layer returns its hidden state (alone, or first of a tuple of n)."""
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._tuple_length = len(output) if isinstance(output, tuple) else 0
            raise StopForward

        handle = self.layers[0].register_forward_hook(hook)
        ids = batch["input_ids"][:1, :2]
        try:
            self.model.backbone(**backbone_inputs(self.model.backbone, ids, torch.ones_like(ids), None))
        except StopForward:
            pass
        finally:
            handle.remove()

    def capture(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        """The first layer's input (the embeddings' output) and every layer's other inputs, from one stock forward
        whose layers up to the last exit only record what they are given."""
        if self._tuple_length is None:
            self._probe_output(batch)
        n_layers = self.bounds[-1]
        inputs: list[tuple[tuple, dict]] = []
        first_hidden: list[torch.Tensor] = []
        tuple_length = self._tuple_length

        def recorder(i: int) -> Callable[..., Any]:
            def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if i == 0:
                    first_hidden.append(hidden)
                inputs.append((args, kwargs))
                if i == n_layers - 1:
                    raise _Recorded
                return (hidden, *([None] * (tuple_length - 1))) if tuple_length else hidden

            return forward

        for i in range(n_layers):
            self.layers[i].forward = recorder(i)
        try:
            self.model.backbone(**backbone_inputs(self.model.backbone, batch["input_ids"],
                                                  batch.get("attention_mask"), batch.get("token_type_ids")))
        except _Recorded:
            pass
        finally:
            for i in range(n_layers):
                del self.layers[i].forward  # the class's forward again
        return first_hidden[0], inputs


def _stock_member(member: nn.Module, batch: dict[str, torch.Tensor], rule: str, temperature: torch.Tensor,
                  threshold: torch.Tensor, streak: torch.Tensor, previous: torch.Tensor, first: bool, last: bool):
    """An MM member that is a stock sequence classifier: its whole forward and the decision, one unit."""
    out = member(**batch)
    lte = None if out.lte_scores is None else out.lte_scores[0]
    return _decide(out.exit_logits[0], lte, rule, temperature, threshold, streak, previous, first, last)


# ----------------------------------------------------------------------------------------------------------------
# the runner


class SegmentedRunner:
    """Compiled (or plain) segments of an EE/SWEET model or of each MM member, reused across calls.

    ``compile``: False (the segment logic as plain Python), True / "auto" (inductor; CUDA graphs on CUDA), or a
    dynamo backend name. ``warm_up(lengths)`` compiles whatever shapes those lengths need that it has not compiled
    yet and returns the seconds it took; ``run`` is ``sweet.infer.early_exit`` with the same result.
    """

    def __init__(self, model: EarlyExitModel | MultiModel, batch_size: int, compile: bool | str = "auto",
                 seq_multiple: int = 16, static_shapes: bool | None = None) -> None:
        """``static_shapes``: pad to buckets (default: when the segments compile to static shapes; the tests pad
        plain segments too)."""
        self.model = model.eval()
        self.device = model_device(model)
        self.settings = compile_settings(compile, self.device)
        self.compiled = self.settings is not None
        static = self.compiled and not self.settings["dynamic"] if static_shapes is None else static_shapes
        self.buckets = Buckets(max(1, batch_size), seq_multiple, static)
        if self.compiled:
            _raise_recompile_limit(64)
        self.fallback_reason: str | None = None
        self._warmed: set[tuple[int, int, bool]] = set()  # (batch, length, padded) shapes warm_up has compiled
        if isinstance(model, MultiModel):
            self.members: list[Any] = []
            for member in model.members:
                if isinstance(member.classifier, EarlyExitModel):
                    self.members.append(EncoderSegments(member.classifier, self.settings))
                    self.fallback_reason = self.fallback_reason or self.members[-1].fallback_reason
                else:
                    forward = functools.partial(_stock_member, member)
                    self.members.append(forward if self.settings is None else torch.compile(forward, **self.settings))
            self.segments = None
        else:
            self.segments = EncoderSegments(model, self.settings)
            self.fallback_reason = self.segments.fallback_reason

    # ------------------------------------------------------------------------------------------------------------
    def run(self, features: list[dict], rule: ExitRule, threshold: float, temperatures: np.ndarray,
            pad_token_id: int = 0) -> EarlyExitResult:
        batch_size = self.buckets.max_batch
        if self.fallback_reason is not None or rule.fires_device is None:
            return early_exit(self.model, features, rule, threshold, temperatures, batch_size, pad_token_id)
        n = len(features)
        predictions = np.full(n, -1, dtype=np.int64)
        exits = np.full(n, -1, dtype=np.int64)
        probabilities: np.ndarray | None = None
        temps = torch.as_tensor(np.asarray(temperatures, dtype=np.float64), device=self.device)
        thr = torch.tensor(float(threshold), dtype=torch.float64, device=self.device)
        with torch.inference_mode():
            for idx, batch in sorted_batches(features, batch_size, pad_token_id):
                batch.pop("labels", None)
                rows = self.buckets.batch(len(idx))
                batch = pad_to_bucket(to_device(batch, self.device), rows, self.buckets.seq(batch["input_ids"].shape[1]),
                                      pad_token_id)
                owner = np.full(rows, -1, dtype=np.int64)
                owner[: len(idx)] = idx
                for answered, k, pred, probs in self._batch(batch, owner, rule.name, temps, thr):
                    predictions[answered] = pred
                    exits[answered] = k
                    if probabilities is None:
                        probabilities = np.zeros((n, probs.shape[1]), dtype=np.float64)
                    probabilities[answered] = probs
        if probabilities is None:
            probabilities = np.zeros((0, 0), dtype=np.float64)
        return EarlyExitResult(predictions, exits, probabilities)

    def _batch(self, batch: dict[str, torch.Tensor], owner: np.ndarray, rule: str, temps: torch.Tensor,
               thr: torch.Tensor):
        """Yields (original indices, exit, predictions, probabilities) as rows leave; ``owner``: each bucket row's
        original index (-1: padding, or a row that has left)."""
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        num_exits = self.model.num_exits
        rows = len(owner)
        streak = torch.zeros(rows, dtype=torch.int64, device=self.device)
        previous = torch.zeros(rows, dtype=torch.int64, device=self.device)
        if self.segments is not None:
            hidden, inputs = self.segments.capture(batch)
            mask = batch.get("attention_mask")
        for k in range(num_exits):
            first, last = k == 0, k == num_exits - 1
            if self.segments is not None:
                span = slice(self.segments.bounds[k], self.segments.bounds[k + 1])
                hidden, packed, streak, previous = self.segments.function(
                    k, hidden, inputs[span], mask, rule, temps[k], thr, streak, previous, first, last)
            else:
                member = self.members[k]
                if isinstance(member, EncoderSegments):
                    member_hidden, member_inputs = member.capture(batch)
                    _, packed, streak, previous = member.function(
                        0, member_hidden, member_inputs, batch.get("attention_mask"), rule, temps[k], thr, streak,
                        previous, first, last)
                else:
                    packed, streak, previous = member(batch, rule, temps[k], thr, streak, previous, first, last)
            host = packed.cpu().numpy()  # the one device-to-host read of this exit boundary
            num_labels = host.shape[1] - 2
            leave = (host[:, num_labels] > 0.5) & (owner >= 0)
            if leave.any():
                yield owner[leave], k, host[leave, num_labels + 1].astype(np.int64), host[leave, :num_labels]
                owner = np.where(leave, -1, owner)
            alive = np.flatnonzero(owner >= 0)
            if len(alive) == 0 or last:
                return
            target = self.buckets.batch(len(alive))
            if target < len(owner):
                # Compact: the survivors (and copies of the last one as padding) into the smaller bucket.
                pick = np.concatenate([alive, np.full(target - len(alive), alive[-1])])
                keep = torch.as_tensor(pick, device=self.device)
                full = len(owner)
                owner = np.concatenate([owner[alive], np.full(target - len(alive), -1)])
                streak, previous = streak.index_select(0, keep), previous.index_select(0, keep)
                if self.segments is not None:
                    hidden = hidden.index_select(0, keep)
                    mask = None if mask is None else mask.index_select(0, keep)
                    inputs = self.segments.select_rows(inputs, keep, full)
                else:
                    batch = {key: value.index_select(0, keep) for key, value in batch.items()}
            else:
                # Same bucket: the rows that left stay in place, masked out by ``owner``. Carried-over outputs of
                # a CUDA-graph replay are consumed by the next segment of this batch before any other replay.
                pass

    # ------------------------------------------------------------------------------------------------------------
    def warm_up(self, lengths: list[int], rule: ExitRule, temperatures: np.ndarray, pad_token_id: int = 0) -> float:
        """Compile (capture) every segment for the shapes inputs of these ``lengths`` will meet, once per shape.

        Static shapes: every batch bucket at each length's bucket, padded. Dynamic shapes: one length stands for
        all; what dynamo compiles apart is batch size 1 against larger ones (it specialises size 1) and a batch
        with padding against one without (the model then builds no attention mask): batch 1 unpadded (how a
        batch of 1 comes), and with a batch size above 1 also the full batch with and without padding and one
        padded row (what is left of a batch when all but one row exited). Runs a never-exiting pass (threshold
        where the rule never fires) so that every segment is reached. Returns the seconds it took (0 when every
        shape was compiled before)."""
        if not self.compiled or self.fallback_reason is not None or rule.fires_device is None:
            return 0.0
        most = self.buckets.max_batch
        if self.buckets.static:
            shapes = {(rows, self.buckets.seq(max(1, x)), True) for x in lengths for rows in self.buckets.all_batches()}
        else:
            shapes = {(1, 0, False)} | ({(1, 0, True), (most, 0, True), (most, 0, False)} if most > 1 else set())
        shapes -= self._warmed
        if not shapes:
            return 0.0
        start = time.perf_counter()
        threshold = rule.never_fires if math.isfinite(rule.never_fires) else math.copysign(1e9, rule.never_fires)
        for rows, length, padded in sorted(shapes):
            # static: one token short of the bucket, so that the batch is padded as real ones are; dynamic: the
            # padded shapes end in a padding token
            real = max(2, (length or 16) - 1)
            ids = [pad_token_id + 1] * real
            mask = [1] * real
            if padded and not self.buckets.static:
                ids, mask = [*ids, pad_token_id], [*mask, 0]
            self.run([{"input_ids": ids, "attention_mask": mask}] * rows, rule, threshold, temperatures, pad_token_id)
        self._warmed |= shapes
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def compiled_early_exit(model: EarlyExitModel | MultiModel, features: list[dict], rule: ExitRule, threshold: float,
                        temperatures: np.ndarray, batch_size: int = 1, pad_token_id: int = 0,
                        compile: bool | str = "auto") -> EarlyExitResult:
    """``sweet.infer.early_exit`` through segments (see the module docstring); one-off: a new runner per call."""
    runner = SegmentedRunner(model, batch_size, compile)
    return runner.run(features, rule, threshold, temperatures, pad_token_id)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The inference dtype for ``precision`` (fp32 | bf16 | fp16); half precisions only on a GPU."""
    if precision not in PRECISIONS:
        raise UserError(f"precision: '{precision}' unknown; use one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and device.type != "cuda":
        raise UserError(f"precision: {precision} needs a CUDA device (this model is on {device.type}); use fp32")
    return PRECISIONS[precision]


