"""sweet: Early-Exit, SWEET and Multi-Model adaptive inference for Hugging Face encoders.

Rotem, Hassid, Mamou & Schwartz, "Finding the SWEET Spot: Analysis and Improvement of Adaptive Inference in Low
Resource Settings", ACL 2023.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweet.classifier import EarlyExitClassifier, load_classifier
    from sweet.model import EarlyExitConfig, EarlyExitModel, ExitOutput
    from sweet.multimodel import MultiModel

__all__ = ["EarlyExitClassifier", "EarlyExitConfig", "EarlyExitModel", "ExitOutput", "MultiModel", "load_classifier"]
__version__ = "0.1.0"

# The public classes pull in torch and transformers (seconds to import). They load on first access so that the
# light modules (sweet.plan.config, sweet.reporting) stay fast for Snakemake's parse step and the table/figure rules.
_LAZY = {
    "EarlyExitClassifier": "sweet.classifier",
    "load_classifier": "sweet.classifier",
    "EarlyExitConfig": "sweet.model",
    "EarlyExitModel": "sweet.model",
    "ExitOutput": "sweet.model",
    "MultiModel": "sweet.multimodel",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sweet' has no attribute {name!r}")
