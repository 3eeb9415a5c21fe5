"""A synthetic sentiment data set, generated from seeded templates (used by the `smoke` study).

Sentences are built from a sentiment lexicon, intensifiers, negation ("not", "never", "hardly"), and contrast
("…, but …": the clause after "but" decides), with a share of labels flipped at random. A bag-of-words model
gets the lexicon but not negation or contrast, so the task is learnable but not trivial: how far a model gets
depends on its learning rate, batch size and epochs.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "delightful",
    "charming",
    "brilliant",
    "moving",
    "funny",
    "superb",
    "touching",
    "clever",
    "fresh",
    "gripping",
    "beautiful",
    "solid",
    "warm",
    "smart",
)
NEGATIVE = (
    "bad",
    "awful",
    "terrible",
    "boring",
    "dull",
    "clumsy",
    "tedious",
    "weak",
    "painful",
    "forgettable",
    "bland",
    "messy",
    "lifeless",
    "stale",
    "silly",
    "flat",
    "hollow",
    "tiresome",
)
NOUNS = (
    "film",
    "movie",
    "story",
    "cast",
    "script",
    "soundtrack",
    "ending",
    "performance",
    "direction",
    "plot",
    "dialogue",
    "pacing",
    "lead",
    "camera work",
    "humor",
    "premise",
)
INTENSIFIERS = ("", "", "very ", "really ", "quite ", "truly ", "rather ", "remarkably ")
NEGATIONS = ("not", "never", "hardly", "not at all")
GENERATOR_VERSION = 2  # part of the study hash: a change here invalidates synthetic studies' records
NEGATION_RATE, CONTRAST_RATE, DESPITE_RATE = 0.15, 0.15, 0.10
FILLERS = ("", "", "", "", "honestly , ", "overall , ", "i think ", "for me , ")


def _phrase(rng: random.Random, positive: bool) -> tuple[str, bool]:
    """A clause and its polarity; negation flips the polarity of the adjective."""
    negated = rng.random() < NEGATION_RATE
    adjective_positive = positive != negated
    adjective = rng.choice(POSITIVE if adjective_positive else NEGATIVE)
    noun = rng.choice(NOUNS)
    intens = rng.choice(INTENSIFIERS)
    if negated:
        return f"the {noun} is {rng.choice(NEGATIONS)} {intens}{adjective}", positive
    return f"the {noun} is {intens}{adjective}", positive


def sentence(rng: random.Random) -> tuple[str, int]:
    """One (text, label) pair; label 1 = positive."""
    positive = rng.random() < 0.5
    kind = rng.random()
    if kind < CONTRAST_RATE:  # contrast: the first clause has the opposite polarity
        first, _ = _phrase(rng, not positive)
        second, _ = _phrase(rng, positive)
        text = f"{first} , but {second}"
    elif (
        kind < CONTRAST_RATE + DESPITE_RATE
    ):  # a distractor of the opposite polarity that the main clause overrides
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        other = rng.choice(NEGATIVE if positive else POSITIVE)
        intens = rng.choice(INTENSIFIERS)
        text = f"a {intens}{adjective} {rng.choice(NOUNS)} , despite a {other} {rng.choice(NOUNS)}"
    else:
        text, _ = _phrase(rng, positive)
    return f"{rng.choice(FILLERS)}{text} .", int(positive)


def generate(n: int, seed: int, label_noise: float) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, label = sentence(rng)
        if rng.random() < label_noise:
            label = 1 - label
        rows.append((text, label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """TSV with header `sentence<TAB>label`, unquoted, as GLUE's SST-2 files."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def write_splits(folder: Path, n_train: int, n_eval: int, seed: int, label_noise: float) -> tuple[Path, Path]:
    """Write train.tsv and eval.tsv; the eval split uses a different seed stream and no label noise."""
    folder.mkdir(parents=True, exist_ok=True)
    train, evaluation = folder / "train.tsv", folder / "eval.tsv"
    write_tsv(train, generate(n_train, seed * 2 + 1, label_noise))
    write_tsv(evaluation, generate(n_eval, seed * 2 + 2, 0.0))
    return train, evaluation
