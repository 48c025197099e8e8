"""A word-level BERT tokenizer built offline from a word list (the synthetic task needs no download).

The vocabulary is a plain BERT ``vocab.txt``: the five special tokens first ([PAD] = 0, as BERT configs expect),
then every ASCII punctuation mark and digit (so any text splits into known pieces around punctuation), then the
words. With no sub-word pieces in the vocabulary, an unknown word becomes one [UNK].
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path

from transformers import BertTokenizerFast, PreTrainedTokenizerBase

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# BERT's default position table; longer inputs are truncated by the callers to max_length anyway.
MODEL_MAX_LENGTH = 512


def build_word_tokenizer(vocab: Iterable[str], out_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Write a lower-casing ``BertTokenizerFast`` for ``vocab`` to ``out_dir`` and return it.

    ``AutoTokenizer.from_pretrained(out_dir)`` then loads it with no network access. The token order is fixed
    (specials, punctuation, digits, words in the given order, duplicates dropped), so the same word list gives
    byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens: list[str] = []
    seen: set[str] = set()
    for token in (*SPECIAL_TOKENS, *string.punctuation, *string.digits, *(w.strip().lower() for w in vocab)):
        if token and token not in seen:
            if any(c.isspace() for c in token):
                raise ValueError(f"vocabulary entry {token!r} contains whitespace; give single words")
            seen.add(token)
            tokens.append(token)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(
        vocab=str(vocab_file), do_lower_case=True, strip_accents=None, model_max_length=MODEL_MAX_LENGTH
    )
    tokenizer.save_pretrained(str(out))
    return tokenizer
