"""Axes: what a study varies, how each is named in words, and how the analysis codes it.

An axis is a setting that takes several values across the study's trials: the paper's learning rate, batch
size and epochs, the two seeds (`init_seed`: the classifier head's initialisation and dropout; `order_seed`:
the data order), or any sweepable setting under its dotted name (`train.warmup_ratio`). This module holds only
plain types and tables: the study file builds the axes (ftvar.study.config), the analysis reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

AxisKind = Literal["numeric", "categorical", "seed"]
Coding = Literal["log10", "log2", "raw", "categorical"]
CODINGS: tuple[Coding, ...] = ("log10", "log2", "raw", "categorical")

PAPER_AXES = ("learning_rate", "batch_size", "epochs")  # short names in [grid]; the paper's hyperparameters
SEED_AXES = ("init_seed", "order_seed")
# short formula names and labels of the axes that have them; any other axis is labelled from its name
SHORT = {"learning_rate": "lr", "batch_size": "bs", "epochs": "ep"}
LABELS = {
    "learning_rate": "learning rate",
    "batch_size": "batch size",
    "epochs": "epochs",
    "init_seed": "init seed",
    "order_seed": "data-order seed",
    "model.name_or_path": "model",
    "data.max_length": "max sequence length",
    "data.train_limit": "training rows",
}
# the analysis' coding of an axis when [analysis.coding] does not name it ("log" preset)
DEFAULT_CODING: dict[str, Coding] = {
    "learning_rate": "log10",
    "batch_size": "log2",
    "train.scheduler": "categorical",
    "train.precision": "categorical",
    "train.engine": "categorical",
    "train.device": "categorical",
    "model.name_or_path": "categorical",
}


@dataclass(frozen=True)
class Axis:
    """One axis of a study, as the analysis sees it."""

    name: str  # its [grid] key and its column in the results table: "learning_rate", "train.warmup_ratio"
    label: str  # in words: "learning rate", "warmup ratio"
    short: str  # a formula-safe identifier: "lr", "bs", "ep", "warmup_ratio", "init_seed"
    kind: AxisKind
    coding: Coding  # seeds are "categorical"
    values: tuple[Any, ...]  # the distinct values the study's design uses (numbers sorted)

    @property
    def is_seed(self) -> bool:
        return self.kind == "seed"


def show_value(value: Any) -> str:
    """An axis value for people: floats in short form, model folders by their name, not their path."""
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return (Path(text).name or text) if "/" in text else text


def label(name: str) -> str:
    """An axis in words: the table above, else its last dotted part with spaces."""
    return LABELS.get(name, name.rsplit(".", 1)[-1].replace("_", " "))


def short(name: str) -> str:
    """A formula-safe identifier for an axis."""
    return SHORT.get(name, name.rsplit(".", 1)[-1])


def default_coding(name: str, values: tuple[Any, ...], preset: str) -> Coding:
    """The coding of an axis when [analysis.coding] does not name it: categorical for strings, else by preset
    ("log": lr log10, batch size log2, the rest raw; "raw": everything numeric raw)."""
    if any(isinstance(v, str | bool) for v in values):
        return "categorical"
    if preset == "raw":
        return DEFAULT_CODING.get(name, "raw") if DEFAULT_CODING.get(name) == "categorical" else "raw"
    return DEFAULT_CODING.get(name, "raw")
