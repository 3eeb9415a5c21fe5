"""Axes that change what runs: a model axis (two local models) and a data.max_length axis, end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ftvar.config import load_study
from ftvar.trial import StudyPaths, expand
from tests.test_cli import ftvar


def tiny_model(folder: Path, dim: int, layers: int) -> Path:
    """A random-init DistilBERT saved as a local model folder (a stand-in for two pretrained models)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=500, dim=dim, n_layers=layers, n_heads=2, hidden_dim=4 * dim, max_position_embeddings=64
    )
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_model_axis_runs_both_models_with_a_baseline_each(tmp_path: Path) -> None:
    small, large = tiny_model(tmp_path / "small", 16, 1), tiny_model(tmp_path / "large", 32, 2)
    study_file = tmp_path / "models.toml"
    study_file.write_text(
        textwrap.dedent(
            """
            name = "models"
            [model]
            tokenizer = "train"
            vocab_size = 500
            [data]
            synthetic = { train = 300, eval = 100 }
            max_length = 32
            [grid]
            "model.name_or_path" = ["small", "large"]
            learning_rate = [3e-3]
            batch_size = [32]
            epochs = [1]
            seed = [0]
            """
        )
    )
    out = ftvar("launch", str(study_file), "--executor", "debug", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    study = load_study(str(study_file))
    paths = StudyPaths.of(tmp_path / "out", study.name)
    records = [json.loads(paths.record(t.trial_id).read_text()) for t in expand(study)]
    models = {Path(r["params"]["model.name_or_path"]).name for r in records}
    assert models == {"small", "large"}
    assert sum(r["kind"] == "baseline" for r in records) == 2  # one per model (new heads, one init seed)
    assert all(r["status"] == "ok" for r in records)
    # one tokenized cache serves both models: the tokenizer is trained on the data, not the model's
    assert len(list(paths.cache.iterdir())) == 1
    assert str(small) in {r["params"]["model.name_or_path"] for r in records} and large.is_dir()
