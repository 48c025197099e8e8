"""Workflow timings: the paper grid's dry run and the default (demo) grid end to end on a fresh copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import REPO, Row


def _unavailable(row_id: str, goal: str, unit: str, why: str) -> Row:
    return Row(row_id, float("nan"), goal, unit, f"not available: {why}")


def _job_count(text: str) -> int | None:
    match = re.search(r"^total\s+(\d+)", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def bench_dryrun(timeout: int = 300) -> list[Row]:
    if not (REPO / "workflow" / "Snakefile").is_file():
        return [_unavailable("paper_dryrun_seconds", "<=15", "s", "workflow/Snakefile missing")]
    start = time.perf_counter()
    try:
        proc = subprocess.run(["snakemake", "-n", "--config", "grid=paper"], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [_unavailable("paper_dryrun_seconds", "<=15", "s", f"timed out after {timeout} s")]
    except OSError as err:
        return [_unavailable("paper_dryrun_seconds", "<=15", "s", f"snakemake not runnable ({err})")]
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        return [_unavailable("paper_dryrun_seconds", "<=15", "s", f"snakemake -n failed (exit {proc.returncode}): {last[0]}")]
    jobs = _job_count(proc.stdout + proc.stderr)
    return [Row("paper_dryrun_seconds", elapsed, "<=15", "s", f"`snakemake -n --config grid=paper`: {jobs} jobs")]


def _elapsed_seconds(text: str) -> float | None:
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not match:
        return None
    seconds = 0.0
    for part in match.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def bench_demo_grid(timeout: int = 1800, keep: Path | None = None) -> list[Row]:
    ids = ("demo_grid_seconds", "<=600", "s")
    if not (REPO / "workflow" / "Snakefile").is_file():
        return [_unavailable(*ids, "workflow/Snakefile missing"), _unavailable("demo_grid_peak_rss", "-", "MiB", "no workflow")]
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    with tempfile.TemporaryDirectory(prefix="sweet-demo-") as tmp:
        copy = Path(tmp) / "repo"
        for name in filter(None, listed):
            source = REPO / name
            if source.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name)
        try:
            proc = subprocess.run(["/usr/bin/time", "-v", "snakemake", "--cores", "2"], cwd=copy, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [_unavailable(*ids, f"timed out after {timeout} s")]
        seconds = _elapsed_seconds(proc.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if proc.returncode != 0 or seconds is None:
            tail = [line for line in proc.stderr.splitlines() if "rror" in line][-1:] or [f"exit {proc.returncode}"]
            return [_unavailable(*ids, f"snakemake --cores 2 failed: {tail[0][:200]}")]
        jobs = _job_count(proc.stdout + proc.stderr)
        if keep is not None:  # after timing: the copy does not count
            shutil.copytree(copy / "results", keep, dirs_exist_ok=True)
        rss_mib = int(rss.group(1)) / 1024 if rss else float("nan")
        return [
            Row("demo_grid_seconds", seconds, "<=600", "s", f"`snakemake --cores 2` on a fresh copy of the tree, {jobs} jobs"),
            Row("demo_grid_peak_rss", rss_mib, "-", "MiB", "/usr/bin/time -v maximum resident set size (largest single "
                "process among snakemake and the jobs it waited for)"),
        ]
