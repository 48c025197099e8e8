"""Training, saving and evaluating with a pooling and the newer backbones, end to end through `sweet.train.train`.

An inline ModernBERT with the offline synthetic tokenizer (as a config's inline model gets it from
`init-backbone`), and a tiny Qwen2 with a byte-level Qwen2 tokenizer (transformers loads Qwen2's own tokenizer
class for a qwen2 folder, so an inline Qwen2 with the word tokenizer is refused), a few steps each: the run's
pooling reaches the saved model, the training record and the FLOPs shape stored with the logits; the decoder's
MM member is the stock classifier with the tokenizer's pad id; the audit in SWEET's record is empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModel, Qwen2Tokenizer

from sweet.backbones import init_backbone
from sweet.errors import UserError
from sweet.evaluate import evaluate, load_model
from sweet.multimodel import MultiModel, write_multimodel_config
from sweet.plan.settings import TrainSpec
from sweet.synthetic import make_task
from sweet.train import train

SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 48,
         "max_position_embeddings": 64, "tokenizer": "synthetic", "seed": 0}
EXTRA = {"modernbert": {"local_attention": 4, "global_attn_every_n_layers": 2}, "qwen2": {"num_key_value_heads": 2}}
SPEC = TrainSpec(learning_rate=1e-3, epochs=1, batch_size=8, max_length=32, save_steps=100)


@pytest.fixture(scope="module")
def rows() -> tuple[list[dict], list[dict]]:
    pool, evaluation = make_task(train_size=40, eval_size=12, seed=0)
    return [{**r, "id": i} for i, r in enumerate(pool)], [{**r, "id": i} for i, r in enumerate(evaluation)]


def qwen2_folder(folder: Path, pad_token_id: int | None = 0) -> Path:
    """A tiny random Qwen2 with a byte-level Qwen2 tokenizer (one token per byte, no merges; pad = id 0)."""
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}}
    Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    sizes = {k: v for k, v in SIZES.items() if k not in ("tokenizer", "seed")}
    config = AutoConfig.for_model("qwen2", vocab_size=len(vocab), pad_token_id=pad_token_id, eos_token_id=0,
                                  **sizes, **EXTRA["qwen2"])
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def test_inline_decoder_with_the_word_tokenizer_is_refused(tmp_path):
    with pytest.raises(UserError, match="backbone.tokenizer: .*'qwen2'"):
        init_backbone({"model_type": "qwen2", **SIZES, **EXTRA["qwen2"]}, tmp_path / "backbone")
    assert not (tmp_path / "backbone").exists()


@pytest.mark.parametrize(("model_type", "method", "pooling"), [("modernbert", "sweet", "mean"), ("qwen2", "ee", None)])
def test_train_save_evaluate(model_type, method, pooling, rows, tmp_path):
    torch.set_num_threads(1)
    if model_type == "qwen2":
        qwen2_folder(tmp_path / "backbone")
    else:
        init_backbone({"model_type": model_type, **SIZES, **EXTRA[model_type]}, tmp_path / "backbone")
    pool, evaluation = rows
    record = train(pool, 2, str(tmp_path / "backbone"), [1, 3], method, 0, SPEC, tmp_path / "model",
                   tmp_path / "work", pooling=pooling)
    expected = pooling or "last"
    assert record["pooling"] == expected and record["global_steps"] == 5
    if method == "sweet":
        assert record["separation_audit"]["shared"] == {}
    saved = json.loads((tmp_path / "model" / "sweet_config.json").read_text())
    assert saved["pooling"] == expected
    evaluate(tmp_path / "model", evaluation, None, tmp_path / "logits.npz", batch_size=5)
    with np.load(tmp_path / "logits.npz") as data:
        shape = json.loads(str(data["flops_shape"]))
        assert data["exit_logits"].shape == (2, 12, 2)
    assert shape["pooling"] == expected and shape["gated_mlp"] and shape["head_norm"]
    assert shape["causal"] == (model_type == "qwen2")


def test_decoder_mm_member_is_the_stock_classifier_with_the_tokenizers_pad_id(rows, tmp_path):
    qwen2_folder(tmp_path / "backbone", pad_token_id=None)  # as released Qwen2 checkpoints: no pad id in the config
    pool, _ = rows
    record = train(pool, 2, str(tmp_path / "backbone"), [1, 3], "mm", 0, SPEC, tmp_path / "member_1",
                   tmp_path / "work", member=1)
    assert record["pooling"] == "last"
    write_multimodel_config(tmp_path, ["member_1"], [1])
    mm = load_model(tmp_path)
    assert isinstance(mm, MultiModel)
    classifier = mm.members[0].classifier
    assert type(classifier).__name__ == "Qwen2ForSequenceClassification"
    assert classifier.config.pad_token_id == 0 and classifier.config.num_hidden_layers == 1
