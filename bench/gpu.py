"""The compiled early-exit runner (`sweet.compiled`, issue 25) against the stock model, eager and compiled.

BERT-base shape with `_common.spread_heads`, exits [1, 4, 6, 12], SST-2 dev sentences, thresholds whose
theoretical (layer-count) speedup is closest to 1.5×, 2× and 3×, batch 1 and 32. Configurations, timed
round-robin on one device:

- stock eager: the stock encoder's 12 layers and the last exit's head, one call per length-sorted batch, unpadded;
- stock compiled (the anchor): the same function through ``torch.compile`` as the runner compiles its segments
  (``sweet.compiled.compile_settings``): on CUDA ``mode="reduce-overhead"`` (CUDA graphs), inputs padded to the
  runner's buckets (CUDA graphs need static shapes); on a CPU inductor with dynamic shapes, unpadded;
- hook runner: today's ``sweet.infer.early_exit``;
- segments, eager: ``sweet.compiled.SegmentedRunner(compile=False)``, the segment logic as plain Python;
- segments, compiled: ``SegmentedRunner(compile=True)`` (CUDA graphs on CUDA, inductor on a CPU).

Rows: ``gpu_*`` on CUDA (measured speedup against compiled stock / theoretical, and the exit-decision agreement
of bf16 and fp16 with fp32); on a machine without CUDA they are NaN and say so, and the bench still succeeds.
``cpu_segments_*`` measure the same on the CPU against the faster of stock eager and the hook runner, as
``early_exit.py`` does; compiling BERT-base segments with inductor on a CPU takes minutes (dynamic shapes: per
segment, four variants at batch 32, one at batch 1), so the CPU's compiled configurations run only with
``SWEET_BENCH_CPU_INDUCTOR=1``; their rows ``cpu_compiled_*`` compare the compiled segments with the compiled stock
model and with the hook runner.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from _common import (
    EXIT_LAYERS,
    Row,
    early_exit_model,
    features,
    float_ties,
    med,
    spread_heads,
    sst2_sentences,
    timed,
)

TARGETS = (1.5, 2.0, 3.0)
NO_GPU = "not measured: no CUDA device on this machine"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _stock(model, feats: list[dict], batch_size: int, forward, buckets) -> None:
    """The plain full forward per length-sorted batch, padded to ``buckets`` (static ones: CUDA graphs)."""
    from sweet.batches import sorted_batches, to_device
    from sweet.compiled import pad_to_bucket

    device = next(model.parameters()).device
    with torch.inference_mode():
        for _, batch in sorted_batches(feats, batch_size, 0):
            batch.pop("labels", None)
            batch = pad_to_bucket(to_device(batch, device), buckets.batch(batch["input_ids"].shape[0]),
                                  buckets.seq(batch["input_ids"].shape[1]), 0)
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            forward(batch["input_ids"], batch["attention_mask"])
    _sync(device)


def _full_forward(model):
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = model.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return model.exit_head(len(EXIT_LAYERS) - 1, hidden, attention_mask)[0]

    return forward


def _hook_runner(model, feats, batch_size, threshold):
    from sweet.exits import EXIT_RULES
    from sweet.infer import early_exit

    return early_exit(model, feats, EXIT_RULES["confidence"], threshold, np.ones(len(EXIT_LAYERS)), batch_size)


def _segments(runner, feats, threshold):
    from sweet.exits import EXIT_RULES

    out = runner.run(feats, EXIT_RULES["confidence"], threshold, np.ones(len(EXIT_LAYERS)))
    _sync(runner.device)
    return out


def _thresholds(model, feats):
    from sweet.cost import layer_costs, layer_fraction
    from sweet.evaluate import exit_logits
    from sweet.exits import EXIT_RULES, calibrated_probs, simulate

    logits, _ = exit_logits(model, feats, 64)
    probs = calibrated_probs(logits)
    costs = layer_costs(EXIT_LAYERS, "ee")
    grid = np.linspace(0.5, 1.0, 2001)
    fractions = np.array([layer_fraction(simulate(EXIT_RULES["confidence"], probs, None, t), costs, 12) for t in grid])
    chosen = [float(grid[np.argmin(np.abs(1 / fractions - target))]) for target in TARGETS]
    theoretical = {t: 1 / float(fractions[np.argmin(np.abs(grid - t))]) for t in chosen}
    return probs, chosen, theoretical


def _measure(model, device: torch.device, n_bs1: int, n_bs32: int, reps: int, compile_segments: bool,
             seed: int = 1) -> dict:
    """Per batch size: times per configuration, thresholds, theoretical speedups, float ties."""
    from sweet.compiled import SegmentedRunner, compile_settings
    from sweet.exits import EXIT_RULES

    texts, _ = sst2_sentences("dev")
    order = np.random.default_rng(seed).permutation(len(texts))
    results = {}
    for batch_size, n in ((1, n_bs1), (32, n_bs32)):
        feats = features([texts[i] for i in order[:n]])
        probs, chosen, theoretical = _thresholds(model, feats)
        plain = SegmentedRunner(model, batch_size, compile=False)  # unpadded
        configs: dict = {"stock eager": (_stock, model, feats, batch_size, _full_forward(model), plain.buckets)}
        compiled = None
        if compile_segments:
            compiled = SegmentedRunner(model, batch_size, compile=True)
            # the stock model compiled as the segments are, padded to the same shapes (none on a CPU)
            stock_compiled = torch.compile(_full_forward(model), **compile_settings(True, device))
            configs["stock compiled"] = (_stock, model, feats, batch_size, stock_compiled, compiled.buckets)
            lengths = [len(f["input_ids"]) for f in feats]
            warm = compiled.warm_up(lengths, EXIT_RULES["confidence"], np.ones(len(EXIT_LAYERS)))
            print(f"    batch {batch_size}: segments compiled in {warm:.0f} s", flush=True)
        for t in chosen:
            configs[("hook runner", t)] = (_hook_runner, model, feats, batch_size, t)
            configs[("segments eager", t)] = (_segments, plain, feats, t)
            if compiled is not None:
                configs[("segments compiled", t)] = (_segments, compiled, feats, t)
        for fn, *fn_args in configs.values():  # warm-up (stock compiled: compiles every bucket it meets)
            fn(*fn_args)
        times: dict = {name: [] for name in configs}
        for _ in range(reps):
            for name, (fn, *fn_args) in configs.items():
                times[name].append(timed(fn, *fn_args)[0])
        ties = 0
        for t in chosen:  # the timed runs take the simulated exits (up to float ties)
            for runner in (plain, compiled):
                if runner is not None:
                    out = _segments(runner, feats, t)
                    ties += float_ties(probs, t, out.exits, out.predictions)
        results[batch_size] = {"n": n, "chosen": chosen, "theoretical": theoretical, "ties": ties,
                               "times": {k: med(v) for k, v in times.items()}}
    return results


def _table(result: dict, anchor: float, kinds: tuple[str, ...]) -> list[dict]:
    rows = []
    for target, t in zip(TARGETS, result["chosen"]):
        row = {"target": target, "threshold": round(t, 5), "theoretical_speedup": round(result["theoretical"][t], 3)}
        for kind in kinds:
            if (kind, t) in result["times"]:
                measured = anchor / result["times"][(kind, t)]
                row[f"{kind}: speedup"] = round(measured, 3)
                row[f"{kind}: efficiency"] = round(measured / result["theoretical"][t], 3)
        rows.append(row)
    return rows


def _agreement(model, n: int, seed: int = 1) -> dict[str, float]:
    """Share of sentences whose exit and prediction under bf16 / fp16 equal fp32's (compiled segments, batch 32,
    the 2× threshold)."""
    import copy

    from sweet.compiled import SegmentedRunner

    texts, _ = sst2_sentences("dev")
    order = np.random.default_rng(seed).permutation(len(texts))
    feats = features([texts[i] for i in order[:n]])
    _, chosen, _ = _thresholds(model, feats)
    reference = _segments(SegmentedRunner(model, 32, compile=True), feats, chosen[1])
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        half = copy.deepcopy(model).to(dtype)
        got = _segments(SegmentedRunner(half, 32, compile=True), feats, chosen[1])
        out[name] = float(np.mean((got.exits == reference.exits) & (got.predictions == reference.predictions)))
    return out


def bench_gpu(n_bs1: int, n_bs32: int, reps: int) -> list[Row]:
    texts, _ = sst2_sentences("dev")
    model = early_exit_model("ee", 0).eval()
    spread_heads(model, features(texts[-256:]))
    rows: list[Row] = []
    cpu_inductor = os.environ.get("SWEET_BENCH_CPU_INDUCTOR") == "1"
    cpu = _measure(model, torch.device("cpu"), n_bs1, n_bs32, reps, compile_segments=cpu_inductor)
    for batch_size, result in cpu.items():
        times = result["times"]
        hook_2x = times[("hook runner", result["chosen"][1])]
        baseline = times["stock eager"]
        table = _table(result, baseline, ("hook runner", "segments eager", "segments compiled"))
        two = next(r for r in table if r["target"] == 2.0)
        detail = (f"2x row, against stock eager {baseline:.2f} s; hook runner {two['hook runner: efficiency']:.2f}; "
                  f"segments eager / hook runner time at 2x: {times[('segments eager', result['chosen'][1])] / hook_2x:.2f}"
                  f"; N={result['n']} SST-2 dev sentences, median of {reps}"
                  + ("" if cpu_inductor else "; inductor rows skipped (set SWEET_BENCH_CPU_INDUCTOR=1)")
                  + (f"; {result['ties']} float tie(s)" if result["ties"] else ""))
        rows.append(Row(f"cpu_segments_efficiency_bs{batch_size}", two["segments eager: efficiency"],
                        ">=0.85" if batch_size == 1 else ">=0.70", "ratio", detail, {"per_threshold": table}))
        if cpu_inductor:
            compiled_stock = times["stock compiled"]
            table = _table(result, compiled_stock, ("hook runner", "segments eager", "segments compiled"))
            two = next(r for r in table if r["target"] == 2.0)
            compiled_2x = times[("segments compiled", result["chosen"][1])]
            rows.append(Row(f"cpu_compiled_efficiency_bs{batch_size}", two["segments compiled: efficiency"],
                            ">=0.85" if batch_size == 1 else ">=0.70", "ratio",
                            f"inductor segments against inductor stock ({compiled_stock:.2f} s; stock eager "
                            f"{baseline:.2f} s), 2x row; compiled segments / hook runner time at 2x: "
                            f"{compiled_2x / hook_2x:.2f}; N={result['n']}, median of {reps}",
                            {"per_threshold": table}))
            rows.append(Row(f"cpu_compiled_vs_hook_bs{batch_size}", hook_2x / compiled_2x, ">=1.0", "ratio",
                            "hook runner time / compiled segments time at the 2x threshold (goal: at least as fast)"))
    gpu_ids = ("gpu_efficiency_bs1", "gpu_efficiency_bs32", "gpu_eager_efficiency_bs1", "gpu_eager_efficiency_bs32",
               "gpu_agreement_bf16", "gpu_agreement_fp16")
    if not torch.cuda.is_available():
        return rows + [Row(i, float("nan"), "-", "ratio", NO_GPU) for i in gpu_ids]
    device = torch.device("cuda")
    model = model.to(device)
    gpu = _measure(model, device, n_bs1, n_bs32, reps, compile_segments=True)
    name = torch.cuda.get_device_name(device)
    for batch_size, result in gpu.items():
        anchor = result["times"]["stock compiled"]
        table = _table(result, anchor, ("hook runner", "segments eager", "segments compiled"))
        two = next(r for r in table if r["target"] == 2.0)
        goal = ">=0.85" if batch_size == 1 else ">=0.70"
        detail = (f"{name}; 2x row against compiled stock ({anchor:.3f} s; stock eager "
                  f"{result['times']['stock eager']:.3f} s); N={result['n']}, median of {reps}"
                  + (f"; {result['ties']} float tie(s)" if result["ties"] else ""))
        rows.append(Row(f"gpu_efficiency_bs{batch_size}", two["segments compiled: efficiency"], goal, "ratio", detail,
                        {"per_threshold": table}))
        rows.append(Row(f"gpu_eager_efficiency_bs{batch_size}", two["segments eager: efficiency"], "-", "ratio",
                        f"{name}; segments as plain Python, against compiled stock (2x row)"))
    agreement = _agreement(model, n_bs32)
    for precision, share in agreement.items():
        rows.append(Row(f"gpu_agreement_{precision}", share, "-", "share",
                        f"{name}; exits and predictions equal to fp32's, compiled segments, batch 32, 2x threshold"))
    return rows
