"""Experiment tracking while a run trains (``training.report_to``): the Trainer's own integrations, kept offline.

A missing package is a one-line error before anything slow; each integration logs into the run's ``tracking/``
folder (``sweet.plan.layout.tracking_dir``); nothing is sent over the network (compute nodes run offline).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from sweet.errors import UserError
from sweet.plan.settings import REPORT_TO_PACKAGES


def require_tracking_package(report_to: str) -> None:
    """Fail in one line, before any model is loaded, when the chosen integration's package is not installed (the
    Trainer would only say so after the model is built, in a traceback)."""
    package = REPORT_TO_PACKAGES[report_to]
    # The Trainer's TensorBoard callback also writes through tensorboardX when that is what is installed
    modules = (package, "tensorboardX") if report_to == "tensorboard" else (package,)
    if package is not None and all(importlib.util.find_spec(m) is None for m in modules):
        raise UserError(f"training.report_to: {report_to} needs the '{package}' package, which is not installed; "
                        f"`pip install {package}` in the training environment, or set training.report_to: none")


@contextlib.contextmanager
def tracking_environment(report_to: str, folder: str | Path):
    """The integration's environment while training: logs under ``folder`` and nothing sent over the network
    (compute nodes run offline). Variables the user set are kept: an explicit ``WANDB_MODE=online`` or a tracking
    server is theirs to choose. Restored afterwards, so one process can train several runs."""
    folder = Path(folder).resolve()
    defaults = {
        "none": {},
        "tensorboard": {"TENSORBOARD_LOGGING_DIR": str(folder / "tensorboard")},
        # wandb writes its offline run into WANDB_DIR/wandb/; `wandb sync` uploads it later, from a login node
        "wandb": {"WANDB_MODE": "offline", "WANDB_DIR": str(folder), "WANDB_PROJECT": "sweet"},
        # a local file store: without one, MLflow writes ./mlruns in whatever folder the job started in
        "mlflow": {"MLFLOW_TRACKING_URI": (folder / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": "sweet"},
    }[report_to]
    added = [name for name in defaults if name not in os.environ]
    if defaults:
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
