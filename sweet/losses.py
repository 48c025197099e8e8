"""The training losses the methods combine their exits' losses with (``sweet.methods.Stage.loss`` names one).

Each takes the per-exit losses ℓ_1..ℓ_K the model returns (cross-entropy, plus the learned-to-exit term when that
is on), the per-exit logits, the labels, the optimizer step and the method's options, and returns the scalar the
Trainer minimises. Index K is the last exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def total(exit_losses: torch.Tensor, **_: Any) -> torch.Tensor:
    """EE, SWEET, GE, partial separation: Σ_k ℓ_k, the reference's unweighted sum."""
    return exit_losses.sum()


def depth_weighted(exit_losses: torch.Tensor, exit_layers: list[int], **_: Any) -> torch.Tensor:
    """PABEE: Σ_k w_k ℓ_k / Σ_k w_k with w_k the exit's layer (PABEE has an exit after every layer i, weight i)."""
    weights = torch.tensor(exit_layers, dtype=exit_losses.dtype, device=exit_losses.device)
    return (weights * exit_losses).sum() / weights.sum()


def last(exit_losses: torch.Tensor, **_: Any) -> torch.Tensor:
    """DeeBERT stage 1: the last exit's loss alone (the backbone fine-tuned as a plain classifier)."""
    return exit_losses[-1]


def early(exit_losses: torch.Tensor, **_: Any) -> torch.Tensor:
    """DeeBERT stage 2: Σ_{k<K} ℓ_k (the backbone and the last exit are frozen by the stage)."""
    return exit_losses[:-1].sum()


def alternating(exit_losses: torch.Tensor, step: int, **_: Any) -> torch.Tensor:
    """BERxiT: on even optimizer steps ℓ_K, on odd ones ℓ_K + Σ_{k<K} ℓ_k."""
    return exit_losses[-1] if step % 2 == 0 else exit_losses.sum()


def self_distillation(
    exit_losses: torch.Tensor, exit_logits: torch.Tensor, gamma: float, temperature: float, **_: Any
) -> torch.Tensor:
    """ℓ_K + Σ_{k<K} [(1 − γ) ℓ_k + γ T² KL(softmax(z_K/T) ‖ softmax(z_k/T))], the teacher z_K detached.

    T² keeps the soft term's gradient on the scale of the hard one's as T changes (Hinton et al., 2015). The KL is
    averaged over the batch, as the cross-entropy is."""
    if exit_losses.shape[0] == 1:
        return exit_losses[0]
    teacher = F.log_softmax(exit_logits[-1].detach().float() / temperature, dim=-1)
    students = F.log_softmax(exit_logits[:-1].float() / temperature, dim=-1)
    # KL(p ‖ q) = Σ p (log p − log q), per example; [K-1, batch] → mean over the batch
    kl = (teacher.exp() * (teacher - students)).sum(-1).mean(-1)
    early_terms = (1.0 - gamma) * exit_losses[:-1] + gamma * temperature**2 * kl
    return exit_losses[-1] + early_terms.sum()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sum": total,
    "depth-weighted": depth_weighted,
    "last": last,
    "early": early,
    "alternating": alternating,
    "self-distillation": self_distillation,
}


def method_loss(
    name: str,
    exit_losses: torch.Tensor,
    exit_logits: torch.Tensor,
    labels: torch.Tensor,
    step: int,
    exit_layers: list[int],
    options: dict[str, float],
) -> torch.Tensor:
    """The scalar a stage whose loss is ``name`` minimises."""
    return LOSSES[name](exit_losses=exit_losses, exit_logits=exit_logits, labels=labels, step=step,
                        exit_layers=exit_layers, **options)
