"""A study as TensorBoard runs: one run per trial, with its hyperparameters in the HParams plugin, its final
metrics and its learning curve, under one experiment config that names every axis and metric.

Layout of the folder (TensorBoard's `--logdir`):

    DIR/events.out.tfevents.ftvar              the HParams experiment: every axis (seeds included), `status`,
                                               every metric; so trials with different axes share one table
    DIR/<trial_id>/events.out.tfevents.ftvar   the trial: its hyperparameters (a session start, grouped by
                                               trial id), final metrics as scalars at its last step, the
                                               learning curve as `curve/<metric>` over steps, a session end
                                               (success for `ok`, failure otherwise)
    DIR/ftvar-export.json                      which study and study hash the folder holds

Every file has a fixed name and is replaced whole (a temp file renamed over it), so a re-export updates each
run in place and never adds a second event file to it; the events carry the records' own times, so the same
records give the same bytes. `wandb sync --sync-tensorboard DIR` uploads the folder to W&B.

Written with TensorBoard's own protos, summary builders and record writer (no TensorFlow, no torch). Files
are not fsynced: they are derived from the records and a re-export rewrites them all (10,000 fsyncs would
cost about 90 s on a network file system or a busy disk).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ftvar.errors import FtvarError
from ftvar.export.records import (
    HParam,
    StudyRecords,
    curve_points,
    final_metrics,
    final_step,
    hparams,
    metric_names,
    seconds,
)
from ftvar.store.files import read_json, write_json

EVENTS = "events.out.tfevents.ftvar"  # TensorBoard reads any file whose name holds "tfevents"
MANIFEST = "ftvar-export.json"
CURVE_PREFIX = "curve/"
STATUS = "status"  # an extra hyperparameter: ok, failed or diverged, to filter and colour by
MAX_DISCRETE = 20  # numeric hyperparameters with more values get an interval domain (Sobol' designs)


@dataclass(frozen=True)
class TensorBoardExport:
    """What `export_tensorboard` wrote."""

    folder: Path
    runs: int
    hparams: list[str]
    metrics: list[str]

    def summary(self) -> str:
        return (
            f"tensorboard: {self.runs} run(s) in {self.folder} ({len(self.hparams)} hyperparameters, "
            f"{len(self.metrics)} metrics); view with `tensorboard --logdir {self.folder}`"
        )


def require() -> SimpleNamespace:
    """TensorBoard's pieces, or FtvarError naming the extra to install."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.plugins.scalar import summary_v2 as scalar
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:
        raise FtvarError(
            f"the TensorBoard export needs TensorBoard ({exc}): pip install 'ftvar[tensorboard]'"
        ) from None
    return SimpleNamespace(
        Event=event_pb2.Event,
        Summary=summary_pb2.Summary,
        api_pb2=api_pb2,
        metadata=metadata,
        plugin_data_pb2=plugin_data_pb2,
        hp=hp,
        scalar_pb=scalar.scalar_pb,
        RecordWriter=RecordWriter,
    )


def export_tensorboard(study: StudyRecords, folder: Path) -> TensorBoardExport:
    """Write the study's records into `folder` as TensorBoard runs (see the module docstring).

    FtvarError, before anything is written, when TensorBoard is not installed, the folder cannot be written
    or holds another study's export; when writing stops half-way (a full disk), each run written so far is
    whole and the message says to run it again."""
    tb = require()
    folder = check_folder(folder, study)
    records = study.records
    types = _hparam_types(records)
    metrics = metric_names(records)
    written = 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for rec in records:
            run = folder / rec["trial_id"]
            run.mkdir(exist_ok=True)
            _replace(run / EVENTS, _trial_events(tb, rec, types))
            written += 1
        _replace(folder / EVENTS, _experiment_events(tb, study, types, metrics))
        write_json(folder / MANIFEST, {"study": study.study, "hash": study.hash, "runs": len(records)})
    except OSError as exc:
        raise FtvarError(
            f"cannot write the TensorBoard runs in {folder}: {exc.strerror or exc} (after {written} of "
            f"{len(records)} runs, each of them whole); free the space or fix the permissions and run it "
            "again"
        ) from None
    return TensorBoardExport(folder, len(records), [*types], metrics)


def check_folder(folder: Path, study: StudyRecords) -> Path:
    """The folder, resolved, once it is clear that it can be written (it, or the folder it will be made in)
    and holds no other study's export; else FtvarError. Writes nothing."""
    folder = folder.resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise FtvarError(
            f"cannot write to {folder}: {existing} is not a folder (choose another --tensorboard DIR)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FtvarError(
            f"cannot write to {folder}: {existing} is not writable (choose another --tensorboard DIR)"
        )
    manifest = read_json(folder / MANIFEST)
    if manifest is not None and (manifest.get("study"), manifest.get("hash")) != (study.study, study.hash):
        raise FtvarError(
            f"{folder} holds the TensorBoard export of study {manifest.get('study')!r} (hash "
            f"{manifest.get('hash')}), not {study.study!r} ({study.hash}); export each study version to a "
            "folder of its own, or remove that one"
        )
    return folder


def _replace(path: Path, data: bytes) -> None:
    """Replace `path` with `data` at once (a temp file beside it, renamed; not fsynced: see the module
    docstring). The temp name lacks "tfevents", so a running TensorBoard never reads a partial file."""
    tmp = path.with_name(f".ftvar-{os.getpid()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _hparam_types(records: list[dict[str, Any]]) -> dict[str, type]:
    """Each hyperparameter's type over all records (the union of their axes), `status` last: bool when
    every value is one, float when every value is a number, else str."""
    values: dict[str, list[HParam]] = {}
    for rec in records:
        for name, value in hparams(rec).items():
            values.setdefault(name, []).append(value)
    types: dict[str, type] = {}
    for name, vals in values.items():
        if all(isinstance(v, bool) for v in vals):
            types[name] = bool
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            types[name] = float
        else:
            types[name] = str
    types[STATUS] = str
    return types


def _values(rec: dict[str, Any], types: dict[str, type]) -> dict[str, HParam]:
    """A record's hyperparameters as the experiment types them."""
    out: dict[str, HParam] = {name: types[name](value) for name, value in hparams(rec).items()}
    out[STATUS] = rec["status"]
    return out


def _events(tb: SimpleNamespace, events: list[Any]) -> bytes:
    """An event file's bytes: the version event, then `events`, in TensorBoard's record framing."""
    buf = io.BytesIO()
    writer = tb.RecordWriter(buf)
    first = events[0].wall_time if events else 0.0
    writer.write(tb.Event(wall_time=first, file_version="brain.Event:2").SerializeToString())
    for event in events:
        writer.write(event.SerializeToString())
    return buf.getvalue()


def _hparams_summary(tb: SimpleNamespace, data: Any, tag: str) -> Any:
    """A summary of the HParams plugin's data (as the plugin's own summary builders make them)."""
    summary = tb.Summary()
    summary.value.add(
        tag=tag, metadata=tb.metadata.create_summary_metadata(data), tensor=tb.metadata.NULL_TENSOR
    )
    return summary


def _trial_events(tb: SimpleNamespace, rec: dict[str, Any], types: dict[str, type]) -> bytes:
    start, end = seconds(rec["started_at"]), seconds(rec["finished_at"])
    events = [
        tb.Event(
            wall_time=start,
            step=0,
            summary=tb.hp.hparams_pb(_values(rec, types), trial_id=rec["trial_id"], start_time_secs=start),
        )
    ]
    for step, values in curve_points(rec):
        summary = tb.Summary()
        for name, value in values.items():
            summary.MergeFrom(tb.scalar_pb(CURVE_PREFIX + name, value))
        events.append(tb.Event(wall_time=end, step=step, summary=summary))
    final = final_metrics(rec)
    if final:
        summary = tb.Summary()
        for name, value in final.items():
            summary.MergeFrom(tb.scalar_pb(name, value))
        events.append(tb.Event(wall_time=end, step=final_step(rec), summary=summary))
    status = tb.api_pb2.STATUS_SUCCESS if rec["status"] == "ok" else tb.api_pb2.STATUS_FAILURE
    end_info = tb.plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end)
    data = tb.plugin_data_pb2.HParamsPluginData(session_end_info=end_info)
    events.append(
        tb.Event(
            wall_time=end,
            step=final_step(rec),
            summary=_hparams_summary(tb, data, tb.metadata.SESSION_END_INFO_TAG),
        )
    )
    return _events(tb, events)


def _domain(tb: SimpleNamespace, kind: type, values: set[HParam]) -> Any:
    if kind is float and len(values) > MAX_DISCRETE:
        return tb.hp.RealInterval(min(map(float, values)), max(map(float, values)))
    return tb.hp.Discrete(sorted(values), dtype=kind)


def _experiment_events(
    tb: SimpleNamespace, study: StudyRecords, types: dict[str, type], metrics: list[str]
) -> bytes:
    """The HParams experiment: every hyperparameter with the values the records hold (`differs` when they
    hold more than one), every metric."""
    seen: dict[str, set[HParam]] = {name: set() for name in types}
    for rec in study.records:
        for name, value in _values(rec, types).items():
            seen[name].add(value)
    infos = []
    for name, kind in types.items():
        info = tb.api_pb2.HParamInfo(name=name, differs=len(seen[name]) > 1)
        _domain(tb, kind, seen[name]).update_hparam_info(info)
        infos.append(info)
    created = min(seconds(rec["started_at"]) for rec in study.records)
    experiment = tb.api_pb2.Experiment(
        description=f"ftvar study {study.study} (hash {study.hash}): {len(study.records)} trials",
        time_created_secs=created,
        hparam_infos=infos,
        metric_infos=[tb.hp.Metric(m).as_proto() for m in metrics],
    )
    data = tb.plugin_data_pb2.HParamsPluginData(experiment=experiment)
    summary = _hparams_summary(tb, data, tb.metadata.EXPERIMENT_TAG)
    return _events(tb, [tb.Event(wall_time=created, step=0, summary=summary)])
