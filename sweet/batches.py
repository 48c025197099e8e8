"""Tokenised examples and length-sorted batches for the passes that do not train (calibrate, evaluate, infer).

Sorting by length before batching means a batch pads only to its own longest example, so one batched pass of
every exit does little wasted work; results are put back in the original order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

FEATURES = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a trained model (EE: ``backbone/``; MM: the first member) or a backbone folder."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "backbone", model_dir / "member_1", model_dir):
        if (candidate / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(candidate))
    return AutoTokenizer.from_pretrained(str(model_dir))


def encode(rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None) -> list[dict]:
    """Token ids per example (no padding), truncated to ``max_length`` (default: the tokenizer's saved limit)."""
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and rows[0].get("text_pair") is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length or tokenizer.model_max_length)
    keys = [k for k in FEATURES if k in enc]
    features = []
    for i, row in enumerate(rows):
        item = {k: enc[k][i] for k in keys}
        if "label" in row:
            item["labels"] = int(row["label"])
        features.append(item)
    return features


def pad(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in FEATURES:
        if key in features[0]:
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def lengths(features: Sequence[dict]) -> np.ndarray:
    return np.array([len(f["input_ids"]) for f in features], dtype=np.int64)


def sorted_batches(features: Sequence[dict], batch_size: int, pad_token_id: int) -> Iterator[tuple[np.ndarray, dict]]:
    """(original indices, padded batch) in order of decreasing length; stable, so the order is deterministic."""
    order = np.argsort(-lengths(features), kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, pad([features[i] for i in idx], pad_token_id)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
