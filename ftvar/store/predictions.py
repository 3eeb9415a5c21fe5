"""Per-example predictions: one JSON sidecar per trial beside its record, and the texts of the rows they
describe.

`<out>/<study>/predictions/<trial_id>.json` holds, for the eval split (and the held-out test split when the
study has one), every row's gold label, predicted label and the probability of each class rounded to 4
decimals, in the split's row order (schema: `predictions.schema.json`, shipped beside this module). It is
written atomically before the trial's record, so a record's predictions are complete whenever the record
exists; `records/*.json` never matches it. The report reads it with orjson and numpy only (no torch, never a
pickle), and the texts of the rows from the data cache's `texts.json` (written by `ftvar.data.prepare`).
About 18 kB per trial for 872 rows (SST-2's validation split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import numpy as np
import orjson

from ftvar.errors import RecordError
from ftvar.store.files import load_json, write_atomic
from ftvar.store.paths import StudyPaths

FORMAT = "ftvar-predictions/1"
DECIMALS = 4  # probabilities are rounded to this many decimals
SPLITS = ("eval", "test")


@dataclass(frozen=True)
class SplitPredictions:
    """One split's rows: gold labels, predicted labels (ints) and class probabilities (rows × classes)."""

    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class TrialPredictions:
    trial_id: str
    study_hash: str
    data_key: str
    label_names: list[str]
    splits: dict[str, SplitPredictions]


@cache
def _validator() -> jsonschema_rs.Validator:
    schema = json.loads(resources.files("ftvar.store").joinpath("predictions.schema.json").read_text())
    return jsonschema_rs.validator_for(schema)


def sidecar(
    trial_id: str,
    study: dict[str, str],
    data_key: str,
    label_names: list[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """The sidecar of one trial: per split (labels, predicted, probabilities) as compact JSON values."""
    return {
        "format": FORMAT,
        "trial_id": trial_id,
        "study": {"name": study["name"], "hash": study["hash"]},
        "data_key": data_key,
        "label_names": list(label_names),
        "splits": {
            name: {
                "labels": np.asarray(labels, dtype=np.int64).tolist(),
                "predicted": np.asarray(predicted, dtype=np.int64).tolist(),
                "probabilities": np.round(np.asarray(probs, dtype=np.float64), DECIMALS).tolist(),
            }
            for name, (labels, predicted, probs) in splits.items()
        },
    }


def validate(data: Any) -> None:
    """Raise RecordError naming what breaks the schema or the rows' agreement (lengths, label range)."""
    try:
        _validator().validate(data)
    except jsonschema_rs.ValidationError as exc:
        where = ".".join(str(k) for k in exc.instance_path) or "the file"
        raise RecordError(f"not valid per-example predictions: {where}: {exc.message}") from None
    except ValueError as exc:
        raise RecordError(f"not valid per-example predictions: unreadable ({exc})") from None
    k = len(data["label_names"])
    for name, split in data["splits"].items():
        n = len(split["labels"])
        if len(split["predicted"]) != n or len(split["probabilities"]) != n:
            raise RecordError(
                f"not valid per-example predictions: splits.{name}: {n} labels, {len(split['predicted'])} "
                f"predictions and {len(split['probabilities'])} probability rows"
            )
        if any(v >= k for v in split["labels"]) or any(v >= k for v in split["predicted"]):
            raise RecordError(f"not valid per-example predictions: splits.{name}: a label ≥ {k} classes")
        if any(len(row) != k for row in split["probabilities"]):
            raise RecordError(f"not valid per-example predictions: splits.{name}: a row without {k} classes")


def write_predictions(path: Path, data: dict[str, Any]) -> None:
    """Validate, then write atomically (compact JSON); RecordError when it breaks the schema."""
    validate(data)
    write_atomic(path, json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")


def read_predictions(path: Path) -> TrialPredictions:
    """One sidecar, validated; RecordError says why it was rejected."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise RecordError(f"{path.name}: unreadable or not JSON ({exc})") from None
    validate(data)
    if data["trial_id"] != path.stem:
        raise RecordError(f"{path.name}: file name does not match trial_id {data['trial_id']!r}")
    k = len(data["label_names"])
    splits = {
        name: SplitPredictions(
            np.asarray(s["labels"], dtype=np.int64),
            np.asarray(s["predicted"], dtype=np.int64),
            np.asarray(s["probabilities"], dtype=np.float64).reshape(-1, k),
        )
        for name, s in data["splits"].items()
    }
    return TrialPredictions(
        data["trial_id"], data["study"]["hash"], data["data_key"], list(data["label_names"]), splits
    )


def load_predictions(
    paths: StudyPaths, trial_ids: list[str], study_hash: str
) -> tuple[dict[str, TrialPredictions], list[tuple[str, str]]]:
    """The sidecars of these trials that exist: trial id → predictions, and (file, why) for every sidecar
    that was skipped (unreadable, invalid, of another study version). Trials without one are not listed."""
    found: dict[str, TrialPredictions] = {}
    skipped: list[tuple[str, str]] = []
    if not paths.predictions.is_dir():
        return found, skipped
    for tid in trial_ids:
        path = paths.prediction(tid)
        if not path.is_file():
            continue
        try:
            got = read_predictions(path)
        except RecordError as exc:
            skipped.append((str(path), str(exc)))
            continue
        if got.study_hash != study_hash:
            skipped.append((str(path), f"predictions of study hash {got.study_hash}, not {study_hash}"))
            continue
        found[tid] = got
    return found, skipped


def load_texts(paths: StudyPaths, data_key: str) -> dict[str, list[str]]:
    """The eval and test texts of a data cache (split → texts in row order); empty when there are none."""
    data = load_json(paths.texts(data_key))
    if not isinstance(data, dict):
        return {}
    return {k: [str(t) for t in v] for k, v in data.items() if k in SPLITS and isinstance(v, list)}
