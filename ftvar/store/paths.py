"""The layout of a study's folder, `<out>/<study name>/`: records, per-example predictions, data cache,
checkpoints, submitit's files, the report and the launches ledger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEXTS_FILE = "texts.json"  # in a cache folder: the eval (and test) rows' texts, in row order


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
        """The tokenized data, one folder per data key (ftvar.study.trial.data_key)."""
        return self.root / "cache"

    def cache_for(self, key: str) -> Path:
        return self.cache / key

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

    @property
    def predictions(self) -> Path:
        """Per-example predictions, one JSON sidecar per trial (ftvar.store.predictions); not records."""
        return self.root / "predictions"

    def prediction(self, tid: str) -> Path:
        return self.predictions / f"{tid}.json"

    def texts(self, key: str) -> Path:
        """The eval and test texts of the cache with this data key."""
        return self.cache_for(key) / TEXTS_FILE
