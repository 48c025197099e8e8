"""Exit rules: when does an example stop at exit k?

Each rule is a *causal* decision: whether exit k fires may depend on exits 1..k only. The same function decides
offline (on stored per-exit logits of the whole evaluation set, for every threshold at once) and online (in the
real early-exit runner, on the exits computed so far), which is what makes the two provably agree. The last exit
always answers. Adding a rule is one ``ExitRule`` entry in ``EXIT_RULES``: its numpy verdict and, for the compiled
runner (``sweet.compiled``, which decides on the device inside each segment), the same verdict on torch tensors.

The device versions use tensor methods only, so this module never imports torch: planning reads the registry's
names without loading it (tests/test_plan_boundary.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def calibrated_probs(exit_logits: np.ndarray, temperatures: np.ndarray | None = None) -> np.ndarray:
    """softmax(logits / T_k) per exit, in float64 so offline and online decisions see the same numbers."""
    logits = np.asarray(exit_logits, dtype=np.float64)
    if temperatures is not None:
        logits = logits / np.asarray(temperatures, dtype=np.float64).reshape(-1, *([1] * (logits.ndim - 1)))
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def _confidence(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    return probs.max(axis=-1) >= threshold


def _entropy(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    # DeeBERT exits when the entropy is low; normalised by log(C) so one threshold grid [0, 1] fits any task.
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -plogp.sum(axis=-1) / np.log(probs.shape[-1]) <= threshold


def _softmax_diff(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    # CALM (Schuster et al., 2022): exit when the top-1 calibrated probability beats the runner-up by at least the
    # threshold. Unlike max-probability it asks whether the exit could be confused between its two best classes,
    # which matters once there are more than two; with two classes it is 2·max − 1, a rescaled confidence.
    top2 = np.partition(probs, probs.shape[-1] - 2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0] >= threshold


def _patience(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    # PABEE: exit once the prediction has stayed the same for `threshold` consecutive exits after the first.
    preds = probs.argmax(axis=-1)
    streak = np.zeros(preds.shape, dtype=np.int64)
    for k in range(1, preds.shape[0]):
        streak[k] = np.where(preds[k] == preds[k - 1], streak[k - 1] + 1, 0)
    return streak >= threshold


def _learned(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    if lte is None:
        raise ValueError("the learned rule needs learned-to-exit scores (train with learned_exit)")
    return np.asarray(lte, dtype=np.float64) >= threshold


def _patience_last(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    # _patience's streak at the last exit only: the same integer recurrence, without the [K, N] table.
    preds = probs.argmax(axis=-1)
    streak = np.zeros(preds.shape[1:], dtype=np.int64)
    for k in range(1, preds.shape[0]):
        streak = np.where(preds[k] == preds[k - 1], streak + 1, 0)
    return streak >= threshold


LastFires = Callable[[np.ndarray, np.ndarray | None, float], np.ndarray]

# ----------------------------------------------------------------------------------------------------------------
# The same rules on the device, one exit at a time (sweet.compiled runs them inside each compiled segment):
# (probs [B, C] float64, lte [B] float64 | None, threshold 0-d float64, streak [B] int64, previous prediction [B]
# int64, first exit?) → (fires [B] bool, streak). The streak and previous prediction are the one piece of state a
# rule carries across exits (patience's); the others hand the streak on untouched. Same comparisons in float64 as
# the numpy rules: tests/test_exits.py checks each against its numpy twin, exit by exit.
DeviceFires = Callable[[Any, Any, Any, Any, Any, bool], tuple[Any, Any]]


def _confidence_device(probs, lte, threshold, streak, previous, first):
    return probs.amax(dim=-1) >= threshold, streak


def _entropy_device(probs, lte, threshold, streak, previous, first):
    plogp = (probs * probs.log()).where(probs > 0, 0.0)
    return -plogp.sum(dim=-1) / math.log(probs.shape[-1]) <= threshold, streak


def _softmax_diff_device(probs, lte, threshold, streak, previous, first):
    top2 = probs.topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1] >= threshold, streak


def _patience_device(probs, lte, threshold, streak, previous, first):
    streak = streak.new_zeros(streak.shape) if first else (streak + 1).where(probs.argmax(dim=-1) == previous, 0)
    return streak >= threshold, streak


def _learned_device(probs, lte, threshold, streak, previous, first):
    if lte is None:
        raise ValueError("the learned rule needs learned-to-exit scores (train with learned_exit)")
    return lte >= threshold, streak


def _per_exit(fires: Callable[[np.ndarray, np.ndarray | None, float], np.ndarray]) -> LastFires:
    """The last-exit decision of a rule whose verdict at exit k reads exit k alone: ``fires`` on that exit only."""

    def last(probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
        return fires(probs[-1:], None if lte is None else lte[-1:], threshold)[0]

    return last


@dataclass(frozen=True)
class ExitRule:
    name: str
    label: str  # how figures and captions name the rule
    fires: Callable[[np.ndarray, np.ndarray | None, float], np.ndarray]  # probs [K,N,C], lte [K,N] → bool [K,N]
    thresholds: Callable[[int, int, int], np.ndarray]  # (num_labels, num_exits, n) → grid
    needs_lte: bool = False
    # A threshold at which the rule never fires (every example reaches the last exit): thresholds nearer to it
    # are the more conservative ones, which is the order risk control tests them in (sweet.risk).
    never_fires: float = math.inf
    # Optional: ``fires(probs, lte, threshold)[-1]`` computed without the verdicts at the earlier exits, which the
    # online runner (sweet.infer) has already acted on; it asks this at every exit of every batch, so at batch 1
    # the earlier exits' work would be most of a decision's cost. Must equal ``fires(...)[-1]`` exactly
    # (tests/test_exits.py checks every rule on random inputs).
    fires_last: LastFires | None = None
    # Optional: the verdict on the device (``DeviceFires`` above), for the compiled runner. A rule without one runs
    # on the hook runner (sweet.infer) there, and measured latency skips it.
    fires_device: DeviceFires | None = None

    def fires_at_last(self, probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
        """Whether the rule fires at the last of the exits given (probs [K, N, C], lte [K, N]): bool [N]."""
        if self.fires_last is None:
            return self.fires(probs, lte, threshold)[-1]
        return self.fires_last(probs, lte, threshold)


def _prob_grid(num_labels: int, num_exits: int, n: int) -> np.ndarray:
    # The reference's grid: linspace(1/num_labels, 1, n).
    return np.linspace(1.0 / num_labels, 1.0, n)


def _unit_grid(num_labels: int, num_exits: int, n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


def _patience_grid(num_labels: int, num_exits: int, n: int) -> np.ndarray:
    return np.arange(num_exits, dtype=np.float64)


EXIT_RULES: dict[str, ExitRule] = {
    "confidence": ExitRule("confidence", "confidence", _confidence, _prob_grid, fires_last=_per_exit(_confidence),
                           fires_device=_confidence_device),
    # exits when entropy is LOW
    "entropy": ExitRule("entropy", "entropy", _entropy, _unit_grid, never_fires=-math.inf,
                        fires_last=_per_exit(_entropy), fires_device=_entropy_device),
    "patience": ExitRule("patience", "patience", _patience, _patience_grid, fires_last=_patience_last,
                         fires_device=_patience_device),
    "learned": ExitRule("learned", "learned-to-exit", _learned, _unit_grid, needs_lte=True,
                        fires_last=_per_exit(_learned), fires_device=_learned_device),
    # top-1 − top-2 lies in [0, 1] for any number of classes
    "softmax_diff": ExitRule("softmax_diff", "softmax difference (CALM)", _softmax_diff, _unit_grid,
                             fires_last=_per_exit(_softmax_diff), fires_device=_softmax_diff_device),
}


def first_firing_exit(fires: np.ndarray) -> np.ndarray:
    """Index of the first exit that fires for each example; the last exit answers when none does."""
    fires = np.array(fires, dtype=bool, copy=True)
    fires[-1] = True
    return fires.argmax(axis=0)


def simulate(rule: ExitRule, probs: np.ndarray, lte: np.ndarray | None, threshold: float) -> np.ndarray:
    """Exit index per example under ``rule`` at ``threshold``, from every exit's probabilities."""
    return first_firing_exit(rule.fires(probs, lte, threshold))


def oracle_exits(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Earliest exit whose prediction is correct; examples no exit gets right take the cheapest (first) exit."""
    correct = probs.argmax(axis=-1) == np.asarray(labels)[None, :]
    return np.where(correct.any(axis=0), correct.argmax(axis=0), 0)
