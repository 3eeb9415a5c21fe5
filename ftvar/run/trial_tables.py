"""Rich tables and JSON views of a study's trials, shared by `plan`, `launch` and `status`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from ftvar.errors import RecordError
from ftvar.report.terminal import Compact
from ftvar.store.folder import trial_statuses
from ftvar.store.paths import StudyPaths
from ftvar.store.record import read_record
from ftvar.study.axes import show_value
from ftvar.study.config import Study
from ftvar.study.design import describe
from ftvar.study.trial import Trial, expand


def fmt(value: Any, spec: str = "") -> str:
    """A value for a table cell: "–" for None."""
    return "–" if value is None else format(value, spec)


def plan_json(study: Study, paths: StudyPaths) -> dict[str, Any]:
    """`ftvar plan --json`: the design, then every trial with its params and the status of its record."""
    trials = expand(study)
    statuses = trial_statuses(study, paths, trials)
    rows = [{"trial_id": t.trial_id, **t.params(), "status": statuses[t.trial_id]} for t in trials]
    return {
        "study": study.name,
        "hash": study.hash,
        "out": str(paths.root),
        "design": design_summary(study),
        "axes": [
            {"name": a.name, "kind": a.kind, "coding": a.coding, "values": list(a.values)} for a in study.axes
        ],
        "trials": rows,
    }


def design_summary(study: Study) -> str:
    """The design in one line, with its cost next to a full grid over the same axes."""
    pairs = len(study.grid.seed_pairs())
    line = describe(dict(study.grid.axes), study.design, len(study.points), pairs)
    again = len(study.grid.replicate)
    if again > 1:
        line += f"; each trial {again} times (grid.replicate: the same settings and seeds, run again)"
    return line


def _columns(study: Study) -> list[tuple[str, str]]:
    """(axis name, column header) of the axes that vary, and the seeds."""
    cols = [(a.name, a.label) for a in study.axes if not a.is_seed and len(a.values) > 1]
    seeds = (
        [("seed", "seed")]
        if study.grid.paired
        else [("init_seed", "init seed"), ("order_seed", "order seed")]
    )
    again = [("replicate", "replicate")] if len(study.grid.replicate) > 1 else []
    return [*cols, *seeds, *again]


def _value(value: Any) -> str:
    return fmt(value) if value is None else show_value(value)


def _cell(value: Any) -> str:
    """A param as a table cell, its text never read as rich markup."""
    return escape(_value(value))


def plan_table(study: Study, paths: StudyPaths) -> Compact:
    """`ftvar plan`: the trials, their params and which have records; the caption: model, data, design."""
    trials = expand(study)
    statuses = trial_statuses(study, paths, trials)
    source = study.data.source if study.data.source != "hub" else f"hub {study.data.hub}"
    model = "tiny random-init DistilBERT" if study.model.tiny else study.model.name_or_path
    fixed = ", ".join(
        f"{a.label} {_value(a.values[0])}" for a in study.axes if not a.is_seed and len(a.values) == 1
    )
    title = f"study {study.name} (hash {study.hash}) · {len(trials)} trials · {paths.root}"
    caption = (
        f"model: {model} · data: {source} · from {study.source}"
        + (f" · fixed: {fixed}" if fixed else "")
        + f"\n{design_summary(study)}"
    )
    cols = _columns(study)
    rows = []
    for t in trials:
        params = {**t.params(), "replicate": t.replicate}
        rows.append(
            [
                t.trial_id,
                *(_cell(params.get(name)) for name, _ in cols),
                statuses[t.trial_id] or "[dim]none[/dim]",
            ]
        )
    return Compact(
        ["trial", *(header for _, header in cols), "record"],
        rows,
        title=title,
        caption=caption,
        right=range(1, len(cols) + 1),
    )


def valid_record(path: Path) -> dict[str, Any]:
    """A record that passes every check, or {} (missing, corrupt or non-finite: shown so, never a crash)."""
    try:
        return read_record(path)
    except RecordError:
        return {}


def summary_table(study: Study, paths: StudyPaths, trials: Sequence[Trial]) -> Compact:
    """After a local launch: one row per trial with its status and metrics."""
    cols = _columns(study)
    mcc = study.metric == "mcc"  # its column only where it is the primary metric (80 columns)
    rows = []
    for t in trials:
        rec = valid_record(paths.record(t.trial_id))
        m = rec.get("metrics", {})
        status = rec.get("status", "missing" if not paths.record(t.trial_id).exists() else "invalid")
        style = {"ok": "green", "failed": "red", "diverged": "yellow"}.get(status, "dim")
        params = {**t.params(), "replicate": t.replicate}
        rows.append(
            [
                t.trial_id,
                *(_cell(params.get(name)) for name, _ in cols),
                f"[{style}]{status}[/{style}]",
                fmt(m.get("accuracy"), ".3f"),
                fmt(m.get("f1"), ".3f"),
                *([fmt(m.get("mcc"), ".3f")] if mcc else []),
                fmt(m.get("eval_loss"), ".3f"),
                fmt(rec.get("timings", {}).get("total"), ".1f"),
            ]
        )
    metrics = ["acc", "f1", *(["mcc"] if mcc else []), "loss"]
    headers = ["trial", *(header for _, header in cols), "status", *metrics, "sec"]
    right = [i for i, h in enumerate(headers) if i > 0 and h != "status"]
    return Compact(headers, rows, title=f"{study.name}: {len(trials)} trial(s)", right=right)
