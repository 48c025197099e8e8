"""Training step cost of every method against a stock single-exit fine-tuning step; MM's members; the probe.

Every method's step is what ``sweet.train`` runs: the EarlyExitModel's forward with the method's gradient routing,
the method's loss (``sweet.losses``) and an AdamW step; DeeBERT's two stages (stage 2 with the backbone and the
last exit frozen) and BERxiT's even/odd pair are timed as such. One early-exit model serves every method (the
method is read at each forward pass), so ten BERT-base copies do not have to fit in memory.

Stable on a shared machine: the calls are interleaved in a new random order each round, and each call is timed
twice over: by the CPU time this process spent in it (``time.process_time``) and by the wall clock. A row is
the ratio of the median CPU times: with one torch thread (``--threads 1``) the CPU time is the step's own
arithmetic and Python, and what other processes do to the machine shows in it only through caches and memory
bandwidth, while the wall clock also counts every moment the step waited for a core. The wall-clock ratio of
each call's fastest round to the stock step's fastest (other processes only ever slow a call down) is in the
detail. With more threads, idle threads spin and the CPU time counts the spinning: use one. What a call sets up
(the method's options, DeeBERT stage 2's frozen parameters) happens before its timers start, as `sweet.train`
sets a stage up once, not at every step.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _common import EXIT_LAYERS, Row, bert_base_config, early_exit_model, features, med, sst2_sentences, timed

from sweet import methods

PROBE_EVERY = 10  # the demo grid's gradient_conflict_every (TrainSpec's default, 0, turns the probe off)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # The Trainer's default on this torch: AdamW (fused where the build supports it), lr 5e-5.
    try:
        return torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=5e-5)


def _stock_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _method_call(model, optimizer, batch: dict, method: str, stage: int = 0, step: int = 0):
    """(set-up, step) of one method's training step: the set-up (untimed) points the shared model at the method
    and freezes what the stage freezes; the step is forward with the method's routing, its loss, backward, AdamW."""
    from sweet.losses import method_loss
    from sweet.train import prepare_stage

    recipe = methods.get(method)
    options = methods.resolve_options(method, None)
    trains_early_only = recipe.stages[stage].trains != "all"
    loss_name = recipe.stages[stage].loss

    def set_up() -> None:
        model.config.method, model.config.method_options = method, options
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if trains_early_only:  # the optimizer skips the frozen parameters (no gradient)
            prepare_stage(model, methods.Stage("timed", "early", trains="early-exits"))

    def run_step() -> None:
        out = model(**batch)
        loss = method_loss(loss_name, out.exit_losses, out.exit_logits, batch["labels"], step,
                           list(model.exit_layers), options)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return set_up, run_step


def bench_train_step(rounds: int, batch_size: int = 16, seed: int = 2) -> list[Row]:
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
        return BertForSequenceClassification(bert_base_config(num_hidden_layers=depth, num_labels=2)).train()

    plain, exits = stock(12), early_exit_model("ee", 0).train()
    members = {depth: stock(depth) for depth in EXIT_LAYERS[:-1]}  # member 4 (12 layers) is the plain model
    opt = {"plain": _optimizer(plain), "exits": _optimizer(exits), **{d: _optimizer(m) for d, m in members.items()}}
    # name -> (untimed set-up, timed call)
    calls: dict[str, tuple] = {"plain": (lambda: None, lambda: _stock_step(plain, opt["plain"], batch))}
    for name in methods.names("joint"):
        for number, _ in enumerate(methods.get(name).stages):
            calls[f"{name}" if number == 0 else f"{name}_stage{number + 1}"] = _method_call(
                exits, opt["exits"], batch, name, number)
    calls["berxit_odd"] = _method_call(exits, opt["exits"], batch, "berxit", 0, 1)
    for depth, member in members.items():
        calls[f"mm_member_{depth}"] = (lambda: None, lambda m=member, o=opt[depth]: _stock_step(m, o, batch))
    calls["probe"] = (calls["ee"][0], lambda: gradient_conflict(exits, batch, 0))
    for set_up, call in calls.values():  # warm-up (also allocates the optimizer state)
        set_up()
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}  # wall seconds per round
    cpu: dict[str, list[float]] = {name: [] for name in calls}  # this process's CPU seconds per round
    order = list(calls)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            set_up, call = calls[name]
            set_up()
            cpu_start = time.process_time()
            times[name].append(timed(call)[0])
            cpu[name].append(time.process_time() - cpu_start)
    fastest = {name: min(v) for name, v in times.items()}
    cpu_median = {name: med(v) for name, v in cpu.items()}

    def ratio(*names: str) -> float:
        """(mean of these calls' median CPU time) / the stock step's median CPU time."""
        return float(np.mean([cpu_median[n] for n in names])) / cpu_median["plain"]

    def wall(*names: str) -> float:
        """(mean of these calls' fastest wall-clock round) / the stock step's fastest round."""
        return float(np.mean([fastest[n] for n in names])) / fastest["plain"]

    def stage_names(name: str) -> list[str]:
        return [n for n in calls if n == name or n.startswith(f"{name}_stage")]

    per_method = {"berxit": ratio("berxit", "berxit_odd")}  # a pair of steps: ℓ_L, then every exit's
    for name in methods.names("joint"):
        # a multi-stage method passes over the data once per stage: its cost per training example is the sum
        per_method.setdefault(name, sum(ratio(s) for s in stage_names(name)))
    same_flops = [m for m in per_method if len(methods.get(m).stages) == 1]
    worst = max(same_flops, key=per_method.get)
    t = cpu_median
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items())
    threads = torch.get_num_threads()
    mm_total = sum(t[f"mm_member_{d}"] for d in EXIT_LAYERS[:-1]) + t["plain"]

    rows = [
        Row("train_step_overhead", per_method[worst], "<=1.10", "x",
            f"worst of the methods whose FLOPs equal EE's ({worst}); × stock BertForSequenceClassification step "
            f"(fwd+bwd+AdamW, batch {batch_size}×{width} tokens of SST-2), median CPU time over {rounds} "
            f"interleaved rounds, {threads} torch thread(s); CPU ms per step: {steps}",
            {"step_cpu_ms_median": {k: round(v * 1000, 1) for k, v in t.items()},
             "step_wall_ms_fastest": {k: round(v * 1000, 1) for k, v in fastest.items()},
             "step_wall_ms_median": {k: round(med(v) * 1000, 1) for k, v in times.items()}}),
    ]
    for name, value in per_method.items():
        stages = methods.get(name).stages
        if len(stages) > 1:
            detail = (f"{' + '.join(s.name for s in stages)}: "
                      + " + ".join(f"{ratio(n):.3f}" for n in stage_names(name))
                      + " (one pass over the data per stage; FLOPs differ from EE's); wall clock, fastest rounds: "
                      + f"{sum(wall(n) for n in stage_names(name)):.3f}")
        elif name == "berxit":
            detail = (f"mean of its even (ℓ_L) and odd (every exit) steps: {ratio('berxit'):.3f}, "
                      f"{ratio('berxit_odd'):.3f}; wall clock, fastest rounds: {wall('berxit', 'berxit_odd'):.3f}")
        else:
            detail = (f"{methods.get(name).label} step / stock step, median CPU time over {rounds} rounds; wall "
                      f"clock, fastest rounds: {wall(name):.3f}")
        rows.append(Row(f"train_step_{name}", value, "<=1.10" if name in same_flops else "-", "x", detail))
    rows += [
        Row("train_mm_cost_vs_ee", mm_total / t["ee"], "-", "x",
            f"Σ member steps (depths {EXIT_LAYERS}; the 12-layer member = the plain step) {mm_total:.2f} s / EE step {t['ee']:.2f} s; "
            f"layer count alone predicts {sum(EXIT_LAYERS) / EXIT_LAYERS[-1]:.2f}"),
        Row("gradient_conflict_overhead", t["probe"] / (PROBE_EVERY * t["ee"]), "-", "fraction",
            f"one probe = {t['probe'] / t['ee']:.2f} EE steps ({t['probe']:.2f} s); amortised every {PROBE_EVERY} steps "
            "(the demo grid's gradient_conflict_every)"),
    ]
    return rows
