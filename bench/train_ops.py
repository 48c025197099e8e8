"""Operators per training step (issue 25, part 6): stock BertForSequenceClassification against EE and SWEET.

A tiny BERT (12 layers, hidden 64, exits [1, 4, 6, 12]) on one batch of 8 × 32 tokens; one step = forward, the
method's loss (``sweet.losses``) and backward (the optimizer is left out: its work is per parameter, not per
operator call of the model). ``torch.profiler`` counts every ATen operator call on the CPU, in fp32 and under
bf16 autocast. The rows are the extra calls of EE / SWEET over the stock step; the table lists each operator
whose count differs, so what is not the three extra exit heads and their losses shows by name.
"""

from __future__ import annotations

from collections import Counter

import torch
from _common import EXIT_LAYERS, Row, bert_base_config

SHAPE = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
BATCH, SEQ = 8, 32


def _count(step) -> Counter:
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up: lazy initialisation is not per step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def _steps(precision: str) -> dict[str, Counter]:
    from transformers import BertForSequenceClassification, BertModel

    from sweet.losses import method_loss
    from sweet.methods import get, resolve_options
    from sweet.model import EarlyExitConfig, EarlyExitModel

    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 1000, (BATCH, SEQ), generator=g),
             "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
             "labels": torch.randint(0, 2, (BATCH,), generator=g)}
    batch["attention_mask"][:, SEQ - 5:] = 0  # padded, as real batches are
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.manual_seed(0)
    stock = BertForSequenceClassification(bert_base_config(num_labels=2, **SHAPE)).train()

    def stock_step() -> None:
        with autocast:
            loss = stock(**batch).loss
        loss.backward()
        stock.zero_grad(set_to_none=True)

    counts = {"stock": _count(stock_step)}
    for method in ("ee", "sweet"):
        torch.manual_seed(0)
        model = EarlyExitModel(EarlyExitConfig(EXIT_LAYERS, 2, method=method),
                               BertModel(bert_base_config(**SHAPE))).train()
        options = resolve_options(method, None)
        loss_name = get(method).stages[0].loss

        def step(model=model, options=options, loss_name=loss_name) -> None:
            with autocast:
                out = model(**batch)
                loss = method_loss(loss_name, out.exit_losses, out.exit_logits, batch["labels"], 0,
                                   list(model.exit_layers), options)
            loss.backward()
            model.zero_grad(set_to_none=True)

        counts[method] = _count(step)
    return counts


def bench_train_ops() -> list[Row]:
    rows = []
    for precision in ("fp32", "bf16"):
        counts = _steps(precision)
        stock_total = sum(counts["stock"].values())
        for method in ("ee", "sweet"):
            diff = counts[method].copy()
            diff.subtract(counts["stock"])
            table = [{"operator": op, "stock": counts["stock"][op], method: counts[method][op], "extra": n}
                     for op, n in sorted(diff.items(), key=lambda kv: (-abs(kv[1]), kv[0])) if n != 0]
            extra = sum(counts[method].values()) - stock_total
            rows.append(Row(f"train_ops_{method}_{precision}", float(extra), "-", "ops",
                            f"ATen calls per forward+loss+backward step beyond stock's {stock_total} "
                            f"({method} {sum(counts[method].values())}); tiny BERT 12×64, batch {BATCH}×{SEQ}",
                            {"operators_that_differ": table}))
    return rows
