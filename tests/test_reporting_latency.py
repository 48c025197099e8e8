"""tables/latency.csv, the report's latency section and its figure, from fake runs' latency.csv (test_figures'
fake grid); a grid without latency.csv gets neither table nor section."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from test_figures import write_fake_grid

from sweet.plan.layout import LATENCY
from sweet.reporting.collect import LATENCY_COLUMNS, LATENCY_RUN_COLUMNS, RUN_KEYS
from sweet.reporting.figures import make_figures
from sweet.reporting.report import make_report
from sweet.reporting.tables import aggregate


def _fake_latency(run: Path, speed: float) -> None:
    rows = []
    for batch_size in (1, 32):
        common = {"batch_size": batch_size, "device": "CPU: fake", "examples": 64, "full_model": "last exit alone",
                  "compiled": False}
        rows.append({"strategy": "", "threshold": float("nan"), "source": "full", "risk": "", "epsilon": float("nan"),
                     "target_speedup": float("nan"), **common, "ms_per_example": 2.0, "measured_speedup": 1.0,
                     "theoretical_speedup": 1.0})
        for target in (1.5, 2.0):
            rows.append({"strategy": "confidence", "threshold": 0.9, "source": "held-out", "risk": "",
                         "epsilon": float("nan"), "target_speedup": target, **common,
                         "ms_per_example": 2.0 / (target * speed), "measured_speedup": target * speed,
                         "theoretical_speedup": target})
        rows.append({"strategy": "confidence", "threshold": 0.95, "source": "risk-control", "risk": "disagreement",
                     "epsilon": 0.05, "target_speedup": float("nan"), **common, "ms_per_example": 1.5,
                     "measured_speedup": 1.33, "theoretical_speedup": 1.4})
    pd.DataFrame(rows, columns=LATENCY_RUN_COLUMNS).to_csv(run / LATENCY, index=False)


def test_latency_table_section_and_figure(tmp_path: Path) -> None:
    runs = write_fake_grid(tmp_path / "runs", tasks=("synthetic",), budgets=(1000,), seeds=(1,))
    # without latency.csv: no table, no section
    aggregate(runs, tmp_path / "plain")
    assert not (tmp_path / "plain" / "latency.csv").exists()
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "index.json").write_text('{"strategy": "confidence", "figures": []}')
    html = make_report(tmp_path / "plain", tmp_path / "none", tmp_path / "plain.html").read_text()
    assert "Measured latency" not in html
    for k, run in enumerate(runs):
        _fake_latency(run, 0.8 + 0.05 * k)
    aggregate(runs, tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / "latency.csv")
    assert list(table.columns) == LATENCY_COLUMNS
    assert len(table) == len(runs) * 8
    assert set(table["method"]) == {"ee", "sweet", "mm"} and set(table["seed"]) == {1}
    assert not table[RUN_KEYS].isna().any().any()
    written = make_figures(tmp_path / "tables", tmp_path / "figures", formats=("png",))
    assert tmp_path / "figures" / "latency" / "measured_vs_theoretical.png" in written
    html = make_report(tmp_path / "tables", tmp_path / "figures", tmp_path / "report.html").read_text()
    assert "Measured latency" in html and "measured speedup" in html and "CPU: fake" in html
