"""Designs: which combinations of axis values a study runs, before the seeds cross them.

`grid` runs the full product of the axes' lists. `sobol` and `lhs` draw `n` space-filling points (scrambled
Sobol' or Latin hypercube, `scipy.stats.qmc`, seeded) over axes given as ranges `{min, max, scale, round}`;
an axis given as a list is sampled over its values. `random` is random search: `n` independent draws from
each axis' prior (a range with `scale = "log"` is log-uniform, `"linear"` uniform; a list is a uniform choice
of its values), seeded; a point drawn twice is run twice (a centre-repeat's own seeds), so the trials are the
independent draws that expected max (Dodge et al. 2019) assumes. `ccd` is a central composite design over
the range axes: the 2^k factorial corners, 2k axial points at ±alpha and `center` centre points (coded units:
the range's ends are ±1), crossed with every list axis. Values are rounded as asked (integers for integer
settings).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftvar.errors import StudyError

KINDS = ("grid", "sobol", "lhs", "ccd", "random")
SCALES = ("linear", "log")
ALPHAS = ("face", "rotatable")


@dataclass(frozen=True)
class Range:
    """An axis given as a range (designs other than `grid`)."""

    min: float
    max: float
    scale: str = "linear"  # linear | log: sample evenly in the value or in its logarithm
    round: str | float | None = None  # "int" | "pow2" | a step such as 0.01; integer settings round to int


@dataclass(frozen=True)
class DesignConfig:
    kind: str = "grid"  # grid | sobol | lhs | ccd | random
    n: int | None = None  # sobol, lhs, random: number of points
    seed: int = 0  # sobol, lhs, random: the sampler's seed
    center: int = 1  # ccd: centre points (each centre repeat runs with its own seeds)
    alpha: str | float = "face"  # ccd: face (axial points on the range's ends) | rotatable | a number


Spec = tuple[Any, ...] | Range  # an axis: its list of values, or a range


@dataclass(frozen=True)
class Point:
    """One design point: a value per axis, and which centre repeat it is (ccd; 0 otherwise)."""

    values: tuple[tuple[str, Any], ...]
    repeat: int = 0  # a ccd centre point's repeat: r > 0 runs with seeds of its own (Grid.seed_pairs)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def check_range(name: str, r: Range) -> None:
    if r.scale not in SCALES:
        raise StudyError(f"grid.{name}.scale = {r.scale!r} is not valid; choose one of: {', '.join(SCALES)}")
    if not r.min < r.max:
        raise StudyError(
            f"grid.{name} is a range with min {r.min:g} ≥ max {r.max:g}: a range needs min < max "
            "(give a one-value list for a fixed value)"
        )
    if r.scale == "log" and r.min <= 0:
        raise StudyError(f"grid.{name} has scale = 'log' but min = {r.min:g}: a log scale needs bounds > 0")
    if isinstance(r.round, str) and r.round not in ("int", "pow2"):
        raise StudyError(f"grid.{name}.round = {r.round!r}: use 'int', 'pow2' or a step such as 0.01")
    if isinstance(r.round, float | int) and not isinstance(r.round, bool) and r.round <= 0:
        raise StudyError(f"grid.{name}.round must be > 0, got {r.round}")
    if r.round == "pow2" and r.min <= 0:
        raise StudyError(f"grid.{name}.round = 'pow2' needs min > 0")


def _round(value: float, r: Range, integer: bool) -> Any:
    if r.round == "pow2":
        value = 2.0 ** math.floor(math.log2(value) + 0.5)
    elif isinstance(r.round, float | int) and not isinstance(r.round, bool | str):
        step = float(r.round)
        value = math.floor(value / step + 0.5) * step
        value = float(f"{value:.12g}")  # 0.1 * 3 → 0.3, not 0.30000000000000004
    if integer or r.round in ("int", "pow2"):
        return math.floor(value + 0.5) if integer else float(math.floor(value + 0.5))
    return float(f"{value:.6g}")  # six significant digits: readable ids and tables


def _from_unit(u: float, r: Range) -> float:
    if r.scale == "log":
        return math.exp(math.log(r.min) + u * (math.log(r.max) - math.log(r.min)))
    return r.min + u * (r.max - r.min)


def _from_coded(c: float, r: Range) -> float:
    """Coded units (-1 at min, +1 at max) → a value, in the range's scale."""
    return _from_unit((c + 1) / 2, r)


def _dedupe(points: list[Point]) -> list[Point]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in points:
        key = (p.values, p.repeat)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def points(axes: dict[str, Spec], design: DesignConfig, integer_axes: set[str]) -> list[Point]:
    """The design points, in a fixed order (grid: the product in axis order). Duplicates that rounding
    creates in a sampled design are merged."""
    names = list(axes)
    if design.kind == "grid":
        lists: list[tuple[Any, ...]] = []
        for name in names:
            spec = axes[name]
            if isinstance(spec, Range):
                # (validate_design says more)
                raise StudyError("ranges need [design] kind = sobol, lhs, ccd or random")
            lists.append(spec)
        return [Point(tuple(zip(names, combo, strict=True))) for combo in itertools.product(*lists)]
    if design.kind in ("sobol", "lhs"):
        return _dedupe(_sampled(axes, design, integer_axes))
    if design.kind == "random":
        return _random(axes, design, integer_axes)
    return _dedupe(_ccd(axes, design, integer_axes))


def _random(axes: dict[str, Spec], design: DesignConfig, integer_axes: set[str]) -> list[Point]:
    """`n` independent draws from the axes' priors; the r-th repeat of a point is its replicate r (its own
    seeds), so every draw is a trial of its own."""
    assert design.n is not None  # validated: a random design needs n
    rng = np.random.default_rng(design.seed)
    seen: dict[tuple[tuple[str, Any], ...], int] = {}
    out = []
    for _ in range(design.n):
        values = []
        for name, spec in axes.items():
            if isinstance(spec, Range):
                value = _round(_from_unit(float(rng.random()), spec), spec, name in integer_axes)
            else:
                value = spec[int(rng.integers(len(spec)))] if len(spec) > 1 else spec[0]
            values.append((name, value))
        key = tuple(values)
        out.append(Point(key, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return out


def _sampled(axes: dict[str, Spec], design: DesignConfig, integer_axes: set[str]) -> list[Point]:
    from scipy.stats import qmc

    assert design.n is not None  # validated: sampled designs need n
    varying = [n for n, s in axes.items() if isinstance(s, Range) or len(s) > 1]
    d = max(1, len(varying))
    if design.kind == "sobol":
        with warnings.catch_warnings():  # n need not be a power of two here; balance is a nicety
            warnings.simplefilter("ignore")
            unit = qmc.Sobol(d, scramble=True, seed=design.seed).random(design.n)
    else:
        unit = qmc.LatinHypercube(d, seed=design.seed).random(design.n)
    out = []
    for row in unit:
        values = []
        for name, spec in axes.items():
            if name not in varying:
                assert not isinstance(spec, Range)
                values.append((name, spec[0]))
                continue
            u = float(row[varying.index(name)])
            if isinstance(spec, Range):
                values.append((name, _round(_from_unit(u, spec), spec, name in integer_axes)))
            else:
                values.append((name, spec[min(len(spec) - 1, int(u * len(spec)))]))
        out.append(Point(tuple(values)))
    return out


def ccd_alpha(design: DesignConfig, k: int) -> float:
    if design.alpha == "face":
        return 1.0
    if design.alpha == "rotatable":
        return float((2**k) ** 0.25)
    return float(design.alpha)


def _ccd(axes: dict[str, Spec], design: DesignConfig, integer_axes: set[str]) -> list[Point]:
    factors = [n for n, s in axes.items() if isinstance(s, Range)]
    k, alpha = len(factors), ccd_alpha(design, len(factors))
    coded: list[tuple[tuple[float, ...], int]] = [(c, 0) for c in itertools.product((-1.0, 1.0), repeat=k)]
    for i in range(k):
        for sign in (-1.0, 1.0):
            coded.append((tuple(sign * alpha if j == i else 0.0 for j in range(k)), 0))
    coded += [(tuple(0.0 for _ in range(k)), r) for r in range(design.center)]
    lists = {n: s for n, s in axes.items() if not isinstance(s, Range)}
    out = []
    for combo in itertools.product(*lists.values()):
        fixed = dict(zip(lists, combo, strict=True))
        for c, repeat in coded:
            value_of = dict(fixed)
            for name, x in zip(factors, c, strict=True):
                spec = axes[name]
                assert isinstance(spec, Range)
                value_of[name] = _round(_from_coded(x, spec), spec, name in integer_axes)
            out.append(Point(tuple((n, value_of[n]) for n in axes), repeat))
    return out


def validate_design(axes: dict[str, Spec], design: DesignConfig, n_params: int) -> None:
    """The design's own rules; `n_params` is the number of parameters of the analysis' fit over its axes."""
    if design.kind not in KINDS:
        raise StudyError(f"design.kind = {design.kind!r} is not valid; choose one of: {', '.join(KINDS)}")
    ranges = [n for n, s in axes.items() if isinstance(s, Range)]
    for name in ranges:
        spec = axes[name]
        assert isinstance(spec, Range)
        check_range(name, spec)
    if design.kind == "grid":
        if ranges:
            raise StudyError(
                f"grid.{ranges[0]} is a range {{min, max}}, which the full grid cannot run: give a list of "
                "values, or set [design] kind = sobol, lhs, ccd or random"
            )
        return
    if design.kind in ("sobol", "lhs", "random"):
        if design.n is None or design.n < 1:
            raise StudyError(f"design.kind = {design.kind!r} needs design.n, the number of points")
        varying = [n for n, s in axes.items() if isinstance(s, Range) or len(s) > 1]
        if not varying and design.kind == "random":
            raise StudyError(
                "a random design draws every point from the axes' priors, and no axis has one: give an axis "
                "as a range { min, max, scale = 'log' } (log-uniform; 'linear': uniform) or as a list of "
                "values (a uniform choice)"
            )
        if not varying:
            raise StudyError(f"a {design.kind} design needs at least one axis with a range or several values")
        if design.n < n_params:
            raise StudyError(
                f"design.n = {design.n} is fewer than the {n_params} parameters the analysis fits over "
                f"these axes: use n ≥ {n_params} (more leaves degrees of freedom for the residuals), "
                "or lower analysis.degree"
            )
        return
    if len(ranges) < 2:
        shown = ", ".join(ranges) or "none"
        raise StudyError(
            f"a ccd design needs at least 2 numeric axes given as ranges {{min, max}} (has {shown}); an axis "
            "with one value cannot be a design factor"
        )
    if design.center < 1:
        raise StudyError(f"design.center must be ≥ 1, got {design.center}")
    if isinstance(design.alpha, str) and design.alpha not in ALPHAS:
        raise StudyError(f"design.alpha = {design.alpha!r}: use face, rotatable or a number > 0")
    if not isinstance(design.alpha, str) and design.alpha <= 0:
        raise StudyError(f"design.alpha must be > 0, got {design.alpha}")


def describe(axes: dict[str, Spec], design: DesignConfig, n_points: int, n_seeds: int) -> str:
    """One paragraph for `ftvar plan`: the design, its cost, and the full grid it stands in for."""
    ranges = [n for n, s in axes.items() if isinstance(s, Range)]
    lists = [len(s) for s in axes.values() if not isinstance(s, Range)]
    if design.kind == "grid":
        trials = n_points * n_seeds
        return f"design: full grid, {n_points} point(s) × {n_seeds} seed setting(s) = {trials} trials"
    levels = 3  # the fewest levels per axis that identify a quadratic
    full = int(np.prod([levels] * len(ranges) + lists)) if ranges or lists else 1
    if design.kind == "ccd":
        k = len(ranges)
        alpha = ccd_alpha(design, k)
        head = (
            f"design: central composite ({design.alpha if isinstance(design.alpha, str) else 'alpha'} "
            f"α = {alpha:.3g}) over {k} range axes: {2**k} corners + {2 * k} axial + {design.center} centre"
        )
        if len(lists) and math.prod(lists) > 1:
            head += f", × {math.prod(lists)} list combinations"
    elif design.kind == "random":
        head = f"design: random search from the axes' priors (seed {design.seed}), n = {design.n} draws"
    else:
        head = f"design: {design.kind} (seed {design.seed}), n = {design.n}"
    return (
        f"{head} → {n_points} distinct point(s) × {n_seeds} seed setting(s) = {n_points * n_seeds} trials; "
        f"a full 3-level grid over the same axes: {full} point(s), {full * n_seeds} trials"
    )
