"""Measured latency: the run's model timed at its held-out and risk-controlled operating points, on this device.

``latency.csv`` (``sweet.plan.layout.LATENCY``, in the run's calibrated folder) has one row per timed policy
× batch size: the compiled full model (``source`` = full) and each reached held-out operating point
(operating_points.csv) and certified risk-controlled threshold (risk_control.csv) of an exit rule with a device
version (its ``sweet.exits.EXIT_RULES`` entry's ``fires_device``). ``measured_speedup`` = full model's ms per
example / the policy's; ``theoretical_speedup`` is the layer-count speedup (``sweet.cost``) of the exits the policy
took on the same examples.

What is timed:

* The policy: ``sweet.compiled.SegmentedRunner`` at the run's temperatures. ``compile="auto"`` here means inductor +
  CUDA graphs on CUDA and plain (uncompiled) segments on a CPU: compiling every shape on a CPU costs minutes per
  policy and batch size, and the CPU numbers are a smoke test of the stage, not the paper's measurement.
* The full model: the same runner on the model cut to its last exit alone (EE/SWEET: the backbone up to the last
  exit layer and the last exit's head, no intermediate head computed; MM: its last member alone). Not the policy
  runner with a threshold that never fires: that also pays every intermediate head and its device-to-host read,
  which a deployment of the full model would not, and it would make the measured speedup look better than it is.
  A backbone the segments cannot cut (``SegmentedRunner.fallback_reason``: DeBERTa-v2) falls back to the hook
  runner; its full model is then the whole model at a never-firing threshold (the ``full_model`` column says so).
* Examples: the first ``examples`` of the evaluation split, in the split's order (not a random draw: the same
  examples every time); the runner batches them by decreasing length, as evaluation does.
* Each (policy, batch size): one untimed warm-up pass over the examples (compiles/captures every shape it meets),
  then ``repeats`` timed passes (``torch.cuda.synchronize`` around each on CUDA); the median is reported.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sweet.cost import layer_costs, layer_fraction
from sweet.errors import UserError
from sweet.exits import EXIT_RULES, ExitRule
from sweet.reporting.collect import LATENCY_RUN_COLUMNS as LATENCY_COLUMNS

DEFAULT_EXAMPLES = 256
DEFAULT_REPEATS = 5


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``; else ``platform.processor()``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine() or "unknown")


def check_batch_sizes(batch_sizes: list[int]) -> list[int]:
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UserError(f"--batch-sizes: {batch_sizes} must be one or more positive integers (e.g. 1 32)")
    return sorted({int(b) for b in batch_sizes})


class LastExitOnly(nn.Module):
    """An EarlyExitModel seen as its last exit alone: the backbone up to the last exit layer and that exit's head
    (what ``sweet.compiled.EncoderSegments`` reads: ``backbone``, ``layers``, ``exit_layers``, ``exit_head``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone  # registered: the parameters (and device) are the model's
        object.__setattr__(self, "_whole", model)  # not a submodule: no intermediate head is part of this one
        self.exit_layers = [model.exit_layers[-1]]

    @property
    def num_exits(self) -> int:
        return 1

    @property
    def layers(self) -> nn.ModuleList:
        return self._whole.layers

    def exit_head(self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self._whole.exit_head(self._whole.num_exits - 1, hidden, attention_mask)


def full_model(model: nn.Module) -> nn.Module:
    """The run's full model: the last exit alone (EE/SWEET), or MM's last member alone."""
    from sweet.multimodel import MultiModel

    if isinstance(model, MultiModel):
        return MultiModel([model.members[-1]]).eval()
    return LastExitOnly(model).eval()


def policies(points: pd.DataFrame | None, risk: pd.DataFrame | None) -> list[dict[str, Any]]:
    """(strategy, threshold, source, …) of every reached held-out point and certified risk-controlled threshold."""
    rows: list[dict[str, Any]] = []
    if points is not None and not points.empty:
        reached = points["reached"].astype(str).str.lower().isin(["true", "1"]) if "reached" in points else True
        for _, p in points[reached & points["threshold"].notna()].iterrows():
            rows.append({"strategy": p["strategy"], "threshold": float(p["threshold"]), "source": "held-out",
                         "risk": "", "epsilon": math.nan, "target_speedup": float(p["target_speedup"])})
    if risk is not None and not risk.empty:
        certified = risk["certified"].astype(str).str.lower().isin(["true", "1"])
        for _, r in risk[certified & risk["threshold"].notna()].iterrows():
            rows.append({"strategy": r["strategy"], "threshold": float(r["threshold"]), "source": "risk-control",
                         "risk": r["risk"], "epsilon": float(r["epsilon"]), "target_speedup": math.nan})
    return [r for r in rows if r["strategy"] in EXIT_RULES and EXIT_RULES[r["strategy"]].fires_device is not None]


def _time(runner: Any, features: list[dict], rule: ExitRule, threshold: float, temperatures: np.ndarray,
          pad: int, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds per pass, the exits of the last pass), after one untimed warm-up pass."""
    cuda = runner.device.type == "cuda"
    result = runner.run(features, rule, threshold, temperatures, pad)  # warm-up: compiles every shape it meets
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = runner.run(features, rule, threshold, temperatures, pad)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result.exits


def latency_rows(model: nn.Module, features: list[dict], temperatures: np.ndarray, method: str,
                 points: pd.DataFrame | None, risk: pd.DataFrame | None, batch_sizes: list[int],
                 pad_token_id: int = 0, repeats: int = DEFAULT_REPEATS, compile: bool | str = "auto") -> pd.DataFrame:
    """The rows of latency.csv for ``model`` (EarlyExitModel or MultiModel) on ``features``."""
    from sweet.batches import model_device
    from sweet.compiled import SegmentedRunner

    batch_sizes = check_batch_sizes(batch_sizes)
    if compile == "auto" and model_device(model).type != "cuda":
        compile = False  # plain segments on a CPU: compiling every shape costs minutes, and CI must stay fast
    if not features:
        raise UserError("latency: no evaluation examples to time")
    temperatures = np.asarray(temperatures, dtype=np.float64)
    costs = layer_costs(model.exit_layers, method)
    depth = int(model.exit_layers[-1])
    n = len(features)
    rows = []
    for batch_size in batch_sizes:
        runner = SegmentedRunner(model, batch_size, compile)
        device = device_name(runner.device)
        if runner.fallback_reason is None:
            full_runner, full_temps, full_kind = SegmentedRunner(full_model(model), batch_size, compile), \
                temperatures[-1:], "last exit alone"
        else:
            full_runner, full_temps, full_kind = runner, temperatures, "never-firing threshold (hook runner)"
        confidence = EXIT_RULES["confidence"]
        full_seconds, _ = _time(full_runner, features, confidence, confidence.never_fires, full_temps,
                                pad_token_id, repeats)
        common = {"batch_size": batch_size, "device": device, "examples": n, "full_model": full_kind,
                  "compiled": runner.compiled}
        rows.append({"strategy": "", "threshold": math.nan, "source": "full", "risk": "", "epsilon": math.nan,
                     "target_speedup": math.nan, **common, "ms_per_example": 1000 * full_seconds / n,
                     "measured_speedup": 1.0, "theoretical_speedup": 1.0})
        timed: dict[tuple[str, float], tuple[float, np.ndarray]] = {}
        for policy in policies(points, risk):
            # Several policies often share a threshold (targets the runs' curve reaches at the same grid point,
            # a risk certified at the same threshold): the same computation, timed once.
            key = (policy["strategy"], policy["threshold"])
            if key not in timed:
                timed[key] = _time(runner, features, EXIT_RULES[policy["strategy"]], policy["threshold"],
                                   temperatures, pad_token_id, repeats)
            seconds, exits = timed[key]
            rows.append({**policy, **common, "ms_per_example": 1000 * seconds / n,
                         "measured_speedup": full_seconds / seconds,
                         "theoretical_speedup": 1.0 / layer_fraction(exits, costs, depth)})
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def run_latency(run: str | Path, task_dir: str | Path, batch_sizes: list[int], examples: int = DEFAULT_EXAMPLES,
                repeats: int = DEFAULT_REPEATS, out: str | Path | None = None, compile: bool | str = "auto",
                model_dir: str | Path | None = None) -> pd.DataFrame:
    """Time a run (its calibrated folder: temperatures.json, operating_points.csv, risk_control.csv; the model in
    its training folder unless ``model_dir``) and write latency.csv (default: where the layout puts it)."""
    from sweet.batches import encode, load_tokenizer
    from sweet.data import load_prepared
    from sweet.evaluate import load_model, method_of
    from sweet.io import write_csv
    from sweet.plan.layout import LATENCY, MODEL, OPERATING_POINTS, RISK_CONTROL, TEMPERATURES, run_file

    batch_sizes = check_batch_sizes(batch_sizes)
    if examples < 1:
        raise UserError(f"--examples: {examples} must be at least 1")
    if repeats < 1:
        raise UserError(f"--repeats: {repeats} must be at least 1")
    run = Path(run)
    model_dir = Path(model_dir) if model_dir else run_file(run, MODEL)
    temperatures_path = run_file(run, TEMPERATURES)
    if not temperatures_path.is_file():
        raise UserError(f"--run: {run} has no {TEMPERATURES}; give a calibrated run folder")
    temperatures = np.asarray(json.loads(temperatures_path.read_text())["temperatures"], dtype=np.float64)
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    rows = list(load_prepared(task_dir).eval)[:examples]
    features = encode(rows, tokenizer)
    table = latency_rows(model, features, temperatures, method_of(model), _read_csv(run / OPERATING_POINTS),
                         _read_csv(run / RISK_CONTROL), batch_sizes, tokenizer.pad_token_id or 0, repeats,
                         compile)
    out = Path(out) if out else run / LATENCY
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, table)
    return table
