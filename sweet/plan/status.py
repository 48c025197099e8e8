"""Which runs a grid names, which of them finished, and why the others did not.

Standard library only (and ``sweet.plan.layout``, ``sweet.methods``): the Snakefile imports this module while it
plans (to find the grid whose runs finished last, and to notice when more runs of a partial grid have finished),
and planning must stay fast.

Every path is ``sweet.plan.layout``'s: a run is given by its *calibrated* folder, whose parent holds the training
(``layout.training_dir``); each step's log is ``layout.step_log``'s. A folder that holds everything itself
(hand-made, or the layout before run ids) is read the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sweet.methods import METHODS
from sweet.plan import layout
from sweet.plan.layout import (
    grid_runs,
    legacy_dir_of,
    logs_root_of,
    member_logs,
    member_number,
    method_folder,
    record_mismatch,
    run_file,
    step_log,
    training_dir,
)

FINAL_FILES = (layout.CURVES, layout.EXITS)  # a run is finished when both exist
# A run's steps in workflow order, with the file each leaves in the run folder (None: nothing that lasts; MM's
# combined model/ is deleted once evaluated). MM trains members instead of one model, EE/SWEET need no combine.
STEPS: tuple[tuple[str, str | None], ...] = (
    ("split", layout.SPLITS),
    ("train", layout.TRAIN_METRICS),
    ("train_member", layout.MEMBERS),
    ("combine", None),
    ("calibration_split", layout.CALIBRATION_SPLIT),
    ("calibrate", layout.TEMPERATURES),
    ("evaluate", layout.LOGITS),
    ("curves", layout.CURVES),
    ("operating_points", layout.OPERATING_POINTS),
)
CALIBRATED_STEPS = ("calibration_split", "calibrate", "evaluate", "curves", "operating_points")  # their files: the calibrated folder
# From the registry's layouts: a per-exit method (MM) trains members and combines them, never one model; a joint
# one trains one model and has nothing to combine. A method the registry does not know is expected at every step.
NOT_FOR: dict[str, set[str]] = {name: ({"train"} if method.per_exit else {"train_member", "combine"})
                                for name, method in METHODS.items()}
LOG_TAIL_BYTES = 64 * 1024  # an error is at the end of a log; training logs can be long


@dataclass(frozen=True)
class RunStatus:
    """Where one run stands: ``finished``, ``failed`` (a step's log ends in an error), ``not finished`` (started,
    stopped without an error: still running, or killed), ``never started``, or ``other settings`` (the folder
    holds results whose recorded run id is not the one the grid asks for: never counted as the grid's)."""

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
        if self.status == "other settings":
            return f"{self.run}: not this grid's run: {self.detail}"
        if self.detail:
            return f"{self.run}: {self.status} ({self.detail})"
        return f"{self.run}: {self.status}"


def grid_spec_runs(grid: dict) -> list[tuple[str, str]]:
    """``(calibrated folder, run id)`` of every run a grid spec names (sweet.plan.layout.grid_spec), in its order."""
    return [(run["calibrated_dir"], run["run_id"]) for run in grid.get("runs", [])]


def is_finished(run: str | Path) -> bool:
    return all((Path(run) / name).is_file() for name in FINAL_FILES)


def run_status(run: str | Path, logs_root: str | Path | None = None, expected_id: str | None = None) -> RunStatus:
    """Where ``run`` stands, read from its folders and its steps' logs (``logs_root``: results/logs by default).
    With ``expected_id`` (the run id the grid asks for), a folder recording another id is ``other settings``."""
    run = Path(run)
    name = run.as_posix()
    if expected_id is not None:
        mismatch = record_mismatch(training_dir(run), expected_id)
        if mismatch:
            return RunStatus(name, "other settings", detail=mismatch)
    if is_finished(run):
        return RunStatus(name, "finished")
    root = Path(logs_root) if logs_root is not None else logs_root_of(run)
    logs = _step_logs(run, root) if root is not None else []
    for step, log in logs:
        detail = _error_line(log)
        if detail:
            return RunStatus(name, "failed", _step_name(step, log), log.as_posix(), detail)
    method = method_folder(run)
    steps = [s for s in STEPS if s[0] not in NOT_FOR.get(method, set())]
    done = [i for i, (step, evidence) in enumerate(steps) if evidence and _has_evidence(run, step, evidence, logs)]
    if not done and not logs:
        legacy = legacy_dir_of(run)
        if legacy is not None and is_finished(legacy):
            return RunStatus(name, "never started", detail=f"results of the layout before run ids are in {legacy}: "
                             "`python -m sweet migrate-runs` moves them here")
        return RunStatus(name, "never started")
    # The first step after the last one that left its file; its log, or the last log written.
    stopped = steps[min(max(done, default=-1) + 1, len(steps) - 1)][0]
    stopped_logs = [log for step, log in logs if step == stopped]
    log = stopped_logs[-1] if stopped_logs else (logs[-1][1] if logs else None)
    return RunStatus(name, "not finished", stopped, log.as_posix() if log else "")


def last_finished_grid(config: dict, models: dict, gpus: int = 0) -> tuple[str, int, int] | None:
    """``(grid, finished runs, runs)`` of the configured grid whose runs finished last, or None when no run of any
    grid has finished. Runs are shared between grids: when the newest run belongs to several, the grid with more
    finished runs wins, then the more complete one."""
    best: tuple | None = None
    for grid in sorted(config["grids"]):
        runs = [r.calibrated_dir for r in grid_runs(config, grid, models, gpus)]
        finished = [Path(r) for r in runs if is_finished(r)]
        if not finished:
            continue
        newest = max((r / FINAL_FILES[0]).stat().st_mtime_ns for r in finished)
        key = (newest, len(finished), len(finished) / len(runs))
        if best is None or key > best[0]:
            best = (key, grid, len(finished), len(runs))
    return None if best is None else best[1:]


def runs_fingerprint(runs: list[tuple[str, str]], logs_root: str | Path | None = None) -> str:
    """A short digest of which runs (calibrated folder, run id) finished, and when their files were written, and
    why the others did not: it changes exactly when tables drawn from the finished runs would change."""
    digest = hashlib.sha256()
    for run, expected_id in runs:
        status = run_status(run, logs_root, expected_id)
        digest.update(f"{run}\t{status.status}\t{status.step}\t{status.detail}\n".encode())
        if status.finished:
            for name in (*FINAL_FILES, layout.GRADIENT_CONFLICT):
                path = run_file(run, name)
                if path.is_file():
                    stat = path.stat()
                    digest.update(f"{name}\t{stat.st_mtime_ns}\t{stat.st_size}\n".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ internals
def _step_logs(run: Path, logs: Path) -> list[tuple[str, Path]]:
    """The logs the run's steps have written, in workflow order."""
    found = []
    for step, _ in STEPS:
        if step == "train_member":
            found += [(step, path) for path in member_logs(logs, step, run)]
        else:
            path = step_log(logs, step, run, calibrated=step in CALIBRATED_STEPS)
            if path.is_file():
                found.append((step, path))
    return found


def _step_name(step: str, log: Path) -> str:
    return f"train (MM member {member_number(log)})" if step == "train_member" else step


def _has_evidence(run: Path, step: str, evidence: str, logs: list[tuple[str, Path]]) -> bool:
    if step not in CALIBRATED_STEPS:
        run = training_dir(run)
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
