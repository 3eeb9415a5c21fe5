"""Model terms from a study's axes: coded, centred predictors, polynomial and factor terms, seed factors, and
which terms the design can identify.

Numeric axes are coded (log10, log2 or raw, per the axis' coding) and centred on their mean over the rows, so
that a linear term is the slope at the centre of the design even when squares and interactions are present.
Categorical axes enter as treatment-coded factors (the first level is the reference). Squares, cubes and
interactions follow `degree` over the numeric axes; factor × numeric interactions are added on request. A term
the design cannot identify (a square on a 2-level axis, a cube in a central composite design, a term aliased
with earlier ones) is left out with a note that says why. The seeds become one or two blocking factors.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftvar.stats.absorb import Factor, absorb, cross
from ftvar.study.axes import Axis, show_value


def _identity(x: np.ndarray) -> np.ndarray:
    return x


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log10": np.log10,
    "log2": np.log2,
    "raw": _identity,
}
CODING_WORDS = {"log10": "log10, centred", "log2": "log2, centred", "raw": "as given, centred"}


@dataclass
class Predictor:
    """An axis that varies in the rows: numeric (coded, centred) or a factor."""

    axis: Axis
    name: str  # formula-safe short name
    kind: str  # numeric | categorical
    transform: str  # log10 | log2 | raw | categorical
    centre: float | None  # numeric: the mean coded value over the rows
    values: list[Any]  # distinct values in the rows (numbers sorted; factor levels in first-seen order)

    @property
    def label(self) -> str:
        return self.axis.label

    def code(self, raw: Any) -> np.ndarray:
        """Raw axis values → centred coded values (numeric predictors only)."""
        assert self.centre is not None
        x = np.asarray(raw, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            coded: np.ndarray = TRANSFORMS[self.transform](x) - self.centre
        return coded

    def uncode(self, coded: np.ndarray) -> np.ndarray:
        assert self.centre is not None
        x = np.asarray(coded, dtype="float64") + self.centre
        if self.transform == "log10":
            return np.asarray(10.0**x)
        if self.transform == "log2":
            return np.asarray(2.0**x)
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "axis": self.axis.name,
            "label": self.label,
            "kind": self.kind,
            "coding": self.transform,
            "centre": self.centre,
            "values": self.values,
        }


@dataclass(frozen=True)
class TermSpec:
    """One formula term: a monomial of numeric predictors, a factor, or a factor × numeric interaction."""

    name: str  # "lr", "I(lr ** 2)", "lr:bs", "C(scheduler)", "C(scheduler):lr"
    parts: tuple[str, ...]  # predictor names with multiplicity: ("lr", "lr") for the square
    label: str  # in words

    @property
    def order(self) -> int:
        return len(self.parts)

    def contains(self, other: TermSpec) -> bool:
        """Whether `other` is marginal to this term (its parts a strict sub-multiset of this term's)."""
        mine, theirs = Counter(self.parts), Counter(other.parts)
        return mine != theirs and all(mine[k] >= n for k, n in theirs.items())


@dataclass
class SeedFactor:
    name: str  # init_seed | order_seed | seed
    label: str
    codes: np.ndarray  # level index per row
    levels: list[Any]


@dataclass
class ModelData:
    """The rows of one fit and everything the fits need about them."""

    rows: pd.DataFrame  # the rows used (original columns)
    predictors: list[Predictor]
    terms: list[TermSpec]  # identifiable hyperparameter terms, in formula order
    X: np.ndarray  # n × (1 + term columns): intercept first
    columns: list[str]  # names of X's columns
    term_columns: dict[str, list[int]]  # term name → its columns in X
    config: np.ndarray  # configuration index per row (the distinct hyperparameter combinations)
    seeds: list[SeedFactor]
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def seed_blocks(self) -> list[Factor]:
        """The seed factors, to absorb (ftvar.stats.absorb)."""
        return [Factor(s.codes, len(s.levels)) for s in self.seeds]

    def config_block(self) -> Factor:
        return Factor(self.config, self.n_configs)

    @property
    def n_configs(self) -> int:
        return int(self.config.max()) + 1 if len(self.config) else 0

    def seed_dummies(self) -> tuple[np.ndarray, list[str]]:
        """Treatment-coded seed blocks (first level of each seed factor is the reference)."""
        cols, names = [], []
        for s in self.seeds:
            for j, level in enumerate(s.levels[1:], start=1):
                cols.append((s.codes == j).astype("float64"))
                names.append(f"C({s.name})[T.{level}]")
        if not cols:
            return np.zeros((self.n, 0)), []
        return np.column_stack(cols), names

    def formula(self, response: str) -> str:
        seeds = " + ".join(f"C({s.name})" for s in self.seeds)
        rhs = " + ".join([t.name for t in self.terms] + ([seeds] if seeds else [])) or "1"
        return f"{response} ~ {rhs}"


def predictors(rows: pd.DataFrame, axes: tuple[Axis, ...], notes: list[str]) -> list[Predictor]:
    """The hyperparameter axes that vary in the rows, coded and centred."""
    out: list[Predictor] = []
    used: set[str] = set()
    for axis in axes:
        if axis.is_seed or axis.name not in rows.columns:
            continue
        col = rows[axis.name]
        present = col.dropna()
        if axis.kind == "categorical":  # the study's order: its first level is the reference
            seen = list(dict.fromkeys(present.tolist()))
            values = [v for v in axis.values if v in seen] + [v for v in seen if v not in axis.values]
        else:
            numbers = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype="float64")
            values = [float(v) for v in np.unique(numbers)]
        if len(values) < 2:
            shown = show_value(values[0]) if values else "none"
            notes.append(f"{axis.label} has a single value ({shown}) in these trials: not in the fits")
            continue
        name = axis.short if axis.short.isidentifier() else f"x{len(out)}"
        while name in used or name in ("C", "I", "np"):
            name += "_"
        used.add(name)
        if axis.kind == "categorical":
            out.append(Predictor(axis, name, "categorical", "categorical", None, values))
            continue
        coded = TRANSFORMS[axis.coding if axis.coding in TRANSFORMS else "raw"]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = coded(np.asarray(values, dtype="float64"))
        if not np.isfinite(x).all():
            notes.append(f"{axis.label}: {axis.coding} coding needs values > 0; coded as given instead")
            transform = "raw"
        else:
            transform = axis.coding if axis.coding in TRANSFORMS else "raw"
        p = Predictor(axis, name, "numeric", transform, 0.0, values)
        p.centre = float(np.mean(TRANSFORMS[transform](col.astype("float64").to_numpy())))
        out.append(p)
    return out


def _monomial(parts: tuple[str, ...]) -> str:
    powers = Counter(parts)
    return ":".join(v if k == 1 else f"I({v} ** {k})" for v, k in powers.items())


def _monomial_label(parts: tuple[str, ...], labels: dict[str, str]) -> str:
    powers = Counter(parts)
    words = {2: "squared", 3: "cubed"}
    return " × ".join(
        labels[v] if k == 1 else f"{labels[v]} {words.get(k, f'^{k}')}" for v, k in powers.items()
    )


def candidate_terms(preds: list[Predictor], degree: int, factor_interactions: bool) -> list[TermSpec]:
    """Every term of the model before identifiability: factors, then the numeric polynomial by degree, then
    factor × numeric interactions."""
    labels = {p.name: p.label for p in preds}
    numeric = [p.name for p in preds if p.kind == "numeric"]
    factors = [p.name for p in preds if p.kind == "categorical"]
    out = [TermSpec(f"C({f})", (f,), labels[f]) for f in factors]
    for k in range(1, degree + 1):
        for mono in itertools.combinations_with_replacement(numeric, k):
            out.append(TermSpec(_monomial(mono), mono, _monomial_label(mono, labels)))
    if factor_interactions:
        for f in factors:
            for x in numeric:
                out.append(TermSpec(f"C({f}):{x}", (f, x), f"{labels[f]} × {labels[x]}"))
    return out


def term_matrix(
    term: TermSpec, preds: dict[str, Predictor], rows: pd.DataFrame
) -> tuple[np.ndarray, list[str]]:
    """A term's columns for the rows (and their names, patsy-style)."""
    numeric = np.ones(len(rows))
    factor: Predictor | None = None
    for name in term.parts:
        p = preds[name]
        if p.kind == "categorical":
            factor = p
        else:
            numeric = numeric * p.code(rows[p.axis.name].to_numpy(dtype="float64"))
    if factor is None:
        return numeric[:, None], [term.name]
    values = rows[factor.axis.name].tolist()
    cols, names = [], []
    rest = term.name.split(":", 1)[1] if ":" in term.name else ""
    for level in factor.values[1:]:
        cols.append(np.array([v == level for v in values], dtype="float64") * numeric)
        names.append(f"C({factor.name})[T.{show_value(level)}]" + (f":{rest}" if rest else ""))
    return np.column_stack(cols), names


def rank(matrix: np.ndarray) -> int:
    """Numerical rank, from the Gram matrix of the columns scaled to unit norm (codings mix scales)."""
    if matrix.shape[1] == 0:
        return 0
    gram = cross(matrix, matrix)
    norms = np.sqrt(np.diag(gram))
    keep = norms > 0
    if not keep.any():
        return 0
    scaled = gram[np.ix_(keep, keep)] / np.outer(norms[keep], norms[keep])
    w = np.linalg.eigvalsh(scaled)
    return int(np.count_nonzero(w > w.max() * 1e-10))


def seed_factors(rows: pd.DataFrame, notes: list[str]) -> list[SeedFactor]:
    """The seed axes as blocking factors: one factor when init and order seeds always go together (the `seed`
    shorthand), two when they are crossed, none when there is a single seed."""
    out: list[SeedFactor] = []
    present = {}
    for name, label in (("init_seed", "init seed"), ("order_seed", "data-order seed")):
        if name not in rows.columns:
            continue
        col = rows[name]
        if col.isna().all():
            continue
        levels = list(dict.fromkeys(col.tolist()))
        if len(levels) >= 2:
            present[name] = (label, col, levels)
    if len(present) == 2:
        n_pairs = len(rows[["init_seed", "order_seed"]].drop_duplicates())
        n_init, n_order = rows["init_seed"].nunique(), rows["order_seed"].nunique()
        if n_pairs == n_init == n_order:  # one-to-one: the seed shorthand
            codes, levels = _codes(rows["init_seed"])
            return [SeedFactor("seed", "seed (init = data order)", codes, levels)]
    for name, (label, col, _) in present.items():
        codes, levels = _codes(col)
        out.append(SeedFactor(name, label, codes, levels))
    return out


def _codes(col: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """Level index per row and the levels, sorted."""
    codes, uniques = pd.factorize(col, sort=True)
    return np.asarray(codes), list(uniques)


def build(
    rows: pd.DataFrame,
    axes: tuple[Axis, ...],
    degree: int,
    factor_interactions: bool = False,
    terms_only: list[tuple[str, ...]] | None = None,
    raw: bool = False,
) -> ModelData:
    """Predictors, identifiable terms and the model matrix for these rows (ok trials of one fit).
    `terms_only`: exactly these terms (monomials of the axes' short names) instead of the polynomial of
    `degree`, those whose axes vary; `raw`: every numeric axis as given and not centred (a formula such as
    `y ~ lr + bs + ep + bs:ep` on the settings themselves)."""
    rows = rows.reset_index(drop=True)
    notes: list[str] = []
    preds = predictors(rows, axes, notes)
    if raw:
        for p in preds:
            if p.kind == "numeric":
                p.transform, p.centre = "raw", 0.0
    by_name = {p.name: p for p in preds}
    seeds = seed_factors(rows, notes)
    for p in preds:
        if p.kind == "numeric" and degree >= 2 and len(p.values) <= degree:
            powers = [k for k in range(len(p.values), degree + 1) if k >= 2]
            if powers:
                words = {2: "square", 3: "cube"}
                what = " and ".join(words.get(k, f"power {k}") for k in powers)
                notes.append(
                    f"{p.label} has {len(p.values)} distinct values: its {what} cannot be identified and "
                    "is left out"
                )
    hp_cols = [p.axis.name for p in preds]
    config = (
        rows.groupby(hp_cols, sort=True, dropna=False).ngroup().to_numpy()
        if hp_cols
        else np.zeros(len(rows), dtype=int)
    )
    blocks = [Factor(s.codes, len(s.levels)) for s in seeds]
    X = [np.ones((len(rows), 1))]
    columns = ["Intercept"]
    term_columns: dict[str, list[int]] = {}
    terms: list[TermSpec] = []
    current = np.zeros((len(rows), 0))  # the accepted term columns, seeds and intercept absorbed
    current_rank = 0
    candidates = candidate_terms(preds, degree, factor_interactions)
    if terms_only is not None:
        labels = {p.name: p.label for p in preds}
        short = {p.axis.short: p.name for p in preds}
        candidates = [
            TermSpec(
                _monomial(tuple(short[x] for x in parts)),
                tuple(short[x] for x in parts),
                _monomial_label(tuple(short[x] for x in parts), labels),
            )
            for parts in terms_only
            if all(x in short for x in parts)
        ]
    for term in candidates:
        counts = Counter(term.parts)
        if any(by_name[v].kind == "numeric" and k >= len(by_name[v].values) for v, k in counts.items()):
            continue  # a power of an axis with too few values (noted above)
        cols, names = term_matrix(term, by_name, rows)
        absorbed, _ = absorb(cols, blocks)
        raw_norm = np.linalg.norm(cols, axis=0)
        gone = np.linalg.norm(absorbed, axis=0) <= 1e-9 * np.where(raw_norm > 0, raw_norm, 1.0)
        absorbed[:, gone] = 0.0  # a column the intercept and the seed blocks explain: no information left
        trial = np.column_stack([current, absorbed])
        r = rank(trial)
        if r < current_rank + cols.shape[1]:
            if r == current_rank:
                notes.append(
                    f"{term.label} ({term.name}) cannot be identified in this design (its column is a "
                    "combination of the terms before it: too few distinct configurations): left out"
                )
            else:
                notes.append(
                    f"{term.label} ({term.name}) is only partly identifiable (some level combinations have "
                    "no trials): left out"
                )
            continue
        current, current_rank = trial, r
        start = sum(x.shape[1] for x in X)
        X.append(cols)
        columns += names
        term_columns[term.name] = list(range(start, start + cols.shape[1]))
        terms.append(term)
    return ModelData(rows, preds, terms, np.column_stack(X), columns, term_columns, config, seeds, notes)
