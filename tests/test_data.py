"""Data: synthetic task, word tokenizer, prepared folders, splits, metrics, and every data UserError."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sweet import data, synthetic
from sweet.data import compute_metrics, load_prepared, make_splits, prepare_task
from sweet.errors import UserError
from sweet.tasks import GLUE_TASKS
from sweet.tokenizer import build_word_tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Synthetic task
def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    a_train, a_eval = synthetic.make_task(300, 100, seed=3)
    b_train, b_eval = synthetic.make_task(300, 100, seed=3)
    c_train, c_eval = synthetic.make_task(300, 100, seed=4)
    assert a_train == b_train and a_eval == b_eval
    assert a_train != c_train and a_eval != c_eval


def test_synthetic_levels_labels_and_disjoint_splits() -> None:
    train, evaluation = synthetic.make_task(2000, 500, seed=0)
    levels = Counter(e["difficulty"] for e in train)
    assert set(levels) == set(range(len(synthetic.DIFFICULTY_NAMES)))
    assert min(levels.values()) > 150  # every level well represented
    labels = Counter(e["label"] for e in train)
    assert abs(labels[0] - labels[1]) <= 1
    for level in levels:  # balanced within each level too, so no level is solvable from its prior
        per_level = [e["label"] for e in train if e["difficulty"] == level]
        assert 0.4 < np.mean(per_level) < 0.6
    texts = [e["text"] for e in train]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {e["text"] for e in evaluation}


def test_synthetic_eval_does_not_depend_on_train_size() -> None:
    assert synthetic.make_task(100, 50, seed=1)[1] == synthetic.make_task(400, 50, seed=1)[1]


def test_synthetic_labels_follow_the_rules() -> None:
    """Re-derive each label from the text with the documented rules: last clause decides, negators flip."""
    positive, negative = set(synthetic._POSITIVE), set(synthetic._NEGATIVE)
    negators = {"not", "never", "nobody", "no"}
    splitters = (", but ", ", yet ", "; however, ")
    for example in synthetic.generate(500, seed=5):
        text = example["text"].rstrip(".")
        for splitter in splitters:
            text = text.split(splitter)[-1]
        for subordinator in ("although ", "while "):  # "although A, B": the main clause B decides
            if subordinator in text:
                text = text.split(subordinator, 1)[1].split(", ", 1)[1]
        words = text.replace(",", " ").split()
        adjectives = [w for w in words if w in positive | negative]
        assert len(adjectives) == 1, example
        value = int(adjectives[0] in positive) ^ (sum(w in negators for w in words) % 2)
        assert value == example["label"], example


def test_vocabulary_covers_every_generated_word() -> None:
    vocab = set(synthetic.vocabulary())
    train, evaluation = synthetic.make_task(500, 200, seed=2)
    for example in train + evaluation:
        words = example["text"].replace(",", " , ").replace(";", " ; ").replace(".", " . ").split()
        assert set(words) <= vocab, example


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
def test_word_tokenizer_round_trip_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_word_tokenizer(synthetic.vocabulary(), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1
    text = "Honestly, the plot was DULL; however, the cast is great!"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == [
        "[CLS]", "honestly", ",", "the", "plot", "was", "dull", ";", "however", ",", "the", "cast", "is", "great",
        "!", "[SEP]",
    ]
    assert tok.decode(ids, skip_special_tokens=True) == "honestly, the plot was dull ; however, the cast is great!"
    assert tok("the zebra was good")["input_ids"][2] == tok.unk_token_id
    # Same word list → byte-identical files (backbones built on two machines share one vocabulary).
    build_word_tokenizer(synthetic.vocabulary(), tmp_path / "tok2")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (tmp_path / "tok2" / name).read_bytes()


def test_prepare_synthetic_folder(tmp_path: Path) -> None:
    out = tmp_path / "data" / "synthetic"
    prepare_task("synthetic", {"source": "synthetic", "train_size": 200, "eval_size": 80, "seed": 1}, out)
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "task.json", "train.jsonl"]
    info = json.loads((out / "task.json").read_text())
    assert info["label_names"] == ["negative", "positive"] and info["num_labels"] == 2
    assert info["pool_size"] == 200 and info["eval_size"] == 80 and info["has_text_pair"] is False
    assert info["primary_metric"] == "accuracy" and info["difficulty_names"][0] == "plain"
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert list(first) == ["id", "text", "label", "difficulty"]
    task = load_prepared(out)
    assert [r["id"] for r in task.train] == list(range(200)) and len(task.eval) == 80
    before = (out / "train.jsonl").read_bytes()
    prepare_task("synthetic", {"source": "synthetic", "train_size": 200, "eval_size": 80, "seed": 1}, out)
    assert (out / "train.jsonl").read_bytes() == before


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _local_spec(train: Path, evaluation: Path, **extra: object) -> dict:
    return {"source": "local", "train": str(train), "eval": str(evaluation), "text_column": "sentence",
            "label_column": "label", **extra}


def test_local_csv_string_labels(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.csv", 'sentence,label\n"good, really",pos\nbad,neg\nNA,pos\n')
    evaluation = _write(tmp_path / "eval.csv", "sentence,label\nfine,pos\n")
    info = prepare_task("t", _local_spec(train, evaluation), tmp_path / "out")
    assert info["label_names"] == ["neg", "pos"] and info["metrics"] == ["accuracy", "f1"]
    task = load_prepared(tmp_path / "out")
    assert task.train == [
        {"id": 0, "text": "good, really", "label": 1},
        {"id": 1, "text": "bad", "label": 0},
        {"id": 2, "text": "NA", "label": 1},  # a text "NA" stays text
    ]
    assert task.eval == [{"id": 0, "text": "fine", "label": 1}]


def test_local_tsv_pairs_integer_labels(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.tsv", "a\tb\ty\nx one\ty one\t2\nx two\ty two\t10\nx three\ty three\t0\n")
    evaluation = _write(tmp_path / "eval.tsv", "a\tb\ty\np\tq\t10\n")
    spec = {"source": "local", "train": str(train), "eval": str(evaluation), "text_column": "a",
            "text_pair_column": "b", "label_column": "y", "metrics": ["accuracy", "macro_f1"]}
    info = prepare_task("pairs", spec, tmp_path / "out")
    assert info["label_names"] == ["0", "2", "10"]  # numeric order, not string order
    task = load_prepared(tmp_path / "out")
    assert task.has_text_pair and task.num_labels == 3
    assert task.train[0] == {"id": 0, "text": "x one", "text_pair": "y one", "label": 1}
    assert task.eval[0]["label"] == 2


def test_local_jsonl_with_given_labels(tmp_path: Path) -> None:
    lines = [{"s": "good", "l": 1}, {"s": "bad", "l": 0.0}, {"s": "meh", "l": "1"}]
    train = _write(tmp_path / "train.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    evaluation = _write(tmp_path / "eval.jsonl", json.dumps({"s": "ok", "l": 2}) + "\n")
    spec = {"source": "local", "train": str(train), "eval": str(evaluation), "text_column": "s",
            "label_column": "l", "labels": [0, 1, 2], "metrics": ["accuracy"]}
    prepare_task("j", spec, tmp_path / "out")
    task = load_prepared(tmp_path / "out")
    assert [r["label"] for r in task.train] == [1, 0, 1] and task.eval[0]["label"] == 2
    assert task.label_names == ["0", "1", "2"]


def test_glue_uses_registry_and_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_loader(path: str, config: str, split: str) -> list[dict]:
        calls.append((path, config, split))
        return [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3, "idx": i} for i in range(6)]

    monkeypatch.setattr(data, "_load_hf_dataset", fake_loader)
    info = prepare_task("mnli", {"source": "glue"}, tmp_path / "out")
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert info["num_labels"] == 3 and info["primary_metric"] == "accuracy" and info["has_text_pair"]
    task = load_prepared(tmp_path / "out")
    assert task.train[4] == {"id": 4, "text": "p4", "text_pair": "h4", "label": 1}


@pytest.mark.parametrize(
    ("glue", "primary", "metrics"),
    [("cola", "matthews", ["matthews", "accuracy"]), ("mrpc", "f1", ["f1", "accuracy"]),
     ("qqp", "f1", ["f1", "accuracy"]), ("sst2", "accuracy", ["accuracy"]), ("rte", "accuracy", ["accuracy"])],
)
def test_glue_registry_metrics(glue: str, primary: str, metrics: list[str]) -> None:
    assert GLUE_TASKS[glue].primary_metric == primary and list(GLUE_TASKS[glue].metrics) == metrics
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli"}


# ---------------------------------------------------------------------------------------------------------------
# Every user error: one line naming the key or file (and row), and nothing written
GOOD = "sentence,label\ngood,1\nbad,0\n"


@pytest.mark.parametrize(
    ("train_text", "eval_text", "ext", "extra", "expected"),
    [
        ("sentence,label\ngood,1\n,0\n", GOOD, "csv", {}, ["train.csv", "row 2", "empty text", "'sentence'"]),
        ("sentence,label\ngood,1\n   ,0\n", GOOD, "csv", {}, ["train.csv", "row 2", "empty text"]),
        ("sentence,label\ngood,1\nbad,\n", GOOD, "csv", {}, ["train.csv", "row 2", "missing label"]),
        ("sentence,label\ngood,1\nbad,NaN\n", GOOD, "csv", {}, ["train.csv", "row 2", "missing label"]),
        (b"sentence,label\ngood,1\nb\xffd,0\n", GOOD, "csv", {}, ["train.csv", "row 2", "UTF-8", "0xff"]),
        ("text,y\ngood,1\n", GOOD, "csv", {}, ["train.csv", "'sentence'", "['text', 'y']", "text_column"]),
        ("sentence,y\ngood,1\n", GOOD, "csv", {}, ["train.csv", "'label'", "label_column"]),
        (GOOD, "sentence,label\nfine,1\nodd,7\n", "csv", {}, ["eval.csv", "row 2", "'7'", "labels"]),
        (GOOD, "sentence,label\n", "csv", {}, ["eval.csv", "no data rows"]),
        ("", GOOD, "csv", {}, ["train.csv", "no data rows"]),
        ("sentence,label\ngood,1\ngood,1\n", GOOD, "csv", {}, ["train.csv", "only one label"]),
        (GOOD, GOOD, "csv", {"labels": ["0", "2"]}, ["train.csv", "row 1", "'1'", "labels"]),
        (GOOD, GOOD, "txt", {}, ["unsupported extension", ".csv, .tsv, .jsonl"]),
        ('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": NaN}\n', GOOD, "jsonl", {},
         ["train.jsonl", "line 2", "missing label"]),
        ('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": null}\n', GOOD, "jsonl", {},
         ["train.jsonl", "line 2", "missing label"]),
        ('{"sentence": "a", "label": 1}\n{"label": 0}\n', GOOD, "jsonl", {}, ["train.jsonl", "line 2", "empty text"]),
        ('{"sentence": "a", "label": 1}\n{"sentence": "b", \n', GOOD, "jsonl", {}, ["train.jsonl", "line 2", "JSON"]),
        (GOOD, GOOD, "csv", {"metrics": ["bleu"]}, ["metrics", "accuracy"]),
        (GOOD, GOOD, "csv", {"text_pair_column": "other"}, ["'other'", "text_pair_column"]),
    ],
)
def test_local_data_errors(
    tmp_path: Path, train_text: str | bytes, eval_text: str, ext: str, extra: dict, expected: list[str]
) -> None:
    train = _write(tmp_path / f"train.{ext}", train_text)
    evaluation = _write(tmp_path / f"eval.{'csv' if ext == 'jsonl' else ext}", eval_text)
    if ext == "jsonl":
        evaluation = _write(tmp_path / "eval.jsonl", '{"sentence": "ok", "label": 1}\n')
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        prepare_task("t", _local_spec(train, evaluation, **extra), out)
    message = str(err.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_missing_file(tmp_path: Path) -> None:
    evaluation = _write(tmp_path / "eval.csv", GOOD)
    with pytest.raises(UserError, match=r"tasks\.t\.train: file .*nope\.csv not found"):
        prepare_task("t", _local_spec(tmp_path / "nope.csv", evaluation), tmp_path / "out")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"source": "kaggle"}, r"tasks\.t\.source: 'kaggle' .* synthetic, glue, local"),
        ({"source": "synthetic", "train_sise": 10}, r"tasks\.t\.train_sise: unknown key .*train_size"),
        ({"source": "synthetic", "train_size": -5}, r"tasks\.t\.train_size: -5 must be an integer"),
        ({"source": "synthetic", "seed": 1.5}, r"tasks\.t\.seed"),
        ({"source": "synthetic", "difficulty_weights": [1, 2]}, r"difficulty_weights"),
        ({"source": "glue", "glue_task": "squad"}, r"tasks\.t\.glue_task: 'squad' .*cola, sst2, mrpc"),
        ({"source": "glue"}, r"tasks\.t\.source: 't' is not a known GLUE task"),
        ({"source": "local", "train": "a.csv"}, r"tasks\.t\.eval: missing"),
    ],
)
def test_spec_errors(tmp_path: Path, spec: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        prepare_task("t", spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_glue_load_failure_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(path: str, config: str, split: str) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "_load_hf_dataset", offline)
    with pytest.raises(UserError, match=r"could not load nyu-mll/glue/sst2 .*ConnectionError"):
        prepare_task("sst2", {"source": "glue"}, tmp_path / "out")


def test_load_prepared_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found; run `python -m sweet prepare"):
        load_prepared(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "task.json").write_text("{}")
    with pytest.raises(UserError, match=r"incomplete prepared task \(missing train\.jsonl, eval\.jsonl\)"):
        load_prepared(tmp_path / "half")


# ---------------------------------------------------------------------------------------------------------------
# Splits
def test_splits_seeded_disjoint_random() -> None:
    a = make_splits(1000, 100, 200, seed=0)
    assert a == make_splits(1000, 100, 200, seed=0)
    b = make_splits(1000, 100, 200, seed=1)
    assert a["train_ids"] != b["train_ids"]
    assert len(a["train_ids"]) == 100 and len(a["calibration_ids"]) == 200
    assert a["train_ids"] == sorted(a["train_ids"])
    assert not set(a["train_ids"]) & set(a["calibration_ids"])
    assert a["train_ids"] != list(range(100))  # not the reference's "first N rows"
    assert max(a["train_ids"]) > 500
    assert "warning" not in a and a["calibrate_on"] == "pool"
    # Nested budgets for one seed; the calibration split does not move with the budget.
    c = make_splits(1000, 300, 200, seed=0)
    assert set(a["train_ids"]) < set(c["train_ids"]) and a["calibration_ids"] == c["calibration_ids"]


def test_splits_disjoint_from_eval_by_construction(tmp_path: Path) -> None:
    # Training and calibration ids index the training pool; the evaluation split is a different file.
    prepare_task("s", {"source": "synthetic", "train_size": 300, "eval_size": 100}, tmp_path / "d")
    task = load_prepared(tmp_path / "d")
    splits = make_splits(len(task.train), 100, 100, seed=2)
    used = {task.train[i]["text"] for i in splits["train_ids"] + splits["calibration_ids"]}
    assert not used & {r["text"] for r in task.eval}


def test_splits_shrink_then_error() -> None:
    s = make_splits(1000, 900, 200, seed=0)
    assert len(s["calibration_ids"]) == 100 and "shrunk from 200 to 100" in s["warning"]
    with pytest.raises(UserError, match=r"budget 980 leaves 20 .* for task X.*at most 950"):
        make_splits(1000, 980, 200, seed=0, task="X")
    with pytest.raises(UserError, match=r"budget 7000 > training pool 6000 for task X; lower `budgets`"):
        make_splits(6000, 7000, 100, seed=0, task="X")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match="budget"):
            make_splits(100, bad, 10, seed=0)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="seed"):
        make_splits(100, 10, 10, seed=-1)


def test_splits_calibrate_on_eval_warns() -> None:
    s = make_splits(1000, 1000, 200, seed=0, calibrate_on="eval", eval_size=300)
    assert s["calibration_ids"] == list(range(300)) and "evaluation split" in s["warning"]
    with pytest.raises(UserError, match="calibrate_on"):
        make_splits(1000, 10, 10, seed=0, calibrate_on="test")


# ---------------------------------------------------------------------------------------------------------------
# Metrics
def test_metrics_hand_computed() -> None:
    preds = [1, 1, 0, 0, 1, 0]
    labels = [1, 0, 0, 1, 1, 0]
    # TP=2 FP=1 FN=1 TN=2: accuracy 4/6, F1 = 2*2/(2*2+1+1) = 2/3, MCC = (4-1)/sqrt(3*3*3*3) = 1/3
    scores = compute_metrics(["accuracy", "f1", "matthews", "macro_f1"], preds, labels)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["matthews"] == pytest.approx(1 / 3)
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    constant = compute_metrics(["matthews", "f1"], [0, 0, 0], [1, 0, 1])
    assert constant == {"matthews": 0.0, "f1": 0.0}
    assert compute_metrics(["accuracy"], np.array([2, 1, 0]), np.array([2, 1, 1]))["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(UserError, match="unknown"):
        compute_metrics(["bleu"], [0], [0])
