"""Shared fixtures: the reference data in ../shared/data and tiny study files in tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import shared_data

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the Hub
# an empty Hugging Face cache: what a test sees must not depend on what this machine happens to have cached
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ftvar-test-hf-")
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["FTVAR_CACHE"] = tempfile.mkdtemp(prefix="ftvar-test-cache-")  # model digests (the study hash)
for _folder in (os.environ["HF_HOME"], os.environ["FTVAR_CACHE"]):  # this process's, gone when it ends
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (`-n 2 --dist loadgroup`, as scripts/test.sh runs the suite): the tests that use the
    SLURM dev cluster or the podman image run one after another in one worker (they share the cluster's queue
    and time it), every other test file in one worker of its own (its module fixtures are built once)."""
    for item in items:
        shared = (
            "cluster" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("slurm")
            or item.get_closest_marker("container")
        )
        item.add_marker(pytest.mark.xdist_group("cluster" if shared else item.path.stem))


@pytest.fixture
def sst2() -> Path:
    return shared_data("sst2")


TINY_STUDY = """
name = "{name}"
[model]
tokenizer = "train"
tiny = {{ dim = 32, layers = 1, heads = 2 }}
vocab_size = 500
[data]
synthetic = {{ train = 300, eval = 100 }}
max_length = 32
[grid]
learning_rate = [1e-3]
batch_size = [32]
epochs = [1]
seed = [0, 1]
"""


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a study TOML (default: a tiny synthetic study of 2 trials + baseline) and return its path."""

    def write(text: str | None = None, name: str = "tiny", filename: str = "study.toml") -> Path:
        path = tmp_path / filename
        path.write_text(textwrap.dedent(text) if text is not None else TINY_STUDY.format(name=name))
        return path

    return write
