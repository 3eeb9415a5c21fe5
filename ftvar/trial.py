"""Trials: the grid expanded into stable, hashed ids, and where a study's files live."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftvar.config import Study
from ftvar.errors import FtvarError

BASELINE_ID = "baseline"


@dataclass(frozen=True)
class Trial:
    trial_id: str
    learning_rate: float | None  # None for the baseline (no fine-tuning)
    batch_size: int | None
    epochs: int
    seed: int

    @property
    def is_baseline(self) -> bool:
        return self.trial_id == BASELINE_ID

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("trial_id")
        return out

    def label(self) -> str:
        if self.is_baseline:
            return "baseline (no fine-tuning)"
        return f"lr={self.learning_rate:g} bs={self.batch_size} ep={self.epochs} seed={self.seed}"


def trial_id(study_hash: str, learning_rate: float, batch_size: int, epochs: int, seed: int) -> str:
    """10 hex digits of sha256 over the study hash and the params: stable across runs and machines."""
    payload = json.dumps([study_hash, repr(float(learning_rate)), int(batch_size), int(epochs), int(seed)])
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def expand(study: Study) -> list[Trial]:
    """Every trial of the study: the baseline first (if configured), then the grid in a fixed order."""
    g = study.grid
    trials = []
    if study.analysis.baseline == "pretrained":
        trials.append(Trial(BASELINE_ID, None, None, 0, g.seed[0]))
    for lr, bs, ep, seed in itertools.product(g.learning_rate, g.batch_size, g.epochs, g.seed):
        trials.append(Trial(trial_id(study.hash, lr, bs, ep, seed), lr, bs, ep, seed))
    return trials


def find_trial(study: Study, wanted: str) -> Trial:
    trials = expand(study)
    for t in trials:
        if t.trial_id == wanted:
            return t
    shown = ", ".join(t.trial_id for t in trials[:6]) + (", …" if len(trials) > 6 else "")
    raise FtvarError(f"study {study.name} has no trial {wanted!r}; its trials: {shown} (see `ftvar plan`)")


@dataclass(frozen=True)
class StudyPaths:
    """Where one study's files go: `<out>/<study name>/…`."""

    root: Path

    @classmethod
    def of(cls, out: Path | str, study_name: str) -> StudyPaths:
        return cls(Path(out).resolve() / study_name)

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def submitit(self) -> Path:
        return self.root / "submitit"

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def launches(self) -> Path:
        return self.root / "launches.jsonl"

    def record(self, tid: str) -> Path:
        return self.records / f"{tid}.json"
