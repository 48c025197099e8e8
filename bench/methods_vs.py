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
from sweet.reporting.statistics import METHOD_TARGETS, method_measures_per_seed, t_interval  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", type=Path, help="results/<grid>/tables")
    parser.add_argument("--reference", default="sweet")
    parser.add_argument("--targets", default=",".join(str(t) for t in METHOD_TARGETS))
    args = parser.parse_args()
    curves = pd.read_csv(args.tables / "curves.csv")
    exits = pd.read_csv(args.tables / "individual_exits.csv")
    targets = [float(t) for t in args.targets.split(",")]
    per_seed = method_measures_per_seed(curves, exits, "confidence", targets)
    per_seed = per_seed[per_seed["measure"] != "exit"]
    rows = []
    keys = [*GROUP_KEYS, "measure", "speedup"]
    for key, group in per_seed.groupby(keys, dropna=False, sort=False):
        wide = group.pivot_table(index="seed", columns="method", values="value")
        if args.reference not in wide:
            continue
        for method in wide.columns:
            if method == args.reference:
                continue
            diff = (wide[method] - wide[args.reference]).dropna()
            mean, low, high, n = t_interval(diff.to_numpy())
            rows.append({**dict(zip(keys, key)), "method": method, "delta_pts": 100 * mean,
                         "ci_low_pts": 100 * low, "ci_high_pts": 100 * high, "n_seeds": n})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(f"Δ vs {args.reference} (points; 95 % t interval over seed-paired differences)")
        print(table.drop(columns=list(GROUP_KEYS)).to_string(index=False, float_format=lambda v: f"{v:+.2f}"))


if __name__ == "__main__":
    main()
