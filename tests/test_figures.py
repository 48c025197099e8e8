"""Figures from a small fake grid: every figure kind is written (PNG + PDF) with a caption that matches it, also
for partial grids and a single seed, and reruns are byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweet.curves import curve_rows, exit_rows, with_meta
from sweet.reporting.figures import _save, make_figures, speed_accuracy_figure
from sweet.reporting.tables import aggregate

EXIT_LAYERS = [1, 4, 6, 12]
# Per-exit mean margin of the true class: MM's members and SWEET's early exits are better than EE's (the paper's
# individual-exit finding); SWEET's last exit pays a little for that.
MARGINS = {"ee": [0.2, 0.8, 1.1, 1.6], "sweet": [0.55, 1.0, 1.25, 1.5], "mm": [0.35, 1.05, 1.3, 1.65]}


def _accuracy(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((preds == labels).mean())}


def fake_logits(method: str, seed: int, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 * seed + sum(map(ord, method)))
    labels = rng.integers(0, 2, size=n)
    easiness = rng.normal(size=n)
    margins = np.stack([a + 1.2 * easiness + 0.8 * rng.normal(size=n) + 0.1 * rng.normal()
                        for a in MARGINS[method]])
    sign = np.where(labels == 1, 1.0, -1.0)
    logits = np.zeros((len(EXIT_LAYERS), n, 2), dtype=np.float32)
    logits[:, :, 1] = margins * sign
    costs = np.cumsum(EXIT_LAYERS) if method == "mm" else np.asarray(EXIT_LAYERS)
    return {
        "exit_logits": logits, "temperatures": np.ones(len(EXIT_LAYERS), dtype=np.float32), "labels": labels,
        "lengths": rng.integers(8, 64, size=n), "exit_layers": np.asarray(EXIT_LAYERS),
        "layer_costs": costs, "method": np.asarray(method), "hidden_size": np.asarray(64),
        "intermediate_size": np.asarray(128), "num_labels": np.asarray(2),
    }


def fake_exit_losses(method: str, seed: int, steps: range) -> dict[int, list[float]]:
    """Exit k's logged loss at each step: decaying from ln 2 towards a floor that is lower for later exits (and for
    SWEET's and MM's early exits, as their margins above)."""
    rng = np.random.default_rng(seed)
    return {k: [round(0.2 + (0.69 - 0.2) * np.exp(-step / 60) - 0.04 * MARGINS[method][k - 1]
                      + 0.01 * rng.normal(), 6) for step in steps] for k in range(1, len(EXIT_LAYERS) + 1)}


def write_fake_training_records(run: Path, method: str, seed: int, steps: range = range(10, 110, 10)) -> None:
    """The training records the Trainer leaves beside a calibrated folder: EE/SWEET one train_metrics.json with every
    exit's loss_exit_<k>; MM one members/member_<k>.json per member, whose only exit is loss_exit_1."""
    training = run.parent if run.name.startswith("cal-") else run
    losses = fake_exit_losses(method, seed, steps)

    def history(exits: dict[int, int]) -> list[dict]:
        entries = [{"step": step, "epoch": step / 50, "loss": sum(losses[k][i] for k in exits.values()),
                    **{f"loss_exit_{own}": losses[k][i] for own, k in exits.items()}}
                   for i, step in enumerate(steps)]
        return [*entries, {"step": steps[-1], "train_runtime": 1.0, "train_loss": 0.5}]  # the Trainer's summary

    if method == "mm":
        (training / "members").mkdir(parents=True, exist_ok=True)
        for k in range(1, len(EXIT_LAYERS) + 1):
            record = {"method": "mm", "member": k, "exit_layers": EXIT_LAYERS, "log_history": history({1: k})}
            (training / "members" / f"member_{k}.json").write_text(json.dumps(record))
    else:
        record = {"method": method, "member": None, "exit_layers": EXIT_LAYERS,
                  "log_history": history({k: k for k in range(1, len(EXIT_LAYERS) + 1)})}
        training.mkdir(parents=True, exist_ok=True)
        (training / "train_metrics.json").write_text(json.dumps(record))


def write_fake_run(run: Path, task: str, model: str, budget: int, method: str, seed: int) -> None:
    meta = {"task": task, "model": model, "budget": budget, "method": method, "seed": seed}
    logits = fake_logits(method, seed + budget)
    if budget < 1000:  # a smaller training set: every exit a bit worse
        logits["exit_logits"] = logits["exit_logits"] * 0.8 - 0.15 * np.sign(logits["exit_logits"])
    run.mkdir(parents=True, exist_ok=True)
    with_meta(curve_rows(logits, ["accuracy"], "accuracy", _accuracy), meta).to_csv(run / "curves.csv", index=False)
    with_meta(exit_rows(logits, ["accuracy"], "accuracy", _accuracy), meta).to_csv(
        run / "individual_exits.csv", index=False)
    write_fake_training_records(run, method, seed)
    if method == "ee":
        rng = np.random.default_rng(seed)
        rows = []
        for step in range(0, 200, 25):
            for block in range(1, len(EXIT_LAYERS)):
                others = [*range(block + 1, len(EXIT_LAYERS) + 1), "sum"]
                for other in others:
                    base = -0.25 + 0.06 * block if other == "sum" else -0.15 + 0.05 * block
                    rows.append({**meta, "step": step, "block": block, "exit": block, "other": other,
                                 "cosine": base + 0.03 * rng.normal() - 0.0004 * step})
        pd.DataFrame(rows).to_csv(run / "gradient_conflict.csv", index=False)


def write_fake_grid(root: Path, tasks=("synthetic", "sst2"), models=("tiny-bert",), budgets=(100, 1000),
                    methods=("ee", "sweet", "mm"), seeds=(1, 2, 3)) -> list[Path]:
    runs = []
    for task in tasks:
        for model in models:
            for budget in budgets:
                for method in methods:
                    for seed in seeds:
                        run = root / task / model / f"b{budget}" / method / f"s{seed}"
                        write_fake_run(run, task, model, budget, method, seed)
                        runs.append(run)
    return runs


@pytest.fixture(scope="module")
def full_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grid")
    runs = write_fake_grid(root / "runs", tasks=("synthetic",), budgets=(100, 1000), seeds=(1, 2))
    aggregate(runs, root / "tables")
    return root, root / "tables"


def test_every_figure_kind_is_written(full_grid: tuple[Path, Path]) -> None:
    root, tables = full_grid
    written = make_figures(tables, root / "figures")
    names = {p.relative_to(root / "figures").as_posix() for p in written}
    for budget in (100, 1000):
        stem = f"synthetic__tiny-bert__b{budget}"
        for fmt in ("png", "pdf"):
            assert f"speed_accuracy/{stem}.{fmt}" in names
            assert f"speed_accuracy/{stem}__allrules.{fmt}" in names
            assert f"individual_exits/{stem}.{fmt}" in names
            assert f"gradient_conflict/{stem}.{fmt}" in names
            assert f"training_loss/{stem}.{fmt}" in names
    assert "speed_accuracy/overview.png" in names and "speed_accuracy/overview.pdf" in names
    for path in written:
        assert path.stat().st_size > 1000
    assert not list((root / "figures").rglob(".*tmp*"))  # nothing half-written left behind


def test_figures_are_byte_reproducible(tmp_path: Path) -> None:
    runs = write_fake_grid(tmp_path / "runs", tasks=("synthetic",), budgets=(100,), methods=("ee", "sweet"),
                           seeds=(1, 2))
    aggregate(runs, tmp_path / "tables")
    first = make_figures(tmp_path / "tables", tmp_path / "again1")
    second = make_figures(tmp_path / "tables", tmp_path / "again2")
    assert len(first) == len(second) == 12
    curves = pd.read_csv(tmp_path / "tables" / "curves.csv")
    for folder in ("svg1", "svg2"):
        first.append(_save(speed_accuracy_figure(curves), tmp_path / folder / "figure", ["svg"])[0])
    second.append(first.pop())
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_partial_grid_and_single_seed(tmp_path: Path) -> None:
    runs = write_fake_grid(tmp_path / "runs", tasks=("synthetic",), budgets=(100,), methods=("ee", "sweet"),
                           seeds=(1,))
    runs.append(tmp_path / "runs" / "synthetic" / "tiny-bert" / "b100" / "mm" / "s1")  # never finished
    written = aggregate(runs, tmp_path / "tables")
    assert written["missing_runs.txt"].read_text().strip().endswith("mm/s1: never started")
    figures = make_figures(tmp_path / "tables", tmp_path / "figures", formats=("png",))
    names = {p.name for p in figures}
    assert {"synthetic__tiny-bert__b100.png", "overview.png"} <= names
    assert (tmp_path / "figures" / "gradient_conflict" / "synthetic__tiny-bert__b100.png").is_file()


def test_no_runs_finished_still_makes_the_folders(tmp_path: Path) -> None:
    aggregate([tmp_path / "runs" / "never"], tmp_path / "tables")
    assert make_figures(tmp_path / "tables", tmp_path / "figures") == []
    for folder in ("speed_accuracy", "individual_exits", "gradient_conflict"):
        assert (tmp_path / "figures" / folder).is_dir()
