"""The report: every file written, what matters first, images embedded in the HTML, any axes, one seed,
degenerate trials, the paper comparison left out with a reason, and odd records that must not crash it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from records_factory import (
    make_record,
    make_study,
    simulate,
    study_with,
    write,
    write_predictions,
    write_table,
)
from rich.console import Console

from ftvar.errors import FtvarError
from ftvar.report.build import REPORT_FORMAT, build_report
from ftvar.store.paths import StudyPaths
from ftvar.study.config import ModelConfig

PNG = b"\x89PNG\r\n\x1a\n"
TOP_LEVEL = {
    "format",
    "generated_at",
    "ftvar_version",
    "study",
    "collect",
    "analysis",
    "notes",
    "ran",
    "replicates",
    "variance",
    "best",
    "held_out",
    "expected_max",
    "failures",
    "per_example",
    "degenerate",
    "selection",
    "fits",
    "findings",
    "findings_family",
    "paper_comparison",
    "configurations",
    "plots",
}


def mean(rows: pd.DataFrame) -> np.ndarray:
    lr = np.log10(rows["learning_rate"].to_numpy(dtype=float)) + 4.5
    bs = np.log2(rows["batch_size"].to_numpy(dtype=float)) - 4
    ep = rows["epochs"].to_numpy(dtype=float) - 2
    return np.asarray(0.85 + 0.02 * lr - 0.03 * lr**2 - 0.01 * bs + 0.004 * bs * ep)


def strict_json(text: str) -> dict[str, object]:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    data: dict[str, object] = json.loads(text, parse_constant=refuse)
    return data


def test_report_writes_every_file_leads_with_what_matters_and_embeds_its_plots(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2, 3], seeds=[0, 1], bootstrap=50)
    write_table(tmp_path, study, simulate(study, mean, init_sd=0.01, rng=np.random.default_rng(0)))
    console = Console(record=True, width=150)
    result = build_report(study, tmp_path, console=console)

    folder = StudyPaths.of(tmp_path, study.name).report
    pngs = sorted(folder.glob("*.png"))
    names = {p.name for p in pngs}
    assert {
        "variance_shares.png",
        "expected_max.png",
        "parallel_coordinates.png",
        "accuracy_by_hyperparameter.png",
        "f1_heatmaps.png",
        "fit_accuracy_absolute.png",
    } <= names
    assert "learning_curve.png" not in names  # data.train_limit is not an axis
    assert all(p.read_bytes().startswith(PNG) for p in pngs)

    data = strict_json(result.json.read_text())
    assert set(data) == TOP_LEVEL and data["format"] == REPORT_FORMAT == "ftvar-report/3"
    assert {p["file"] for p in data["plots"]} == names  # type: ignore[attr-defined]
    assert data["analysis"]["seed_model"] == "blocks"  # type: ignore[index]
    shares = {c["name"]: c for c in data["variance"][0]["components"]}  # type: ignore[index]
    assert {"hyperparameters", "lr", "bs", "seed", "residual"} <= set(shares)
    assert all(c["ci_low"] is not None for c in shares.values())
    best = data["best"][0]  # type: ignore[index]
    assert best["metric"] == "accuracy" and best["bootstrap"] == 50 and best["value_from"] == "trials"
    assert best["ci_low"] < best["corrected"] < best["ci_high"] and set(best["recommended"]) == {
        "learning_rate",
        "batch_size",
        "epochs",
    }
    assert isinstance(best["recommended"]["batch_size"], int)
    assert data["per_example"] is None and data["held_out"] is None  # none in these records
    assert data["expected_max"]["by"] == "batch_size"  # type: ignore[index]
    assert len(data["expected_max"]["curves"]) == 4  # type: ignore[index]
    tests = data["fits"][0]["tests"]  # type: ignore[index]
    assert {"p", "p_holm", "p_bh", "significant"} <= set(tests[0])
    assert data["paper_comparison"]["shown"] is True  # the paper's model and task (the defaults)

    md = result.markdown.read_text()
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings[:3] == ["What matters", "Findings", "Study and design"]
    lead = md.split("## Findings")[0]
    assert (
        "hyperparameters explain" in lead and "luck" in lead and "**accuracy**: run learning rate = " in lead
    )
    assert "corrected for having been chosen as the best of 27" in lead
    assert "Expected best accuracy" in lead and "random subsets of this design's trials" in lead
    assert "Degenerate trials: none of 54" in lead and "Failed runs" not in lead
    assert "![share of variance" in lead and "![expected best accuracy" in lead
    assert "Holm" in md and "± —" not in md
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(names) and all((folder / f).is_file() for f in linked)
    assert md.count("| effect | metric |") == 1 and "verdict" in md

    html = result.html.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(pngs) and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "src='report" not in html and ".png'" not in html  # nothing external
    assert "<b>accuracy</b>: hyperparameters explain" in html

    shown = console.export_text()
    assert "hyperparameters explain" in shown and "Fits: key terms" in shown and "Paper comparison" in shown


def test_one_seed_says_so_and_renders_the_smoke_shape(tmp_path: Path) -> None:
    study = make_study(name="smoke", lr=[2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0], bootstrap=50)
    write_table(tmp_path, study, simulate(study, mean))
    result = build_report(study, tmp_path)
    md = result.markdown.read_text()
    observed = md.split("**Best configurations observed")[1].split("##")[0]
    assert "one trial per configuration: no spread to show" in observed and "±" not in observed
    data = strict_json(result.json.read_text())
    assert data["analysis"]["seed_model"] == "none"  # type: ignore[index]
    assert any("single seed" in n for n in data["variance"][0]["notes"])  # type: ignore[index]
    assert data["best"][0]["ci_low"] is None  # one seed: its effect cannot be estimated  # type: ignore[index]
    lead = md.split("## Findings")[0]
    assert ", luck " not in lead and "a single seed cannot tell apart" in lead
    assert any("square cannot be identified" in n for n in data["notes"])  # type: ignore[attr-defined]
    assert (result.folder / "accuracy_heatmaps.png").is_file()


def test_heatmaps_only_for_axes_with_two_values_and_a_non_comparable_study_says_why(tmp_path: Path) -> None:
    base = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[16], ep=[1], seeds=[0, 1], bootstrap=20)
    study = type(base)(
        name="mini", model=ModelConfig(name_or_path="/models/minilm"), grid=base.grid, analysis=base.analysis
    )
    table = simulate(study, mean)
    table.loc[table.index[table["kind"] == "trial"][0], "status"] = "failed"  # one configuration keeps 1 seed
    write_table(tmp_path, study, table)
    result = build_report(study, tmp_path)
    assert not list(result.folder.glob("*_heatmaps.png"))
    observed = result.markdown.read_text().split("**Best configurations observed")[1].split("##")[0]
    assert "(1 seed)" in observed and "± —" not in observed and " ± " in observed
    md = result.markdown.read_text()
    section = md.split("## Paper comparison")[1].split("## ")[0]
    assert "left out: this study uses another model" in section and "| effect |" not in section
    data = strict_json(result.json.read_text())
    assert data["paper_comparison"]["shown"] is False and len(data["paper_comparison"]["rows"]) == 5  # type: ignore[index]


def test_any_axes_factor_in_words_learning_curve_and_degenerate_trials(tmp_path: Path) -> None:
    study = study_with(
        {
            "learning_rate": [1e-4, 1e-3],
            "batch_size": [16],
            "epochs": [1],
            "train.scheduler": ["linear", "cosine"],
            "data.train_limit": [200, 800, 3200],
            "seed": [0, 1, 2],
        },
        bootstrap=20,
    )

    def curve(rows: pd.DataFrame) -> np.ndarray:
        n = rows["data.train_limit"].to_numpy(dtype=float)
        return np.asarray(0.9 - 0.3 / np.sqrt(n / 100) + 0.02 * (rows["train.scheduler"] == "cosine"))

    table = simulate(
        study,
        curve,
        noise=0.005,
        degenerate=lambda r: np.where(r["data.train_limit"] == 200, 0.5, 0.0),
        rng=np.random.default_rng(1),
    )
    write_table(tmp_path, study, table)
    result = build_report(study, tmp_path)
    assert (result.folder / "learning_curve.png").is_file()
    md = result.markdown.read_text()
    assert "C(scheduler)" in md and "scheduler (`train.scheduler`): 2 values, coded a factor" in md
    assert "training rows (`data.train_limit`)" in md
    n_deg = int(table["degenerate"].sum())
    assert f"Degenerate trials: **{n_deg} of 36" in md and "non-degenerate trials" in md
    assert (result.folder / "fit_accuracy_absolute_nondegenerate.png").is_file()
    data = strict_json(result.json.read_text())
    assert data["degenerate"]["n_degenerate"] == n_deg  # type: ignore[index]
    assert all(r["data.train_limit"] == 200 for r in data["degenerate"]["per_configuration"])  # type: ignore[index]


def test_only_failed_records_is_a_clear_error(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5], bs=[8, 16], ep=[1], seeds=[0])
    records = StudyPaths.of(tmp_path, study.name).records
    for bs in (8, 16):
        rec = make_record(study, learning_rate=1e-5, batch_size=bs, epochs=1, seed=0, status="failed")
        write(records, rec)
    with pytest.raises(FtvarError, match=r"no ok records yet .*ftvar launch .*ftvar status"):
        build_report(study, tmp_path)
    assert not StudyPaths.of(tmp_path, study.name).report.exists()


@pytest.mark.parametrize(
    "odd", ["one_ok_trial", "constant", "all_degenerate", "old_records", "extreme_values"]
)
def test_odd_records_give_a_report(tmp_path: Path, odd: str) -> None:
    study = make_study(lr=[1e-5, 1e-4], bs=[8, 16], ep=[1, 2], seeds=[0, 1], bootstrap=20)
    table = simulate(study, mean, rng=np.random.default_rng(0))
    trials = table["kind"] == "trial"
    if odd == "one_ok_trial":
        table.loc[table.index[trials][1:], "status"] = "failed"
    elif odd == "constant":
        table.loc[trials, ["accuracy", "f1"]] = 0.5
        table.loc[trials, "eval_loss"] = 0.69
    elif odd == "all_degenerate":
        table.loc[trials, "degenerate"] = True
    elif odd == "extreme_values":
        table.loc[table.index[trials][::3], "accuracy"] = 1.0
        table.loc[table.index[trials][1::3], "accuracy"] = 0.0
        table.loc[trials, "eval_loss"] = 1e6
    write_table(tmp_path, study, table)
    if odd == "old_records":  # records without the eval block (schema 1 era)
        for path in StudyPaths.of(tmp_path, study.name).records.glob("*.json"):
            rec = json.loads(path.read_text())
            rec.pop("eval", None)
            path.write_text(json.dumps(rec))
    result = build_report(study, tmp_path)
    strict_json(result.json.read_text())
    assert result.markdown.read_text().startswith("# ftvar report")


def test_predictions_a_test_split_and_failed_runs_reach_the_report(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16], ep=[1, 2], seeds=[0, 1, 2], bootstrap=50)
    table = simulate(
        study,
        mean,
        init_sd=0.01,
        degenerate=lambda r: np.where(r["learning_rate"] == 1e-4, 0.5, 0.0),
        rng=np.random.default_rng(3),
    )
    trials = table.index[table["kind"] == "trial"]
    table.loc[trials[-1], ["status", "accuracy", "f1", "eval_loss"]] = ["diverged", np.nan, np.nan, np.nan]
    write_table(tmp_path, study, table)
    write_predictions(tmp_path, study, table, n_rows=120, test_rows=60, rng=np.random.default_rng(4))
    result = build_report(study, tmp_path)
    data = strict_json(result.json.read_text())
    md = result.markdown.read_text()
    lead = md.split("## Findings")[0]
    assert "**Held-out test split** (60 rows; never used for selection" in lead
    held = data["held_out"]
    assert held["n_trials"] >= 2 and held["ci_low"] <= held["value"] <= held["ci_high"]  # type: ignore[index]
    assert held["key"] == {k: data["best"][0]["recommended"][k] for k in held["key"]}  # type: ignore[index]
    assert "1 failed or diverged trial(s) count as draws" in lead and "Failed runs: " in lead
    per = data["per_example"]
    assert per["n_rows"] == 120 and per["configurations"][0]["ci_low"] is not None  # type: ignore[index]
    assert per["comparisons"] and per["flips_all"]  # type: ignore[index]
    section = md.split("## Per-example predictions")[1].split("\n## ")[0]
    assert "95% eval-sampling interval" in section and "eval sentence" in section and "churn" in section
    failed = md.split("## Failed runs")[1].split("\n## ")[0]
    assert "Firth-penalised logistic regression" in failed and "predicted failure rate" in failed
    assert data["failures"]["n_diverged"] == 1  # type: ignore[index]
    assert any("have no metric and are not in the fits" in n for n in data["notes"])  # type: ignore[attr-defined]
    assert data["findings_family"]["tests"] > 0  # type: ignore[index]
