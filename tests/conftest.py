"""Fixtures shared by several test files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from sweet.plan.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The repository's config.yaml, read once per test file."""
    return load_config_file(ROOT / "config.yaml")


@pytest.fixture
def config(shipped: dict) -> dict:
    """A copy of config.yaml each test may change."""
    return copy.deepcopy(shipped)
