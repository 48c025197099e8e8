"""Training step cost: EE and SWEET against a stock single-exit fine-tuning step; MM's members; the probe."""

from __future__ import annotations

import numpy as np
import torch
from _common import EXIT_LAYERS, Row, bert_base_config, early_exit_model, features, med, sst2_sentences, timed

PROBE_EVERY = 10  # the demo grid's gradient_conflict_every (TrainSpec's default, 0, turns the probe off)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # The Trainer's default on this torch: AdamW (fused where the build supports it), lr 5e-5.
    try:
        return torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=5e-5)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    out = model(**batch)
    loss = out.loss if hasattr(out, "loss") and out.loss is not None else out.exit_losses.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_train_step(reps: int, batch_size: int = 16, seed: int = 2) -> list[Row]:
    from transformers import BertForSequenceClassification

    from sweet.batches import pad
    from sweet.train import gradient_conflict

    texts, labels = sst2_sentences("dev")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(texts), size=batch_size, replace=False)
    batch = pad(features([texts[i] for i in idx], labels[idx]), 0)  # padded to the batch's longest, as the Trainer
    width = batch["input_ids"].shape[1]

    def stock(depth: int) -> torch.nn.Module:
        torch.manual_seed(0)
        return BertForSequenceClassification(bert_base_config(num_hidden_layers=depth, num_labels=2))

    models = {"plain": stock(12), "ee": early_exit_model("ee", 0), "sweet": early_exit_model("sweet", 0)}
    for depth in EXIT_LAYERS[:-1]:  # member 4 (12 layers) has exactly the plain model's shape: its time is reused
        models[f"mm_member_{depth}"] = stock(depth)
    optimizers = {name: _optimizer(m.train()) for name, m in models.items()}
    calls = {name: (_step, models[name], optimizers[name], batch) for name in models}
    calls["probe"] = (gradient_conflict, models["ee"], batch, 0)
    for fn, *fn_args in calls.values():  # warm-up (also allocates the optimizer state)
        fn(*fn_args)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, (fn, *fn_args) in calls.items():
            times[name].append(timed(fn, *fn_args)[0])
    t = {name: med(v) for name, v in times.items()}
    ee, sweet = t["ee"] / t["plain"], t["sweet"] / t["plain"]
    mm_total = sum(t[f"mm_member_{d}"] for d in EXIT_LAYERS[:-1]) + t["plain"]
    probe_overhead = t["probe"] / (PROBE_EVERY * t["ee"])
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items())
    return [
        Row("train_step_overhead", max(ee, sweet), "<=1.10", "x",
            f"EE {ee:.3f}, SWEET {sweet:.3f} × stock BertForSequenceClassification step (fwd+bwd+AdamW, batch "
            f"{batch_size}×{width} tokens of SST-2, median of {reps}); {steps}", {"step_ms": {k: round(v * 1000, 1) for k, v in t.items()}}),
        Row("train_mm_cost_vs_ee", mm_total / t["ee"], "-", "x",
            f"Σ member steps (depths {EXIT_LAYERS}; the 12-layer member = the plain step) {mm_total:.2f} s / EE step {t['ee']:.2f} s; "
            f"layer count alone predicts {sum(EXIT_LAYERS) / EXIT_LAYERS[-1]:.2f}"),
        Row("gradient_conflict_overhead", probe_overhead, "-", "fraction",
            f"one probe = {t['probe'] / t['ee']:.2f} EE steps ({t['probe']:.2f} s); amortised every {PROBE_EVERY} steps "
            "(the demo grid's gradient_conflict_every)"),
    ]
