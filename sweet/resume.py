"""Resuming a training job that was stopped: by a signal (Slurm's warning before its time limit, scancel,
pre-emption), then a checkpoint and a retry; or killed outright, then the newest complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

CONFLICT_ROWS = "gradient_conflict_rows.json"  # the probe's rows so far, saved in each checkpoint (sweet.train.ExitTrainer)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerunning the same command resumes from it."""

    exit_code = 75  # EX_TEMPFAIL: try again


class CheckpointOnSignal(TrainerCallback):
    """SIGTERM or SIGUSR1 → save a checkpoint at the next logging step, then stop training.

    Slurm sends SIGTERM when a job is cancelled or pre-empted and, with ``--signal=TERM@<seconds>`` (the workflow
    asks for it), that long before the time limit; SIGKILL follows after the cluster's KillWait. Stopping at a
    logging step rather than at once keeps the resumed run's logged losses, and so its training record, identical
    to an uninterrupted run's; logging steps are at most 10 optimizer steps apart, so the checkpoint comes soon.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> CheckpointOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"received {self.received}: checkpointing at the next logging step, then stopping",
                  file=sys.stderr, flush=True)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.received and state.global_step % args.logging_steps == 0 and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def last_complete_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint a killed job finished writing (the Trainer writes its state file last).

    The Trainer does not write checkpoints atomically, so a job killed while saving leaves a partial folder;
    resuming must skip it rather than crash on it.
    """
    folder = Path(work_dir)
    if not folder.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            shutil.rmtree(path, ignore_errors=True)
            continue
        if (path / "rng_state.pth").is_file() and (path / "optimizer.pt").is_file():
            return str(path)
    return None
