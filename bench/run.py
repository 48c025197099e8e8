"""Benchmarks of issue 7: `python bench/run.py [--quick] [--csv FILE] [--markdown FILE] [--only ID ...]`.

Every ratio is taken side by side in one run on this machine; see BENCHMARKS.md for the protocol and results.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

# This checkout's `sweet` (not whatever an editable install elsewhere points at) and the bench helpers.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from _common import Row, machine  # noqa: E402

from sweet import methods  # noqa: E402

GROUPS = {
    "curve": ("curve_eval_efficiency", "curve_eval_speedup", "curve_eval_speedup_101"),
    "early_exit": ("early_exit_efficiency_bs1", "early_exit_flops_efficiency_bs1", "early_exit_efficiency_bs32",
                   "early_exit_flops_efficiency_bs32"),
    "classifier": ("classifier_efficiency_bs1", "classifier_flops_efficiency_bs1", "classifier_efficiency_bs32",
                   "classifier_flops_efficiency_bs32"),
    "train": ("train_step_overhead", *(f"train_step_{m}" for m in methods.names("joint")), "train_mm_cost_vs_ee",
              "gradient_conflict_overhead"),
    "gpu": ("cpu_segments_efficiency_bs1", "cpu_segments_efficiency_bs32", "cpu_compiled_efficiency_bs1",
            "cpu_compiled_efficiency_bs32", "cpu_compiled_vs_hook_bs1", "cpu_compiled_vs_hook_bs32",
            "gpu_efficiency_bs1", "gpu_efficiency_bs32", "gpu_eager_efficiency_bs1", "gpu_eager_efficiency_bs32", "gpu_agreement_bf16", "gpu_agreement_fp16"),
    "train_ops": ("train_ops_ee_fp32", "train_ops_sweet_fp32", "train_ops_ee_bf16", "train_ops_sweet_bf16"),
    "dryrun": ("paper_dryrun_seconds",),
    "demo": ("demo_grid_seconds", "demo_grid_peak_rss"),
    "cluster": ("train_job_seconds", "train_estimate_ratio", "train_throughput"),
}


def run_group(group: str, quick: bool, keep_demo: Path | None = None) -> list[Row]:
    if group == "curve":
        from curve_eval import bench_curve_eval

        return bench_curve_eval(n_examples=400 if quick else 2000, n_sub101=30 if quick else 150,
                                project_reps=2 if quick else 5)
    if group == "early_exit":
        from early_exit import bench_early_exit

        return bench_early_exit(n_bs1=40 if quick else 300, n_bs32=128 if quick else 640, reps=3 if quick else 5)
    if group == "classifier":
        from classifier import bench_classifier

        return bench_classifier(n_bs1=40 if quick else 160, n_bs32=128 if quick else 384, reps=3 if quick else 5)
    if group == "gpu":
        from gpu import bench_gpu

        return bench_gpu(n_bs1=20 if quick else 300, n_bs32=64 if quick else 640, reps=3 if quick else 5)
    if group == "train_ops":
        from train_ops import bench_train_ops

        return bench_train_ops()
    if group == "train":
        from train_step import bench_train_step

        return bench_train_step(min_rounds=3 if quick else 8, max_seconds=150 if quick else 1200)
    if group == "dryrun":
        from workflow_bench import bench_dryrun

        return bench_dryrun()
    if group == "cluster":
        from train_job import bench_train_job

        return bench_train_job(budget=128 if quick else 512, threads=torch.get_num_threads())
    if group == "demo":
        if quick:
            return [Row(i, math.nan, "<=600" if i == "demo_grid_seconds" else "-", "s" if i == "demo_grid_seconds" else "MiB",
                        "skipped in --quick (the grid alone may take 10 minutes); run `python bench/run.py --only demo_grid_seconds`")
                    for i in GROUPS["demo"]]
        from workflow_bench import bench_demo_grid

        return bench_demo_grid(keep=keep_demo)
    raise ValueError(group)


def fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def markdown(rows: list[Row], info: dict[str, str], command: str) -> str:
    lines = [f"Command: `{command}`", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             "| id | value | goal | met | unit | detail |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r.id}` | {fmt(r.value)} | {r.goal} | {r.met()} | {r.unit} | {r.detail} |" for r in rows]
    for r in rows:
        for name, table in r.extra.items():
            lines += ["", f"**{r.id}: {name.replace('_', ' ')}**", ""]
            if isinstance(table, dict):
                lines += ["| " + " | ".join(table) + " |", "|" + "---|" * len(table), "| " + " | ".join(map(str, table.values())) + " |"]
            else:
                keys = list(table[0])
                lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(str(item.get(k, "")) for k in keys) + " |" for item in table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples and fewer repetitions (< 10 minutes)")
    parser.add_argument("--csv", type=Path, help="write rows id,value,goal,unit,detail to this file")
    parser.add_argument("--markdown", type=Path, help="write the table and per-threshold details as markdown")
    parser.add_argument("--only", nargs="+", metavar="ID", help="row ids (or groups: " + ", ".join(GROUPS) + ")")
    parser.add_argument("--keep-demo", type=Path, metavar="DIR",
                        help="copy the demo grid's results/ (tables, figures) here after timing it")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the machine's cores)")
    args = parser.parse_args(argv)
    known = {i for ids in GROUPS.values() for i in ids} | set(GROUPS)
    for name in args.only or []:
        if name not in known:
            parser.error(f"--only: unknown id '{name}'; known: {', '.join(sorted(known))}")
    groups = [g for g, ids in GROUPS.items() if not args.only or g in args.only or set(ids) & set(args.only)]
    torch.set_num_threads(args.threads)
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    for group in groups:
        t0 = time.perf_counter()
        new = run_group(group, args.quick, args.keep_demo)
        rows += [r for r in new if not args.only or group in args.only or r.id in args.only]
        for r in new:
            print(f"  {r.id:<28} {fmt(r.value):>8} goal {r.goal:<7} [{r.met()}] {r.unit:<8} {r.detail}", flush=True)
        print(f"  ({group}: {time.perf_counter() - t0:.0f} s)", flush=True)
    info["load_average_end"] = machine()["load_average"]
    info["total_seconds"] = f"{time.perf_counter() - start:.0f}"
    print()
    print(f"{'id':<28} {'value':>8}  {'goal':<7} {'met':<4} unit")
    for r in rows:
        print(f"{r.id:<28} {fmt(r.value):>8}  {r.goal:<7} {r.met():<4} {r.unit}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "value", "goal", "unit", "detail"])
            writer.writerows([r.id, f"{r.value:.6g}", r.goal, r.unit, r.detail] for r in rows)
    if args.markdown:
        command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.markdown.write_text(markdown(rows, info, command.strip()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
