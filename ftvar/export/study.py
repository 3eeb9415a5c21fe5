"""`ftvar export`: one study's records to TensorBoard and/or MLflow, every check before the first write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftvar.errors import FtvarError
from ftvar.export import to_mlflow, to_tensorboard
from ftvar.export.records import read_study_records
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study


@dataclass
class ExportResult:
    """One summary line per target, and the record files that were skipped (file, why)."""

    lines: list[str]
    skipped: list[tuple[str, str]]


def export_study(
    study: Study, out: Path, tensorboard: Path | None, mlflow: bool, mlflow_uri: str | None = None
) -> ExportResult:
    """Export the study's records under `out` to a TensorBoard folder and/or MLflow (`mlflow_uri`, else a
    SQLite database in the study's folder).

    In this order, so that bad input writes nothing: the libraries (else which extra to install), the
    records (else there is nothing to export), the TensorBoard folder (writable, not another study's), the
    tracking store (it answers); then TensorBoard, then MLflow."""
    uri = mlflow_uri or (to_mlflow.default_uri(StudyPaths.of(out, study.name).root) if mlflow else None)
    if tensorboard is None and uri is None:
        raise FtvarError("nothing to export to: give --tensorboard DIR and/or --mlflow (or --mlflow-uri URI)")
    if tensorboard is not None:
        to_tensorboard.require()
    if uri is not None:
        to_mlflow.require(uri)
    records = read_study_records(study, out)
    folder = to_tensorboard.check_folder(tensorboard, records) if tensorboard is not None else None
    tracking = to_mlflow.connect(uri, derived=mlflow_uri is None) if uri is not None else None
    lines = []
    if folder is not None:
        lines.append(to_tensorboard.export_tensorboard(records, folder).summary())
    if tracking is not None:
        lines.append(to_mlflow.export_mlflow(records, tracking).summary())
    return ExportResult(lines, records.skipped)
