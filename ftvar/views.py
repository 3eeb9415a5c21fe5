"""Rich tables and JSON views of a study's trials, shared by `plan`, `launch` and `status`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ftvar.config import Study
from ftvar.errors import RecordError
from ftvar.ledger import trial_statuses
from ftvar.record import read_record
from ftvar.trial import StudyPaths, Trial, expand


def fmt(value: Any, spec: str = "") -> str:
    """A value for a table cell: "–" for None."""
    return "–" if value is None else format(value, spec)


def plan_json(study: Study, paths: StudyPaths) -> dict[str, Any]:
    """`ftvar plan --json`: every trial with its params and the status of its record (null: none yet)."""
    statuses = trial_statuses(study, paths)
    rows = [{"trial_id": t.trial_id, **t.params(), "status": statuses[t.trial_id]} for t in expand(study)]
    return {"study": study.name, "hash": study.hash, "out": str(paths.root), "trials": rows}


def plan_table(study: Study, paths: StudyPaths) -> Table:
    """`ftvar plan`: the trials, their params and which have records; the caption names model and data."""
    trials = expand(study)
    statuses = trial_statuses(study, paths, trials)
    source = study.data.source if study.data.source != "hub" else f"hub {study.data.hub}"
    model = "tiny random-init DistilBERT" if study.model.tiny else study.model.name_or_path
    table = Table(
        title=f"study {study.name} (hash {study.hash}) · {len(trials)} trials · {paths.root}",
        caption=f"model: {model} · data: {source} · from {study.source}",
    )
    for col in ("trial", "learning rate", "batch size", "epochs", "seed", "record"):
        table.add_column(col, justify="left" if col in ("trial", "record") else "right")
    for t in trials:
        table.add_row(
            t.trial_id,
            fmt(t.learning_rate, "g"),
            fmt(t.batch_size),
            str(t.epochs),
            str(t.seed),
            statuses[t.trial_id] or "[dim]none[/dim]",
        )
    return table


def valid_record(path: Path) -> dict[str, Any]:
    """A record that passes every check, or {} (missing, corrupt or non-finite: shown so, never a crash)."""
    try:
        return read_record(path)
    except RecordError:
        return {}


def summary_table(study: Study, paths: StudyPaths, trials: Sequence[Trial]) -> Table:
    """After a local launch: one row per trial with its status and metrics."""
    table = Table(title=f"{study.name}: {len(trials)} trial(s)")
    for col in ("trial", "lr", "bs", "ep", "seed", "status", "acc", "f1", "loss", "sec"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right", no_wrap=True)
    for t in trials:
        rec = valid_record(paths.record(t.trial_id))
        m = rec.get("metrics", {})
        status = rec.get("status", "missing" if not paths.record(t.trial_id).exists() else "invalid")
        style = {"ok": "green", "failed": "red", "diverged": "yellow"}.get(status, "dim")
        table.add_row(
            t.trial_id,
            fmt(t.learning_rate, "g"),
            fmt(t.batch_size),
            str(t.epochs),
            str(t.seed),
            f"[{style}]{status}[/{style}]",
            fmt(m.get("accuracy"), ".3f"),
            fmt(m.get("f1"), ".3f"),
            fmt(m.get("eval_loss"), ".3f"),
            fmt(rec.get("timings", {}).get("total"), ".1f"),
        )
    return table
