"""Training step cost of every method against a stock single-exit fine-tuning step; MM's members; the probe.

Every method's step is what ``sweet.train`` runs: the EarlyExitModel's forward with the method's gradient routing,
the method's loss (``sweet.losses``) and an AdamW step; DeeBERT's two stages (stage 2 with the backbone and the
last exit frozen) and BERxiT's even/odd pair are timed as such. One early-exit model serves every method (the
method is read at each forward pass), so ten BERT-base copies do not have to fit in memory.

Why the design is what it is: on a shared VM the machine's speed drifts by 5-10 % over tens of seconds (other
tenants, clock boost), far more than the few per cent a method's hooks cost. So every method call is sandwiched
between two stock steps (one chain per round: stock, m1, stock, m2, ..., stock, in a new random order each
round), and the unit of measurement is the call's CPU time over the mean of its two neighbours': a drift that is
linear over the sandwich cancels. CPU time (``time.process_time``, with ``--threads 1``) is the step's own
arithmetic and Python; it does not count the moments the step waited for a core. A row is the geometric mean of
its per-round ratios, with a 95 % t-interval on the log scale; rounds continue until every goal row's interval
is within ``precision`` (default ±1.5 %, so two runs should agree within ~3 %) or the time cap is reached, and the
rows say which. What a call sets up (the method's options, DeeBERT stage 2's frozen parameters) happens before
its timer starts, as ``sweet.train`` sets a stage up once, not at every step.
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


def _geometric_mean(ratios: list[float]) -> tuple[float, float]:
    """(geometric mean, relative half-width of its 95 % t-interval): per-round ratios are log-normal-ish."""
    from scipy import stats

    logs = np.log(ratios)
    if len(logs) < 2:
        return float(np.exp(logs.mean())), float("inf")
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return float(np.exp(logs.mean())), float(np.expm1(half))


def bench_train_step(min_rounds: int, max_seconds: float, precision: float = 0.015, batch_size: int = 16,
                     seed: int = 2) -> list[Row]:
    from transformers import BertForSequenceClassification

    from sweet.batches import pad
    from sweet.conflict_probe import gradient_conflict

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
    # name -> (untimed set-up, timed call). The methods' calls run every round; the rest (rows without a goal,
    # the probe alone costs three EE steps) only in the first `min_rounds`.
    calls: dict[str, tuple] = {}
    for name in methods.names("joint"):
        for number, _ in enumerate(methods.get(name).stages):
            calls[f"{name}" if number == 0 else f"{name}_stage{number + 1}"] = _method_call(
                exits, opt["exits"], batch, name, number)
    calls["berxit_odd"] = _method_call(exits, opt["exits"], batch, "berxit", 0, 1)
    every_round = list(calls)
    # a method's calls, one per training stage
    stage_calls = {name: [n for n in every_round if n == name or n.startswith(f"{name}_stage")]
                   for name in methods.names("joint")}
    for depth, member in members.items():
        calls[f"mm_member_{depth}"] = (lambda: None, lambda m=member, o=opt[depth]: _stock_step(m, o, batch))
    calls["probe"] = (calls["ee"][0], lambda: gradient_conflict(exits, batch, 0))
    first_rounds_only = [name for name in calls if name not in every_round]
    calls["plain"] = (lambda: None, lambda: _stock_step(plain, opt["plain"], batch))
    for set_up, call in calls.values():  # warm-up (also allocates the optimizer state)
        set_up()
        call()

    def run(name: str) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of one call, its set-up untimed."""
        set_up, call = calls[name]
        set_up()
        cpu_start = time.process_time()
        wall = timed(call)[0]
        return time.process_time() - cpu_start, wall

    cpu_ratio: dict[str, list[float]] = {name: [] for name in calls if name != "plain"}  # per round
    wall_ratio: dict[str, list[float]] = {name: [] for name in cpu_ratio}
    plain_cpu: list[float] = []

    def per_method(ratios: dict[str, list[float]]) -> dict[str, list[float]]:
        """Each goal row's per-round ratio: a multi-stage method passes over the data once per stage, so its cost
        per training example is the sum of its stages'; BERxiT's is the mean of an even (ℓ_L) and an odd step."""
        rows: dict[str, list[float]] = {}
        for name in methods.names("joint"):
            rows[name] = list(np.sum([ratios[n] for n in stage_calls[name]], axis=0))
        rows["berxit"] = list(np.mean([ratios["berxit"], ratios["berxit_odd"]], axis=0))
        return rows

    started, rounds = time.perf_counter(), 0
    while True:
        order = every_round + (first_rounds_only if rounds < min_rounds else [])
        rng.shuffle(order)
        before = run("plain")
        plain_cpu.append(before[0])
        for name in order:
            own, after = run(name), run("plain")
            plain_cpu.append(after[0])
            cpu_ratio[name].append(own[0] / ((before[0] + after[0]) / 2))
            wall_ratio[name].append(own[1] / ((before[1] + after[1]) / 2))
            before = after
        rounds += 1
        widest = max(_geometric_mean(v)[1] for v in per_method(cpu_ratio).values())
        elapsed = time.perf_counter() - started
        if rounds >= min_rounds and (widest <= precision or elapsed >= max_seconds):
            break

    estimate = {name: _geometric_mean(v) for name, v in per_method(cpu_ratio).items()}
    wall_estimate = {name: _geometric_mean(v)[0] for name, v in per_method(wall_ratio).items()}
    call_ratio = {name: _geometric_mean(v)[0] for name, v in cpu_ratio.items()}
    same_flops = [m for m in estimate if len(methods.get(m).stages) == 1]
    worst = max(same_flops, key=lambda m: estimate[m][0])
    plain_ms = med(plain_cpu) * 1000
    noise = float(np.std(plain_cpu) / np.mean(plain_cpu))
    threads = torch.get_num_threads()
    stopped = (f"every goal row within ±{precision:.1%}" if widest <= precision
               else f"time cap {max_seconds:.0f} s reached with the widest interval ±{widest:.1%} (target ±{precision:.1%})")
    protocol = (f"{rounds} sandwiched rounds in {elapsed:.0f} s ({stopped}); stock step {plain_ms:.0f} ms CPU median, "
                f"its CPU time varied by {noise:.1%} (CV) over the run; {threads} torch thread(s)")

    def shown(name: str) -> str:
        value, half = estimate[name]
        return f"{value:.3f} ± {half:.1%}"

    rows = [
        Row("train_step_overhead", estimate[worst][0], "<=1.10", "x",
            f"worst of the methods whose FLOPs equal EE's ({worst}, {shown(worst)}); × stock "
            f"BertForSequenceClassification step (fwd+bwd+AdamW, batch {batch_size}×{width} tokens of SST-2), "
            f"geometric mean of per-round CPU-time ratios to the neighbouring stock steps; {protocol}",
            {"step_cpu_ratio_per_call": {k: round(v, 4) for k, v in call_ratio.items()},
             "interval_half_width": {k: f"{v[1]:.1%}" for k, v in estimate.items()},
             "cpu_ratio_per_round": [{"round": i + 1, **{k: round(v[i], 3) for k, v in cpu_ratio.items() if i < len(v)}}
                                     for i in range(rounds)]}),
    ]
    for name, (value, _) in estimate.items():
        stages = methods.get(name).stages
        if len(stages) > 1:
            detail = (f"{shown(name)}; {' + '.join(s.name for s in stages)}: "
                      + " + ".join(f"{call_ratio[n]:.3f}" for n in stage_calls[name])
                      + " (one pass over the data per stage; FLOPs differ from EE's)")
        elif name == "berxit":
            detail = (f"{shown(name)}; mean of its even (ℓ_L) and odd (every exit) steps: "
                      f"{call_ratio['berxit']:.3f}, {call_ratio['berxit_odd']:.3f}")
        else:
            detail = f"{shown(name)}; {methods.get(name).label} step / neighbouring stock steps, CPU time"
        rows.append(Row(f"train_step_{name}", value, "<=1.10" if name in same_flops else "-", "x",
                        f"{detail}; wall clock {wall_estimate[name]:.3f}; {rounds} rounds"))
    mm_total = sum(call_ratio[f"mm_member_{d}"] for d in EXIT_LAYERS[:-1]) + 1.0  # + the 12-layer member = plain
    rows += [
        Row("train_mm_cost_vs_ee", mm_total / call_ratio["ee"], "-", "x",
            f"Σ member steps (depths {EXIT_LAYERS}; the 12-layer member = the plain step) {mm_total:.2f} stock steps "
            f"/ EE step {call_ratio['ee']:.3f} stock steps ({min_rounds} rounds); layer count alone predicts "
            f"{sum(EXIT_LAYERS) / EXIT_LAYERS[-1]:.2f}"),
        Row("gradient_conflict_overhead", call_ratio["probe"] / (PROBE_EVERY * call_ratio["ee"]), "-", "fraction",
            f"one probe = {call_ratio['probe'] / call_ratio['ee']:.2f} EE steps ({min_rounds} rounds); amortised "
            f"every {PROBE_EVERY} steps (the demo grid's gradient_conflict_every)"),
    ]
    return rows
