"""End to end on tiny models: any setting as an axis runs and reaches the report — a scheduler factor next to
a warmup slope, a learning curve over the training rows, a model axis with a baseline per model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ftvar

SMALL = (
    "--set",
    "data.synthetic.train=400",
    "--set",
    "data.synthetic.eval=200",
    "--set",
    "grid.learning_rate=[3e-3]",
    "--set",
    "grid.batch_size=[32]",
    "--set",
    "grid.epochs=[1]",
    "--set",
    "grid.seed=[0, 1]",
)


def _run(tmp_path: Path, *axes: str) -> dict[str, object]:
    out = str(tmp_path / "out")
    launched = ftvar("launch", "smoke", "--executor", "debug", *SMALL, *axes, "--out", out)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    reported = ftvar("report", "smoke", *SMALL, *axes, "--out", out)
    assert reported.returncode == 0, reported.stderr[-3000:]
    data: dict[str, object] = json.loads((tmp_path / "out" / "smoke" / "report" / "report.json").read_text())
    return data


@pytest.mark.slow
def test_a_scheduler_axis_is_a_factor_and_warmup_a_slope(tmp_path: Path) -> None:
    data = _run(
        tmp_path,
        "--set",
        "grid.train.warmup_ratio=[0.0, 0.2]",
        "--set",
        'grid.train.scheduler=["linear", "constant"]',
    )
    axes = {a["axis"]: a for a in data["analysis"]["axes"]}  # type: ignore[index]
    assert (
        axes["train.scheduler"]["coding"] == "categorical" and axes["train.scheduler"]["label"] == "scheduler"
    )
    assert axes["train.warmup_ratio"]["coding"] == "raw"
    fit = next(f for f in data["fits"] if f["metric"] == "accuracy" and f["kind"] == "absolute")  # type: ignore[attr-defined]
    assert fit["status"] == "ok", fit["message"]
    terms = {t["term"]: t for t in fit["tests"]}
    assert "C(scheduler)" in terms and terms["C(scheduler)"]["label"] == "scheduler"
    assert "warmup_ratio" in terms and "C(scheduler)" in fit["formula"] and "C(seed)" in fit["formula"]
    report = (tmp_path / "out" / "smoke" / "report" / "report.md").read_text()
    assert "scheduler (`train.scheduler`): 2 values, coded a factor" in report
    assert (tmp_path / "out" / "smoke" / "report" / "parallel_coordinates.png").is_file()


@pytest.mark.slow
def test_a_train_limit_axis_gives_a_learning_curve(tmp_path: Path) -> None:
    data = _run(tmp_path, "--set", "grid.data.train_limit=[100, 400]")
    plots = {p["file"] for p in data["plots"]}  # type: ignore[attr-defined]
    assert "learning_curve.png" in plots
    assert (tmp_path / "out" / "smoke" / "report" / "learning_curve.png").stat().st_size > 0
    axes = {a["axis"] for a in data["analysis"]["axes"]}  # type: ignore[index]
    assert "data.train_limit" in axes


@pytest.mark.slow
def test_a_model_axis_runs_both_models_and_fits_a_model_factor(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    folders = []
    for name, dim, layers in (("tiny-a", 32, 1), ("tiny-b", 48, 2)):
        config = DistilBertConfig(vocab_size=600, dim=dim, n_layers=layers, n_heads=2, hidden_dim=4 * dim)
        DistilBertForSequenceClassification(config).save_pretrained(tmp_path / name)
        folders.append(str(tmp_path / name))
    study = tmp_path / "models.toml"
    study.write_text(
        f"""
name = "models"
[model]
tokenizer = "train"
vocab_size = 500
[data]
synthetic = {{ train = 400, eval = 200 }}
max_length = 32
[grid]
learning_rate = [3e-3]
batch_size = [32]
epochs = [1]
seed = [0, 1]
"model.name_or_path" = {json.dumps(folders)}
"""
    )
    out = str(tmp_path / "out")
    launched = ftvar("launch", str(study), "--executor", "debug", "--out", out)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "models" / "records").glob("*.json")]
    assert len(records) == 2 * 2 + 2 and all(r["status"] == "ok" for r in records)
    assert {r["params"]["model.name_or_path"] for r in records} == set(folders)
    # a baseline per model (each folder holds a classification head: one baseline serves every init seed),
    # and one tokenized cache for both models: the tokenizer is trained on the data, not taken from a model
    baselines = [r for r in records if r["kind"] == "baseline"]
    assert len(baselines) == 2 and {b["head"] for b in baselines} == {"trained"}
    assert len(list((tmp_path / "out" / "models" / "cache").iterdir())) == 1
    reported = ftvar("report", str(study), "--out", out)
    assert reported.returncode == 0, reported.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "models" / "report" / "report.json").read_text())
    axes = {a["axis"]: a for a in data["analysis"]["axes"]}
    assert (
        axes["model.name_or_path"]["coding"] == "categorical"
        and axes["model.name_or_path"]["label"] == "model"
    )
    fit = next(f for f in data["fits"] if f["metric"] == "accuracy" and f["kind"] == "absolute")
    assert fit["status"] == "ok", fit["message"]
    assert any(t["term"] == "C(name_or_path)" and t["label"] == "model" for t in fit["tests"])
    report = (tmp_path / "out" / "models" / "report" / "report.md").read_text()
    assert "tiny-a, tiny-b" in report  # levels named by their folders, not full paths
