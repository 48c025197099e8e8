"""Speed–accuracy curves and per-exit scores, exactly, from a run's stored per-exit logits.

For each exit rule and threshold the exit taken by every example follows from the logits alone
(``sweet.exits.simulate``), so the whole curve costs one pass of the model plus array arithmetic; the reference
re-ran the evaluation set at batch size 1 once per threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sweet.cost import EncoderShape, flops_fraction, layer_fraction
from sweet.exits import EXIT_RULES, calibrated_probs, oracle_exits, simulate

MetricFn = Callable[[list[str], np.ndarray, np.ndarray], dict[str, float]]


def load_logits(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def threshold_grid(rule_name: str, num_labels: int, num_exits: int, n: int, dense: int) -> tuple[np.ndarray, np.ndarray]:
    """The union of the reference's ``n``-point grid and a ``dense`` grid, and which points are the reference's."""
    rule = EXIT_RULES[rule_name]
    reference = rule.thresholds(num_labels, num_exits, n)
    dense_grid = rule.thresholds(num_labels, num_exits, dense)
    # linspace puts e.g. 0.6 of an 11-point grid at 0.6000000000000001 in a 101-point one: snap dense points
    # that coincide with a reference point onto it, so each reference threshold appears exactly once.
    nearest = np.abs(dense_grid[:, None] - reference[None, :]).argmin(axis=1)
    coincide = np.isclose(dense_grid, reference[nearest], rtol=0, atol=1e-9)
    dense_grid = np.where(coincide, reference[nearest], dense_grid)
    grid = np.unique(np.concatenate([reference, dense_grid]))
    is_reference = np.isin(grid, reference)
    return grid, is_reference


def outcome(
    logits: dict[str, np.ndarray],
    probs: np.ndarray,
    exit_index: np.ndarray,
    metric_names: list[str],
    primary: str,
    metrics: MetricFn,
) -> dict:
    """What answering example i at exit ``exit_index[i]`` scores and costs: the primary score, the other metrics,
    layer fraction, speedup, FLOPs fraction and each exit's share (one curve point; an exported policy's numbers)."""
    labels = logits["labels"]
    num_exits = probs.shape[0]
    preds = probs[exit_index, np.arange(len(labels))].argmax(axis=-1)
    scores = metrics(metric_names, preds, labels)
    exit_layers = logits["exit_layers"]
    fraction = layer_fraction(exit_index, logits["layer_costs"], int(exit_layers[-1]))
    counts = np.bincount(exit_index, minlength=num_exits) / len(labels)
    return {
        "score": scores[primary],
        "metric": primary,
        "speedup": 1.0 / fraction,
        "layer_fraction": fraction,
        "flops_fraction": flops_fraction(
            exit_index, logits["lengths"], exit_layers, str(logits["method"]), EncoderShape.from_logits(logits)
        ),
        **{f"{name}": value for name, value in scores.items() if name != primary},
        "exit_share": " ".join(f"{c:.4f}" for c in counts),
    }


def curve_rows(
    logits: dict[str, np.ndarray], metric_names: list[str], primary: str, metrics: MetricFn, n: int = 11, dense: int = 101
) -> pd.DataFrame:
    """One row per exit rule × threshold (plus the oracle): score, layer fraction, speedup, FLOPs fraction."""
    probs = calibrated_probs(logits["exit_logits"], logits["temperatures"])
    labels = logits["labels"]
    lte = logits.get("lte_scores")
    num_exits, _, num_labels = probs.shape

    def row(strategy: str, threshold: float, reference: bool, exit_index: np.ndarray) -> dict:
        point = outcome(logits, probs, exit_index, metric_names, primary, metrics)
        return {"strategy": strategy, "threshold": float(threshold), "reference_threshold": int(reference), **point}

    rows = []
    for name, rule in EXIT_RULES.items():
        if rule.needs_lte and lte is None:
            continue
        grid, is_reference = threshold_grid(name, num_labels, num_exits, n, dense)
        for threshold, reference in zip(grid, is_reference):
            rows.append(row(name, threshold, reference, simulate(rule, probs, lte, threshold)))
    rows.append(row("oracle", float("nan"), False, oracle_exits(probs, labels)))
    return pd.DataFrame(rows)


def exit_rows(logits: dict[str, np.ndarray], metric_names: list[str], primary: str, metrics: MetricFn) -> pd.DataFrame:
    """Each exit's own score (every example answered by that exit)."""
    labels = logits["labels"]
    rows = []
    for k, exit_logits in enumerate(logits["exit_logits"]):
        scores = metrics(metric_names, exit_logits.argmax(axis=-1), labels)
        rows.append(
            {
                "exit": k + 1,
                "exit_layer": int(logits["exit_layers"][k]),
                "score": scores[primary],
                "metric": primary,
                **{name: value for name, value in scores.items() if name != primary},
                "temperature": float(logits["temperatures"][k]),
            }
        )
    return pd.DataFrame(rows)


def with_meta(frame: pd.DataFrame, meta: dict[str, str | int]) -> pd.DataFrame:
    """Prefix the run's identity columns (task, model, budget, method, seed)."""
    front = pd.DataFrame({k: [v] * len(frame) for k, v in meta.items()})
    return pd.concat([front, frame.reset_index(drop=True)], axis=1)
