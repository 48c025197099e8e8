"""An offline, deterministic sentiment task with graded difficulty, so that early exits have something to do.

Each example is a short movie-review sentence with a binary label (0 negative, 1 positive) and a ``difficulty``
level. The levels are built so that the label needs progressively more composition to read off:

0 ``plain``            one clause, one polarity adjective:            "the film was really superb."
1 ``negation``         the predicate is negated (flips the label):    "the plot was not good."
2 ``contrast``         two clauses of opposite polarity; the *last*   "the cast was dull, but the ending was great."
                       clause decides (after but / yet / however, or the main clause after although / while)
3 ``double_negation``  a negated framing ("i would not say that ...") around a clause that may itself be
                       negated; every negator flips the label once:    "it is not true that the film was not good."
                       (positive: two negators cancel)
4 ``mixed``            contrast whose clauses carry negations and negated framings: the last clause decides,
                       read with the parity rule of level 3.

Distractors (an opening phrase, a neutral adjective on the subject, an intensifier) appear at every level and
carry no label information. Within each level the surface adjective of the deciding clause is independent of
the label (levels 1, 3, 4), and levels 2 and 4 always contain both polarities, so neither a bag of words nor a
"last adjective" rule solves the harder levels.

Generation uses ``numpy.random.default_rng`` only (PCG64, identical on every platform). The training pool and the
evaluation split come from separate streams, and a sentence belongs to exactly one split by a stable hash of its
text, so the evaluation split is the same whatever ``train_size`` is and never repeats a training sentence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

DIFFICULTY_NAMES: tuple[str, ...] = ("plain", "negation", "contrast", "double_negation", "mixed")
# Easy inputs dominate, as in real data; this is what lets an early exit save work without losing accuracy.
# Plain examples must clearly outnumber negated ones: negation reverses the word-label correlation, and a model
# trained from scratch only gets off the chance plateau through that marginal signal (with 0.3 plain / 0.2
# negation a 4-layer, 64-wide BERT stayed at chance for 10 epochs of 500 examples; with these weights it reaches
# ~100% on levels 0-2 and ~60% on levels 3-4 after 4-6 epochs of 1000 examples at lr 1e-3).
DEFAULT_WEIGHTS: tuple[float, ...] = (0.45, 0.15, 0.2, 0.1, 0.1)
LABEL_NAMES: tuple[str, str] = ("negative", "positive")

# Small word lists on purpose: a tiny model sees each polarity word many times in a few hundred examples.
_SUBJECTS = ("movie", "film", "plot", "acting", "script", "ending", "soundtrack", "cast", "dialogue", "story")
_VERBS = ("was", "is", "felt", "seemed")
_POSITIVE = ("good", "great", "superb", "wonderful", "brilliant", "charming", "delightful", "excellent")
_NEGATIVE = ("bad", "awful", "dull", "boring", "terrible", "bland", "tedious", "clumsy")
_INTENSIFIERS = ("very", "really", "truly", "quite", "extremely", "rather")
_NEUTRAL = ("long", "new", "old", "french", "short", "recent", "animated", "second")
_OPENERS = ("honestly ,", "overall ,", "i think", "in my opinion ,", "to be fair ,", "frankly ,")
# A negated predicate holds exactly one negator ("did not seem", not "seemed not").
_NEGATED_VERBS = ("was not", "is not", "was never", "did not seem", "did not feel", "never seemed", "never felt")
# Each framing holds exactly one negator, so the parity rule ("each negator flips once") stays exact.
_NEGATED_FRAMES = (
    "it is not true that",
    "i would not say that",
    "nobody could claim that",
    "no one would say that",
    "i never felt that",
)
# (before first clause, between clauses): the clause after the connective / the main clause is the last one.
_CONTRASTS = (("", ", but"), ("", ", yet"), ("", "; however ,"), ("although", ","), ("while", ","))

_EVAL_BUCKETS = 5  # one sentence in five may go to the evaluation split, decided by a hash of its text
_MAX_TRIES = 10_000


def vocabulary() -> list[str]:
    """Every lower-case word and punctuation mark the generator can emit (sorted, unique)."""
    words: set[str] = set()
    for group in (_SUBJECTS, _VERBS, _POSITIVE, _NEGATIVE, _INTENSIFIERS, _NEUTRAL, _OPENERS, _NEGATED_VERBS,
                  _NEGATED_FRAMES, [" ".join(pair) for pair in _CONTRASTS], ["the"]):
        for phrase in group:
            words.update(phrase.split())
    words.update(".,;")
    return sorted(w for w in words if w)


def generate(
    n: int, seed: int, split: str = "train", weights: Sequence[float] = DEFAULT_WEIGHTS
) -> list[dict]:
    """``n`` examples ``{"text", "label", "difficulty"}`` of one split ("train" or "eval"), deterministic in ``seed``."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    p = np.asarray(weights, dtype=np.float64)
    if p.shape != (len(DIFFICULTY_NAMES),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"weights must be {len(DIFFICULTY_NAMES)} non-negative numbers with a positive sum")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    levels = rng.choice(len(DIFFICULTY_NAMES), size=n, p=p / p.sum())
    # Exactly balanced labels overall (±1), shuffled independently of the levels.
    labels = rng.permutation(np.arange(n) % 2)
    seen: set[str] = set()
    examples = []
    for level, label in zip(levels.tolist(), labels.tolist()):
        for _ in range(_MAX_TRIES):
            text = _SENTENCE[level](rng, label)
            if text not in seen and _is_eval(text) == (split == "eval"):
                break
        else:  # pragma: no cover - the sentence space is far larger than any sensible size
            raise ValueError(f"could not draw {n} distinct {split} sentences; ask for fewer examples")
        seen.add(text)
        examples.append({"text": text, "label": label, "difficulty": level})
    return examples


def make_task(train_size: int = 4000, eval_size: int = 1000, seed: int = 0,
              weights: Sequence[float] = DEFAULT_WEIGHTS) -> tuple[list[dict], list[dict]]:
    """(training pool, evaluation split), disjoint by construction."""
    return generate(train_size, seed, "train", weights), generate(eval_size, seed, "eval", weights)


# ----------------------------------------------------------------------------------------------------------------
def _is_eval(text: str) -> bool:
    # blake2b, not hash(): Python salts str hashes per process, which would break reproducibility.
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _EVAL_BUCKETS == 0


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _clause(rng: np.random.Generator, positive: bool, negated: bool, framed: bool) -> list[str]:
    """One clause whose *surface adjective* has polarity ``positive``; negations are added as asked."""
    words: list[str] = []
    if framed:
        words += _pick(rng, _NEGATED_FRAMES).split()
    words.append("the")
    if _chance(rng, 0.3):
        words.append(_pick(rng, _NEUTRAL))
    words.append(_pick(rng, _SUBJECTS))
    words += _pick(rng, _NEGATED_VERBS if negated else _VERBS).split()
    if _chance(rng, 0.4):
        words.append(_pick(rng, _INTENSIFIERS))
    words.append(_pick(rng, _POSITIVE if positive else _NEGATIVE))
    return words


def _clause_with_value(rng: np.random.Generator, value: int, negated: bool, framed: bool) -> list[str]:
    # Parity rule: each negator flips the polarity once, so pick the adjective that yields ``value``.
    flips = int(negated) + int(framed)
    return _clause(rng, positive=bool(value ^ (flips % 2)), negated=negated, framed=framed)


def _finish(rng: np.random.Generator, words: list[str]) -> str:
    if _chance(rng, 0.3):
        words = _pick(rng, _OPENERS).split() + words
    text = " ".join(words) + "."
    # Written like ordinary text ("dull, but"); the tokenizer splits punctuation off again.
    return text.replace(" ,", ",").replace(" ;", ";")


def _plain(rng: np.random.Generator, label: int) -> str:
    return _finish(rng, _clause_with_value(rng, label, negated=False, framed=False))


def _negation(rng: np.random.Generator, label: int) -> str:
    return _finish(rng, _clause_with_value(rng, label, negated=True, framed=False))


def _contrast_of(rng: np.random.Generator, first: list[str], last: list[str]) -> str:
    before, between = _CONTRASTS[int(rng.integers(len(_CONTRASTS)))]
    words = ([before] if before else []) + first + between.split() + last
    return _finish(rng, words)


def _contrast(rng: np.random.Generator, label: int) -> str:
    first = _clause_with_value(rng, 1 - label, negated=False, framed=False)
    last = _clause_with_value(rng, label, negated=False, framed=False)
    return _contrast_of(rng, first, last)


def _double_negation(rng: np.random.Generator, label: int) -> str:
    return _finish(rng, _clause_with_value(rng, label, negated=_chance(rng, 0.5), framed=True))


def _mixed(rng: np.random.Generator, label: int) -> str:
    # The first clause says the opposite of the label, so ignoring the contrast gives the wrong answer.
    first = _clause_with_value(rng, 1 - label, negated=_chance(rng, 0.5), framed=False)
    framed = _chance(rng, 0.5)
    # At least one negation in the deciding clause: otherwise this would just be level 2.
    negated = _chance(rng, 0.5) if framed else True
    last = _clause_with_value(rng, label, negated=negated, framed=framed)
    return _contrast_of(rng, first, last)


_SENTENCE = (_plain, _negation, _contrast, _double_negation, _mixed)
