"""Per-exit temperature scaling (Guo et al., 2017), fitted on a calibration split.

The confidence exit rule compares softmax(logits / T_k) with a threshold, so miscalibrated exits exit too early or
too late. T_k minimises the NLL of exit k on the calibration split (LBFGS on log T, which keeps T positive). The
split is disjoint from the training subset and from the evaluation split; the reference fitted on the evaluation
set itself, which `sweet` allows only as an explicit, warned option.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``logits`` [N, C] on ``labels`` [N]."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    x = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(F.cross_entropy(x, torch.as_tensor(labels, dtype=torch.long)).item())


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b |B_b|/N · |accuracy_b − confidence_b|."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=-1).numpy()
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def calibrate_exits(exit_logits: np.ndarray, labels: np.ndarray) -> dict:
    """Temperatures and before/after NLL and ECE for every exit of ``exit_logits`` [E, N, C]."""
    exits = []
    for k, logits in enumerate(exit_logits):
        t = fit_temperature(logits, labels)
        exits.append(
            {
                "exit": k + 1,
                "temperature": t,
                "nll_before": nll(logits, labels),
                "nll_after": nll(logits, labels, t),
                "ece_before": expected_calibration_error(logits, labels),
                "ece_after": expected_calibration_error(logits, labels, t),
            }
        )
    return {"temperatures": [e["temperature"] for e in exits], "exits": exits, "n_examples": int(len(labels))}
