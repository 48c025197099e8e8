"""Read back what a `snakemake --profile slurm` run submitted, from Slurm itself, and check it.

    python .ci/check_slurm_jobs.py SNAKEMAKE_LOG --max-minutes 60 --max-mem-mb 6000 [--gpus 1]

The run's jobs are found by the job name the executor gives every job of one invocation (its "SLURM run ID",
printed in the snakemake log); `scontrol show job` says what each asked for (MinJobAge keeps finished jobs
visible). Every training, calibration and evaluation job must have asked for the GPUs and none for more time or
memory than the partition's caps; nothing else may have been submitted (cheap steps run on the submit host).
Exit code 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

GPU_RULES = ("train", "train_member", "evaluate")  # `evaluate` = the calibrate+evaluate group


def run_id(log: Path) -> str:
    match = re.search(r"SLURM run ID: (\S+)", log.read_text(errors="replace"))
    if match is None:
        raise SystemExit(f"{log}: no 'SLURM run ID' line; was it a --profile slurm run?")
    return match.group(1)


def submitted_jobs(name: str) -> list[dict[str, str]]:
    """Every job (array tasks included) of one snakemake invocation, as scontrol's key=value fields."""
    ids = subprocess.run(["squeue", "-h", "-t", "all", "-r", "-n", name, "-o", "%i"], capture_output=True,
                         text=True, check=True).stdout.split()
    jobs = []
    for job_id in ids:
        text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                              check=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", text))
        fields["Comment"] = re.search(r"Comment=(\S*)", text).group(1) if "Comment=" in text else ""
        jobs.append(fields)
    return jobs


def rule_of(job: dict[str, str]) -> str:
    """The rule (or group) the executor named in the job's comment: rule_<name>[_wildcards_…]."""
    comment = job.get("Comment", "")
    match = re.match(r"rule_(.+?)(_wildcards_.*)?$", comment)
    return match.group(1) if match else comment


def minutes(limit: str) -> int:
    """Slurm's [days-]hours:minutes:seconds as whole minutes (rounded up)."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, mins, secs = parts
    return (int(days or 0) * 24 + hours) * 60 + mins + (1 if secs else 0)


def mem_mb(value: str) -> int:
    number, unit = re.match(r"(\d+)([KMGT]?)", value).groups()
    return int(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit]


def gpus_asked(job: dict[str, str]) -> int:
    tres = " ".join(job.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask"))
    match = re.search(r"gres:gpu(?::[\w.]+)?:(\d+)", tres)
    return int(match.group(1)) if match else 0


def check(jobs: list[dict[str, str]], max_minutes: int, max_mem: int, gpus: int) -> list[str]:
    problems = []
    if not jobs:
        return ["no submitted jobs found"]
    for job in jobs:
        rule, ident = rule_of(job), f"job {job.get('JobId')} ({job.get('Comment')})"
        if not any(rule == r or rule.startswith(r + "_") for r in GPU_RULES):
            problems.append(f"{ident}: rule '{rule}' should run on the submit host, not be submitted")
        if gpus_asked(job) != gpus:
            problems.append(f"{ident}: asked for {gpus_asked(job)} GPUs, expected {gpus} "
                            f"(TresPerJob={job.get('TresPerJob')}, TresPerNode={job.get('TresPerNode')})")
        if minutes(job.get("TimeLimit", "0")) > max_minutes:
            problems.append(f"{ident}: time limit {job.get('TimeLimit')} exceeds the cap of {max_minutes} min")
        if mem_mb(job.get("MinMemoryNode", "0")) > max_mem:
            problems.append(f"{ident}: memory {job.get('MinMemoryNode')} exceeds the cap of {max_mem} MB")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the snakemake log of the run (.snakemake/log/*.snakemake.log)")
    parser.add_argument("--max-minutes", type=int, required=True)
    parser.add_argument("--max-mem-mb", type=int, required=True)
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args()
    jobs = submitted_jobs(run_id(args.log))
    problems = check(jobs, args.max_minutes, args.max_mem_mb, args.gpus)
    rules = sorted({rule_of(j) for j in jobs})
    print(f"{len(jobs)} submitted jobs ({', '.join(rules)}): "
          f"{'OK' if not problems else f'{len(problems)} problems'}")
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
