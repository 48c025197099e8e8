"""Which runs a grid names, which of them finished, and why the others did not.

Standard library only: the Snakefile imports this module while it plans (to find the grid whose runs finished
last, and to notice when more runs of a partial grid have finished), and planning must stay fast.

The layout is the workflow's: a run lives in ``results/runs/<task>/<model folder>/b<budget>/<method>/s<seed>/``
and each of its steps logs to ``results/logs/<step>/<the same five parts>.log`` (an MM member's training to
``results/logs/train_member/<the five parts>/member_<k>.log``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sweet.config import RESULTS, slug

FINAL_FILES = ("curves.csv", "individual_exits.csv")  # a run is finished when both exist
# A run's steps in workflow order, with the file each leaves in the run folder (None: nothing that lasts; MM's
# combined model/ is deleted once evaluated). MM trains members instead of one model, EE/SWEET need no combine.
STEPS: tuple[tuple[str, str | None], ...] = (
    ("split", "splits.json"),
    ("train", "train_metrics.json"),
    ("train_member", "members"),
    ("combine", None),
    ("calibrate", "temperatures.json"),
    ("evaluate", "logits.npz"),
    ("curves", "curves.csv"),
)
NOT_FOR = {"mm": {"train"}, "ee": {"train_member", "combine"}, "sweet": {"train_member", "combine"}}
LOG_TAIL_BYTES = 64 * 1024  # an error is at the end of a log; training logs can be long


@dataclass(frozen=True)
class RunStatus:
    """Where one run stands: ``finished``, ``failed`` (a step's log ends in an error), ``not finished`` (started,
    stopped without an error: still running, or killed) or ``never started``."""

    run: str
    status: str
    step: str = ""
    log: str = ""
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def describe(self) -> str:
        """One line for missing_runs.txt and the report."""
        if self.status == "failed":
            return f"{self.run}: failed at {self.step}: {self.detail} (read {self.log})"
        if self.status == "not finished":
            where = f"read {self.log}" if self.log else "no log yet"
            return (f"{self.run}: not finished, stopped at {self.step} (still running, or killed by a time or "
                    f"memory limit or pre-emption; {where}, and on a cluster .snakemake/slurm_logs/)")
        return f"{self.run}: {self.status}"


def grid_runs(config: dict, grid: str, root: str = RESULTS) -> list[str]:
    """The run folders a grid names, in the workflow's order (task, model, budget, method, seed)."""
    axes = config["grids"][grid]
    return [
        f"{root}/runs/{task}/{slug(model)}/b{budget}/{method}/s{seed}"
        for task in axes["tasks"]
        for model in axes["models"]
        for budget in axes["budgets"]
        for method in axes["methods"]
        for seed in axes["seeds"]
    ]


def is_finished(run: str | Path) -> bool:
    return all((Path(run) / name).is_file() for name in FINAL_FILES)


def default_logs_root(run: str | Path) -> Path | None:
    """results/logs beside results/runs, when ``run`` sits in the workflow's layout."""
    run = Path(run)
    if len(run.parts) < 6 or run.parents[4].name != "runs":
        return None
    return run.parents[5] / "logs"


def run_status(run: str | Path, logs_root: str | Path | None = None) -> RunStatus:
    """Where ``run`` stands, read from its folder and its steps' logs (``logs_root``: results/logs by default)."""
    run = Path(run)
    name = run.as_posix()
    if is_finished(run):
        return RunStatus(name, "finished")
    root = Path(logs_root) if logs_root is not None else default_logs_root(run)
    logs = _step_logs(run, root) if root is not None else []
    for step, log in logs:
        detail = _error_line(log)
        if detail:
            return RunStatus(name, "failed", _step_name(step, log), log.as_posix(), detail)
    steps = [s for s in STEPS if s[0] not in NOT_FOR.get(run.parts[-2], set())]
    done = [i for i, (step, evidence) in enumerate(steps) if evidence and _has_evidence(run, step, evidence, logs)]
    if not done and not logs:
        return RunStatus(name, "never started")
    # The first step after the last one that left its file; its log, or the last log written.
    stopped = steps[min(max(done, default=-1) + 1, len(steps) - 1)][0]
    stopped_logs = [log for step, log in logs if step == stopped]
    log = stopped_logs[-1] if stopped_logs else (logs[-1][1] if logs else None)
    return RunStatus(name, "not finished", stopped, log.as_posix() if log else "")


def last_finished_grid(config: dict, root: str = RESULTS) -> tuple[str, int, int] | None:
    """``(grid, finished runs, runs)`` of the configured grid whose runs finished last, or None when no run of any
    grid has finished. Runs are shared between grids: when the newest run belongs to several, the grid with more
    finished runs wins, then the more complete one."""
    best: tuple | None = None
    for grid in sorted(config["grids"]):
        runs = grid_runs(config, grid, root)
        finished = [Path(r) for r in runs if is_finished(r)]
        if not finished:
            continue
        newest = max((r / FINAL_FILES[0]).stat().st_mtime_ns for r in finished)
        key = (newest, len(finished), len(finished) / len(runs))
        if best is None or key > best[0]:
            best = (key, grid, len(finished), len(runs))
    return None if best is None else best[1:]


def runs_fingerprint(runs: list[str], logs_root: str | Path | None = None) -> str:
    """A short digest of which runs finished (and when their files were written) and why the others did not:
    it changes exactly when tables drawn from the finished runs would change."""
    digest = hashlib.sha256()
    for run in runs:
        status = run_status(run, logs_root)
        digest.update(f"{run}\t{status.status}\t{status.step}\t{status.detail}\n".encode())
        if status.finished:
            for name in (*FINAL_FILES, "gradient_conflict.csv"):
                path = Path(run) / name
                if path.is_file():
                    stat = path.stat()
                    digest.update(f"{name}\t{stat.st_mtime_ns}\t{stat.st_size}\n".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ internals
def _step_logs(run: Path, logs_root: Path) -> list[tuple[str, Path]]:
    """The logs the run's steps have written, in workflow order."""
    rel = Path(*run.parts[-5:])
    found = []
    for step, _ in STEPS:
        if step == "train_member":
            members = (logs_root / step / rel).glob("member_*.log")
            found += [(step, p) for p in sorted(members, key=_member_number)]
        elif (logs_root / step / f"{rel}.log").is_file():
            found.append((step, logs_root / step / f"{rel}.log"))
    return found


def _member_number(path: Path) -> int:
    match = re.search(r"member_(\d+)", path.name)
    return int(match.group(1)) if match else 0


def _step_name(step: str, log: Path) -> str:
    return f"train (MM member {_member_number(log)})" if step == "train_member" else step


def _has_evidence(run: Path, step: str, evidence: str, logs: list[tuple[str, Path]]) -> bool:
    if step == "train_member":  # every member that started training has written its record
        records = list((run / evidence).glob("member_*.json"))
        started = [log for s, log in logs if s == step]
        return bool(records) and len(records) >= len(started)
    return (run / evidence).exists()


def _error_line(log: Path) -> str:
    """The error a log ends with: an ``error: …`` line (a user error) or a traceback's last line; else ""."""
    with open(log, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
        lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return lines[-1]
    return ""
