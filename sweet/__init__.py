"""sweet: Early-Exit, SWEET and Multi-Model adaptive inference for Hugging Face encoders.

Rotem, Hassid, Mamou & Schwartz, "Finding the SWEET Spot: Analysis and Improvement of Adaptive Inference in Low
Resource Settings", ACL 2023.
"""

from sweet.model import EarlyExitConfig, EarlyExitModel, ExitOutput
from sweet.multimodel import MultiModel

__all__ = ["EarlyExitConfig", "EarlyExitModel", "ExitOutput", "MultiModel"]
__version__ = "0.1.0"
