"""Every method of a finished grid against one reference method, seed-paired: what methods.csv does against EE.

    python bench/methods_vs.py results/<grid>/tables --reference sweet

Reads the grid's curves.csv and individual_exits.csv and prints, per setting and measure (mean over exits, AUC,
score at each target speedup), the mean seed-paired difference to the reference with its 95 % Student-t
interval, in points (×100 of the score).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from sweet.reporting.collect import GROUP_KEYS  # noqa: E402
from sweet.reporting.statistics import METHOD_TARGETS, methods_summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, help="results/<grid>/tables")
    parser.add_argument("--reference", default="sweet")
    parser.add_argument("--targets", default=",".join(str(t) for t in METHOD_TARGETS))
    args = parser.parse_args()
    curves = pd.read_csv(args.tables / "curves.csv")
    exits = pd.read_csv(args.tables / "individual_exits.csv")
    targets = [float(t) for t in args.targets.split(",")]
    summary = methods_summary(curves, exits, "confidence", targets, reference=args.reference)
    table = summary[(summary["measure"] != "exit") & (summary["n_paired"] > 0)]
    table = pd.DataFrame({"measure": table["measure"], "speedup": table["speedup"], "method": table["method"],
                          "delta_pts": 100 * table["delta_vs_ee"], "ci_low_pts": 100 * table["ci_low"],
                          "ci_high_pts": 100 * table["ci_high"], "n_seeds": table["n_paired"],
                          **{key: table[key] for key in GROUP_KEYS}})
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(f"Δ vs {args.reference} (points; 95 % t interval over seed-paired differences)")
        print(table.drop(columns=list(GROUP_KEYS)).to_string(index=False, float_format=lambda v: f"{v:+.2f}"))


if __name__ == "__main__":
    main()
