"""The exported classifier (issue 19) against the stock full forward, from texts to labels, on SST-2 sentences.

A BERT-base-shaped early-exit model (random init, exit heads spread as in `early_exit.py`) is saved as a finished
run would be (model with the MiniLM uncased tokenizer, max_length 256; logits.npz of the evaluation sentences;
operating_points.csv with the thresholds whose speedup on *calibration* sentences is closest to 1.5×, 2× and 3×),
exported at 2× with `sweet.export.export_run` (policy held-out) and loaded with `sweet.load_classifier`. The
baseline is the stock `BertForSequenceClassification` holding the same encoder and the last exit's head.
Both sides start from the texts: tokenisation (the same tokenizer and max_length), length-sorted batches, the
forward pass and the label, at batch 1 and 32. Efficiency = (baseline time / classifier time) / theoretical,
theoretical = 1 / layer fraction of the exits the classifier actually took on these sentences.

Layer fractions count every sentence alike, but a layer's cost on a CPU grows with the tokens it runs on, and
the sentences that stay to the deep exits are the longer ones (on this model and these sentences the exit layer
correlates with the length, r ≈ 0.3). So each row also gives the *FLOPs* speedup: 1 / ``sweet.cost.flops_fraction``
(the accounting the curves and the model card already report), each row counted at the width it was computed
at (its batch's padded length, with the batches the classifier formed), and the efficiency against it: the
share of the arithmetic saved that the runner turns into time.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import (
    EXIT_LAYERS,
    Row,
    early_exit_model,
    features,
    flops_efficiency_row,
    med,
    minilm_dir,
    padded_widths,
    spread_heads,
    sst2_sentences,
    timed,
)

TARGETS = (1.5, 2.0, 3.0)
CHUNK_BATCHES = 4  # batches per interleaving chunk: 4 sentences at batch 1, 128 at batch 32
MAX_LENGTH = 256


def _stock_classifier(model):
    """BertForSequenceClassification with the early-exit model's encoder and its last exit's pooler + classifier."""
    from transformers import BertForSequenceClassification

    stock = BertForSequenceClassification(model.backbone.config.__class__(**model.backbone.config.to_dict(),
                                                                          num_labels=2))
    stock.bert.load_state_dict(model.backbone.state_dict())
    head = model.heads[-1]
    stock.bert.pooler.dense.load_state_dict(head.pooler.state_dict())
    stock.classifier.load_state_dict(head.classifier.state_dict())
    return stock.eval()


@torch.inference_mode()
def _stock_predict(stock, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    from sweet.batches import encode, sorted_batches

    feats = encode([{"text": t} for t in texts], tokenizer)
    labels = np.zeros(len(texts), dtype=np.int64)
    for idx, batch in sorted_batches(feats, batch_size, tokenizer.pad_token_id or 0):
        labels[idx] = stock(**batch).logits.softmax(-1).argmax(-1).numpy()
    return labels


def _classifier_predict(classifier, texts: list[str], batch_size: int) -> list:
    return classifier.predict(texts, batch_size=batch_size)


def _widths(tokenizer, texts: list[str], batch_size: int, chunk: int) -> np.ndarray:
    """Per text, the width it is computed at: its batch's padded length, with the batches ``predict`` forms
    (length-sorted within each timed chunk of ``chunk`` texts)."""
    from sweet.batches import encode

    return np.concatenate([
        padded_widths(encode([{"text": t} for t in texts[start : start + chunk]], tokenizer), batch_size,
                      tokenizer.pad_token_id or 0)
        for start in range(0, len(texts), chunk)])


def _flops_speedup(shape, widths: np.ndarray, exit_layers: np.ndarray) -> float:
    """1 / ``sweet.cost.flops_fraction`` (the FLOPs accounting the curves and the model card report) of this run,
    each row counted at its computed width (``exit_layers`` in text order)."""
    from sweet.cost import flops_fraction

    exit_index = np.array([EXIT_LAYERS.index(int(e)) for e in exit_layers])
    return 1.0 / flops_fraction(exit_index, widths, np.array(EXIT_LAYERS), "ee", shape)


def _fake_run(root: Path, model, calibration: list[str], evaluation: list[str], labels: np.ndarray) -> Path:
    """A finished run folder of this model: model/, temperatures.json, logits.npz, operating_points.csv."""
    import json

    from transformers import AutoTokenizer

    from sweet.cost import layer_costs, layer_fraction
    from sweet.evaluate import evaluate, exit_logits
    from sweet.exits import EXIT_RULES, calibrated_probs, simulate

    run = root / "run"
    model.save_pretrained(run / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tokenizer.model_max_length = MAX_LENGTH
    tokenizer.save_pretrained(str(run / "model" / "backbone"))
    (run / "temperatures.json").write_text(json.dumps({"temperatures": [1.0] * len(EXIT_LAYERS)}))
    evaluate(run / "model", [{"id": i, "text": t, "label": int(y)} for i, (t, y) in enumerate(zip(evaluation, labels))],
             [1.0] * len(EXIT_LAYERS), run / "logits.npz")
    # The operating points are chosen on calibration sentences (held out of the evaluation ones), as the
    # operating branch's operating_points.csv is on the calibration split.
    logits, _ = exit_logits(model, features(calibration), 64)
    probs = calibrated_probs(logits)
    grid = np.linspace(0.5, 1.0, 2001)
    costs = layer_costs(EXIT_LAYERS, "ee")
    speedups = np.array([1 / layer_fraction(simulate(EXIT_RULES["confidence"], probs, None, t), costs, 12)
                         for t in grid])
    with open(run / "operating_points.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "target_speedup", "threshold", "calibration_speedup", "calibration_score",
                         "eval_speedup", "eval_score", "envelope_score"])
        for target in TARGETS:
            i = int(np.argmin(np.abs(speedups - target)))
            writer.writerow(["confidence", target, f"{grid[i]:.6g}", f"{speedups[i]:.6g}", "", "", "", ""])
    task = root / "task"
    task.mkdir()
    (task / "task.json").write_text(json.dumps({"name": "sst2", "source": "local", "label_names": ["negative", "positive"],
                                                "metrics": ["accuracy"], "primary_metric": "accuracy",
                                                "has_text_pair": False}))
    return run


def bench_classifier(n_bs1: int, n_bs32: int, reps: int, seed: int = 2) -> list[Row]:
    import sweet
    from sweet.cost import encoder_shape
    from sweet.export import ExportPaths, PolicyRequest, export_run

    texts, labels = sst2_sentences("dev")
    order = np.random.default_rng(seed).permutation(len(texts))
    model = early_exit_model("ee", 0).eval()
    spread_heads(model, features([texts[i] for i in order[-256:]]))
    calibration = [texts[i] for i in order[-1256:-256]]
    n = max(n_bs1, n_bs32)
    evaluation = [texts[i] for i in order[:n]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = _fake_run(root, model, calibration, evaluation, labels[order[:n]])
        export_run(ExportPaths(run), PolicyRequest("held-out", target_speedup=2.0), root / "task", root / "export",
                   meta={"task": "sst2", "model": "bert-base-shape", "budget": 0, "method": "ee", "seed": 0})
        classifier = sweet.load_classifier(root / "export")
        with open(run / "operating_points.csv", encoding="utf-8") as fh:
            thresholds = {float(r["target_speedup"]): float(r["threshold"]) for r in csv.DictReader(fh)}
        stock = _stock_classifier(model)
        shape = encoder_shape(model.backbone.config, "cls", 2)  # the bench model's exits read [CLS]
        tokenizer = classifier.tokenizer
        for batch_size, count in ((1, n_bs1), (32, n_bs32)):
            sample = evaluation[:count]
            # Warm-up. Then each repetition walks the sentences in chunks and times, per chunk, the stock
            # classifier and every operating point back to back (in a rotating order): on a shared machine the
            # load drifts within seconds, and this way every configuration sees the same drift. A repetition's
            # time is the sum over its chunks; a ratio is taken within one repetition, then the median over them.
            _stock_predict(stock, tokenizer, sample[: 2 * batch_size], batch_size)
            _classifier_predict(classifier, sample[: 2 * batch_size], batch_size)
            names = ["stock", *TARGETS]
            chunk = CHUNK_BATCHES * batch_size
            times: dict = {name: [] for name in names}
            taken: dict = {t: [] for t in TARGETS}
            stock_labels = np.zeros(0, dtype=np.int64)
            for rep in range(reps):
                spent = dict.fromkeys(names, 0.0)
                for c, start in enumerate(range(0, len(sample), chunk)):
                    part = sample[start : start + chunk]
                    for name in names[(rep + c) % len(names):] + names[: (rep + c) % len(names)]:
                        if name == "stock":
                            seconds, labels_part = timed(_stock_predict, stock, tokenizer, part, batch_size)
                            if rep == 0:
                                stock_labels = np.concatenate([stock_labels, labels_part])
                        else:
                            classifier.threshold = thresholds[name]  # the exported folder holds the 2× one
                            seconds, predicted = timed(_classifier_predict, classifier, part, batch_size)
                            if rep == 0:
                                taken[name] += predicted
                        spent[name] += seconds
                for name in names:
                    times[name].append(spent[name])
            classifier.threshold = thresholds[2.0]
            base = med(times["stock"])
            widths = _widths(tokenizer, sample, batch_size, chunk)  # the same for every threshold
            table = []
            for target in TARGETS:
                layers = np.array([p.exit_layer for p in taken[target]])
                theoretical = EXIT_LAYERS[-1] / layers.mean()
                flops = _flops_speedup(shape, widths, layers)
                measured = med([b / t for b, t in zip(times["stock"], times[target])])
                # Same model: where the classifier ran to the last exit it answers as the stock classifier does
                # (up to float ties of a near-0.5 probability between differently batched kernels).
                full = np.array([p.label_id for p, e in zip(taken[target], layers) if e == EXIT_LAYERS[-1]])
                assert (full != stock_labels[layers == EXIT_LAYERS[-1]]).mean() <= 0.01, "not the same model"
                share = np.bincount([EXIT_LAYERS.index(e) for e in layers], minlength=len(EXIT_LAYERS)) / len(layers)
                table.append({"target": target, "threshold": thresholds[target],
                              "theoretical_speedup": round(float(theoretical), 3),
                              "measured_speedup": round(measured, 3),
                              "efficiency": round(measured / theoretical, 3),
                              "flops_speedup": round(flops, 3),
                              "flops_efficiency": round(measured / flops, 3),
                              "seconds": round(med(times[target]), 2),
                              "ratio_per_rep": " ".join(f"{b / t:.3f}" for b, t in zip(times["stock"], times[target])),
                              "exit_share": " ".join(f"{s:.3f}" for s in share)})
            eff = {row["target"]: row["efficiency"] for row in table}
            goal = ">=0.90" if batch_size == 1 else ">=0.85"
            detail = (f"exported classifier (held-out 2x operating point) vs stock BertForSequenceClassification "
                      f"{base:.2f} s, texts to labels; at 1.5x/2x/3x: {eff[1.5]:.2f}/{eff[2.0]:.2f}/{eff[3.0]:.2f}; "
                      f"N={count} SST-2 dev sentences, median of {reps} paired repetitions, interleaved per "
                      f"{CHUNK_BATCHES} batches (stock s: "
                      + ", ".join(f"{t:.2f}" for t in times["stock"]) + ")")
            rows.append(Row(f"classifier_efficiency_bs{batch_size}", eff[2.0], goal, "ratio", detail,
                            {"per_threshold": table}))
            rows.append(flops_efficiency_row(f"classifier_flops_efficiency_bs{batch_size}", table, goal,
                                             "the widths computed"))
    return rows
