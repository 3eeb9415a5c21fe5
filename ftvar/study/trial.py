"""Trials: the study's design crossed with its seeds, as stable hashed ids, with each trial's settings.

A trial is one fine-tuning run: a design point (learning rate, batch size, epochs and any other axes) and a
pair of seeds (`init_seed`: the classifier head's initialisation and dropout; `order_seed`: the data order).
Baselines evaluate the un-fine-tuned model: one when the model's classification head was trained, one per
init seed when the head is initialised at random (its accuracy then depends on the seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftvar.errors import FtvarError
from ftvar.study.axes import show_value
from ftvar.study.config import SWEEPABLE, DataConfig, ModelConfig, Study, TrainConfig
from ftvar.study.study_hash import model_identity

BASELINE_ID = "baseline"
# axes that change what a baseline evaluates: the model and the eval split's tokenization
BASELINE_AXES = ("model.name_or_path", "data.max_length")


@dataclass(frozen=True)
class Trial:
    trial_id: str
    learning_rate: float | None  # None for a baseline (no fine-tuning)
    batch_size: int | None
    epochs: int
    init_seed: int | None  # None for the one baseline of a model whose head was trained
    order_seed: int | None  # None for a baseline (no data order)
    extra: tuple[tuple[str, Any], ...] = ()  # the other axes: (dotted name, value), in axis order
    replicate: int = 0  # grid.replicate: the same settings and seeds run again (0: the trial itself)

    @property
    def is_baseline(self) -> bool:
        return self.trial_id.startswith(BASELINE_ID)

    @property
    def seed(self) -> int | None:
        """The `seed` shorthand: the init seed when both seeds are equal (or there is no data order)."""
        return self.init_seed if self.order_seed in (None, self.init_seed) else None

    def params(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "seed": self.seed,
            "init_seed": self.init_seed,
            "order_seed": self.order_seed,
            **dict(self.extra),
            **({"replicate": self.replicate} if self.replicate else {}),
        }

    def label(self) -> str:
        extra = "".join(f" {name.rsplit('.', 1)[-1]}={show_value(v)}" for name, v in self.extra)
        if self.is_baseline:
            seed = "" if self.init_seed is None else f" init seed={self.init_seed}"
            return f"baseline (no fine-tuning){seed}{extra}"
        seeds = f"seed={self.seed}"
        if self.seed is None:
            seeds = f"init={self.init_seed} order={self.order_seed}"
        again = f" replicate={self.replicate}" if self.replicate else ""
        return f"lr={self.learning_rate:g} bs={self.batch_size} ep={self.epochs}{extra} {seeds}{again}"


def _canonical(name: str, value: Any) -> Any:
    """An axis value as it enters a trial id: floats by repr, model folders by identity (not path)."""
    if name == "model.name_or_path":
        return model_identity(value)
    if SWEEPABLE.get(name) is float:
        return repr(float(value))
    return value


def trial_id(
    study_hash: str,
    learning_rate: float,
    batch_size: int,
    epochs: int,
    seed: int,
    order_seed: int | None = None,
    extra: tuple[tuple[str, Any], ...] = (),
    replicate: int = 0,
) -> str:
    """10 hex digits of sha256 over the study hash and the params: stable across runs and machines.

    `seed` is the init seed; `order_seed` defaults to it. A trial of the paper's four axes with equal seeds
    hashes exactly as before init/order seeds and other axes existed, so the records on disk keep their ids.
    """
    payload: list[Any] = [study_hash, repr(float(learning_rate)), int(batch_size), int(epochs), int(seed)]
    if order_seed is not None and order_seed != seed:
        payload.append(int(order_seed))
    if extra:
        payload.append({name: _canonical(name, value) for name, value in extra})
    if replicate:  # replicate 0 is the trial itself: the id it has without replicates
        payload.append(["replicate", int(replicate)])
    blob = _ID_ENCODER.encode(payload)  # json.dumps(payload, sort_keys=True, default=str), the same text
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# json.dumps with options builds an encoder per call (a third of trial_id's time for 100,000 trials)
_ID_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def head_is_trained(name_or_path: str) -> bool:
    """Whether a pretrained model ships a trained sequence-classification head (its config.json names a
    `…ForSequenceClassification` architecture). Read from the folder or the Hugging Face cache, offline; when
    it cannot be told, False: a baseline per init seed is never wrong, only a few evaluations longer."""
    path = Path(name_or_path) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json")
        except Exception:  # an id the hub library rejects: not a cached Hub model
            return False
        if not isinstance(cached, str):
            return False
        path = Path(cached)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def _baselines(study: Study) -> list[Trial]:
    axes = [name for name, _ in study.grid.axes]
    relevant = [n for n in BASELINE_AXES if n in axes]
    if study.model.tokenizer == "train" and "data.train_limit" in axes:
        relevant.append("data.train_limit")  # the vocabulary is learned from the limited train split
    combos = list(dict.fromkeys(tuple((n, p.as_dict()[n]) for n in relevant) for p in study.points))
    init_seeds = next(a.values for a in study.axes if a.name == "init_seed")
    wanted: list[tuple[tuple[tuple[str, Any], ...], int | None]] = []
    for combo in combos:
        model = dict(combo).get("model.name_or_path", study.model.name_or_path)
        trained = study.model.tiny is None and head_is_trained(str(model))
        wanted += [(combo, None)] if trained else [(combo, int(s)) for s in init_seeds]
    out = []
    for combo, seed in wanted:
        if len(wanted) == 1:
            tid = BASELINE_ID
        else:
            blob = json.dumps([study.hash, BASELINE_ID, seed, {n: _canonical(n, v) for n, v in combo}])
            tid = f"{BASELINE_ID}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
        out.append(Trial(tid, None, None, 0, seed, None, combo))
    return out


def expand(study: Study) -> list[Trial]:
    """Every trial of the study: the baselines first (if configured), then the design points in their fixed
    order, each crossed with the seeds."""
    trials = _baselines(study) if study.analysis.baseline == "pretrained" else []
    for point in study.points:
        values = point.as_dict()
        lr, bs, ep = values.pop("learning_rate"), values.pop("batch_size"), values.pop("epochs")
        extra = tuple(values.items())
        for init, order in study.grid.seed_pairs(point.repeat):
            for again in study.grid.replicate:
                tid = trial_id(study.hash, lr, bs, ep, init, order, extra, again)
                trials.append(Trial(tid, lr, bs, ep, init, order, extra, again))
    return trials


def find_trial(study: Study, wanted: str) -> Trial:
    trials = expand(study)
    for t in trials:
        if t.trial_id == wanted:
            return t
    shown = ", ".join(t.trial_id for t in trials[:6]) + (", …" if len(trials) > 6 else "")
    raise FtvarError(f"study {study.name} has no trial {wanted!r}; its trials: {shown} (see `ftvar plan`)")


@dataclass(frozen=True)
class Settings:
    """What one trial runs with: the study's tables with the trial's axis values in place."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig


def settings(study: Study, trial: Trial) -> Settings:
    tables: dict[str, Any] = {"model": study.model, "data": study.data, "train": study.train}
    for name, value in trial.extra:
        section, setting = name.split(".", 1)
        tables[section] = dataclasses.replace(tables[section], **{setting: value})
    return Settings(**tables)


def data_key(study: Study, s: Settings) -> str:
    """The tokenized data a trial needs: one cache per distinct (data, tokenizer, max_length, train_limit),
    shared by every trial that needs the same (training settings and the model do not enter: trials of
    other engines, precisions or learning rates read the same cache)."""
    tokenizer = s.model.tokenizer if s.model.tokenizer is not None else s.model.name_or_path
    payload = [study.data_hash, model_identity(tokenizer), s.data.max_length, s.data.train_limit]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
