"""The report: every file written, images embedded in the HTML, the smoke study's shape, no ok records."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from records_factory import make_record, make_study, synth_study, write
from rich.console import Console

from ftvar.errors import FtvarError
from ftvar.report import REPORT_FORMAT, build_report
from ftvar.trial import StudyPaths

PNG = b"\x89PNG\r\n\x1a\n"
TOP_LEVEL = {
    "format",
    "generated_at",
    "ftvar_version",
    "study",
    "collect",
    "analysis",
    "notes",
    "fits",
    "findings",
    "paper_comparison",
    "configurations",
    "plots",
}


def truth(lr: float, bs: float, ep: float) -> float:
    return 0.85 + 0.02 * (lr + 4.5) - 0.03 * (lr + 4.5) ** 2 - 0.01 * (bs - 4) + 0.004 * (bs - 4) * (ep - 2)


def strict_json(text: str) -> dict[str, object]:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    data: dict[str, object] = json.loads(text, parse_constant=refuse)
    return data


def test_report_writes_every_file_and_embeds_its_plots(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2, 3], seeds=[0, 1])
    synth_study(tmp_path, study, truth, seed_sd=0.01)
    console = Console(record=True, width=150)
    result = build_report(study, tmp_path, console=console)

    folder = StudyPaths.of(tmp_path, study.name).report
    assert result.folder == folder
    pngs = sorted(folder.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"accuracy_by_hyperparameter.png", "f1_heatmaps.png", "fit_eval_loss_paired.png"} <= names
    assert len(pngs) == 3 * 2 + 9  # metric × hyperparameters, heatmaps; one per fit
    assert all(p.read_bytes().startswith(PNG) for p in pngs)

    data = strict_json(result.json.read_text())
    assert set(data) == TOP_LEVEL and data["format"] == REPORT_FORMAT
    assert len(data["fits"]) == 9 and all(f["status"] == "ok" for f in data["fits"])  # type: ignore[attr-defined]
    assert {p["file"] for p in data["plots"]} == names  # type: ignore[attr-defined]
    assert data["configurations"][0]["n_ok"] == 2  # type: ignore[index]

    html = result.html.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "<img" in html and "src='report" not in html and ".png'" not in html  # nothing external

    md = result.markdown.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == sorted(names) and all((folder / f).is_file() for f in linked)
    assert "## Paper comparison" in md and "| effect | metric | fit | paper p |" in md

    shown = console.export_text()
    assert "Best configurations" in shown and "Paper comparison" in shown and "Fits: key terms" in shown


def test_the_smoke_study_shape_renders_with_too_few_trials(tmp_path: Path) -> None:
    study = make_study(name="smoke", lr=[2e-5, 5e-5], bs=[8, 16], ep=[1, 2], seeds=[0])
    synth_study(tmp_path, study, truth)
    result = build_report(study, tmp_path)
    data = strict_json(result.json.read_text())
    fits = {(f["metric"], f["kind"]): f for f in data["fits"]}  # type: ignore[attr-defined]
    assert fits[("accuracy", "absolute")]["n"] == 8
    paired = fits[("accuracy", "paired")]
    assert paired["status"] == "skipped" and paired["message"].startswith("too few trials")
    assert paired["r2"] is None and paired["terms"] == []
    assert "too few trials" in result.html.read_text() and "too few trials" in result.markdown.read_text()
    assert any("square is not identifiable" in n for n in data["notes"])  # type: ignore[attr-defined]


def test_a_study_without_baseline_explains_the_missing_relative_fit(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2], seeds=[0], baseline="none")
    synth_study(tmp_path, study, truth, baseline=None)
    result = build_report(study, tmp_path)
    relative = result.analysis.fit("accuracy", "relative")
    assert not relative.ok and "baseline" in (relative.message or "")
    row = next(r for r in result.analysis.paper if r["effect"] == "learning rate")
    assert row["fit"] == "absolute" and "relative fit unavailable" in row["note"]


def test_only_failed_records_is_a_clear_error(tmp_path: Path) -> None:
    study = make_study(lr=[1e-5], bs=[8, 16], ep=[1], seeds=[0])
    records = StudyPaths.of(tmp_path, study.name).records
    for bs in (8, 16):
        rec = make_record(study, learning_rate=1e-5, batch_size=bs, epochs=1, seed=0, status="failed")
        write(records, rec)
    with pytest.raises(FtvarError, match=r"no ok records yet .*ftvar launch .*ftvar status"):
        build_report(study, tmp_path)
    assert not StudyPaths.of(tmp_path, study.name).report.exists()
