"""The study hash follows the contents (issue 20, item 6): a local model by its files' contents (cached by
path, size and modification time), a Hub model or dataset by the revision the local cache resolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftvar.study import study_hash as sh
from ftvar.study.config import load_study


@pytest.fixture(autouse=True)
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTVAR_CACHE", str(tmp_path / "ftvar-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    sh.model_identity.cache_clear()


def local_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_retrained_weights_of_the_same_size_make_another_study(tmp_path: Path) -> None:
    model = local_model(tmp_path / "m", b"\x00" * 64)
    first = load_study("paper", [f"model.name_or_path={model}"]).hash
    sh.model_identity.cache_clear()
    (model / "model.safetensors").write_bytes(b"\x01" * 64)  # same size, same config: other weights
    second = load_study("paper", [f"model.name_or_path={model}"]).hash
    assert first != second
    sh.model_identity.cache_clear()
    moved = tmp_path / "elsewhere" / "m"
    moved.parent.mkdir()
    model.rename(moved)  # where it lies does not matter
    assert load_study("paper", [f"model.name_or_path={moved}"]).hash == second


def test_a_files_digest_is_read_once_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = local_model(tmp_path / "m", b"\x02" * 1024)
    reads: list[str] = []
    original = sh.file_digest
    monkeypatch.setattr(sh, "file_digest", lambda path: reads.append(path) or original(path))
    first = load_study("paper", [f"model.name_or_path={model}"]).hash
    assert len(reads) == 2  # config.json and the weights
    sh.model_identity.cache_clear()  # a new process: the digests come from the cache file
    assert load_study("paper", [f"model.name_or_path={model}"]).hash == first
    assert len(reads) == 2
    assert (tmp_path / "ftvar-cache" / "digests.json").is_file()


def test_a_hub_model_counts_by_the_revision_the_cache_resolves(tmp_path: Path) -> None:
    name = "distilbert-base-uncased-finetuned-sst-2-english"
    unknown = load_study("paper").hash
    ref = tmp_path / "hub" / f"models--{name}" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    sh.model_identity.cache_clear()
    pinned = load_study("paper").hash
    ref.write_text("b" * 40)  # the Hub's model changed and was fetched again
    sh.model_identity.cache_clear()
    assert len({unknown, pinned, load_study("paper").hash}) == 3


def test_a_hub_dataset_counts_by_its_revision_too(tmp_path: Path) -> None:
    before = load_study("paper").hash
    ref = tmp_path / "hub" / "datasets--glue" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("c" * 40)
    assert load_study("paper").hash != before
