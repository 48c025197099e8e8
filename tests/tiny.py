"""Tiny randomly initialised backbones, built offline, for the model / inference tests.

Every supported architecture gets a 4-layer, hidden-32 backbone saved as a stock Hugging Face folder (config +
safetensors, no tokenizer), the way a downloaded checkpoint would look. DeBERTa(-v2) use relative attention with
both c2p and p2c terms and (v2) a few log-buckets and the v3-style LayerNorm on the relative embeddings, so the
parameters shared by every layer really exist. ``deberta-v2-conv`` is DeBERTa-v2 with the convolution the
encoder applies to layer 1's output (``conv_kernel_size`` > 0, as in deberta-v2-xlarge).

ModernBERT alternates global and sliding-window attention every other layer with a window (±2 tokens) shorter
than the test sequences, so both masks matter; it is saved as a masked-LM checkpoint, as ModernBERT ships, so
the pretrained prediction head that its stock classifier (and every exit) starts from exists. Qwen2 is a causal
decoder with grouped-query attention (4 query heads, 2 key/value heads) and its key/value cache on by default,
as in released checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
# Tiny models: one thread is fastest and does not fight other processes for the cores.
torch.set_num_threads(1)

ARCHITECTURES = ("bert", "roberta", "electra", "deberta", "deberta-v2", "deberta-v2-conv", "modernbert", "qwen2")
DECODERS = ("qwen2",)
VOCAB = 100
DEPTH = 4
HIDDEN = 32
INTERMEDIATE = 64

_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": DEPTH,
    "num_attention_heads": 4,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    # 10x the usual init: [CLS] then depends visibly on the rest of the input, so random exits disagree
    "initializer_range": 0.2,
}

_EXTRA: dict[str, dict] = {
    "bert": {},
    "roberta": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 1},
    "electra": {"embedding_size": HIDDEN},
    "deberta": {
        "relative_attention": True,
        "pos_att_type": ["c2p", "p2c"],
        "max_relative_positions": 16,
        "type_vocab_size": 2,
    },
    "deberta-v2": {
        "relative_attention": True,
        "pos_att_type": ["c2p", "p2c"],
        "position_buckets": 8,
        "max_relative_positions": 16,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "type_vocab_size": 0,
    },
}


_EXTRA["deberta-v2-conv"] = {**_EXTRA["deberta-v2"], "conv_kernel_size": 3}
_EXTRA["modernbert"] = {
    "local_attention": 4,  # sliding layers see ±2 tokens
    "global_attn_every_n_layers": 2,  # layer types: global, sliding, global, sliding
    "bos_token_id": 3, "cls_token_id": 3, "eos_token_id": 2, "sep_token_id": 2,
}
_EXTRA["qwen2"] = {"num_key_value_heads": 2, "bos_token_id": None, "eos_token_id": 2}


def hf_model_type(name: str) -> str:
    """The transformers ``model_type`` of a tiny variant name."""
    return "deberta-v2" if name == "deberta-v2-conv" else name


def pad_id(model_type: str) -> int:
    return {**_COMMON, **_EXTRA[model_type]}["pad_token_id"]


def build_backbone(model_type: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random backbone (a name of ``ARCHITECTURES``) to ``folder`` (stock HF layout); return it."""
    config = AutoConfig.for_model(hf_model_type(model_type), **{**_COMMON, **_EXTRA[model_type]})
    torch.manual_seed(seed)
    stock = AutoModelForMaskedLM if model_type == "modernbert" else AutoModel
    stock.from_config(config).save_pretrained(folder)
    return Path(folder)


_CACHE: dict[str, Path] = {}


def backbone(model_type: str, tmp_path_factory) -> Path:
    """One backbone folder per architecture per test session (pass pytest's ``tmp_path_factory``)."""
    if model_type not in _CACHE or not (_CACHE[model_type] / "config.json").is_file():
        _CACHE[model_type] = build_backbone(model_type, tmp_path_factory.mktemp(f"tiny-{model_type}"))
    return _CACHE[model_type]


def gpt2_folder(folder: str | Path) -> Path:
    """A config-only folder of an unsupported (decoder) architecture."""
    config = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4)
    config.save_pretrained(folder)
    return Path(folder)


def random_batch(
    n: int, seq_len: int, seed: int = 0, num_labels: int = 2, pad: int = 0, min_len: int = 3
) -> dict[str, torch.Tensor]:
    """Random ids with varied lengths, right-padded; first id of every row a fixed "[CLS]"-like token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, seq_len + 1, (n,), generator=g)
    lengths[0] = seq_len
    ids = torch.randint(5, VOCAB, (n, seq_len), generator=g)
    ids[:, 0] = 3
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def random_features(n: int, max_len: int, seed: int = 0, min_len: int = 2) -> list[dict]:
    """Unpadded examples of varied lengths, as ``sweet.batches.encode`` returns them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = [3] + torch.randint(5, VOCAB, (length - 1,), generator=g).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length})
    return out
