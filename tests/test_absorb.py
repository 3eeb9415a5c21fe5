"""Absorbing blocking factors: the residuals are those of least squares on dummy columns, whether the factors
are solved exactly or by alternating projections, balanced or not."""

from __future__ import annotations

import numpy as np
import pytest

from ftvar.stats import absorb as absorb_mod
from ftvar.stats.absorb import Factor, absorb


def dummies(factors: list[Factor], n: int) -> np.ndarray:
    columns = [np.ones((n, 1))]
    for f in factors:
        columns.append(np.eye(f.n_levels)[f.codes])
    return np.hstack(columns)


def residuals(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    out: np.ndarray = y - x @ beta
    return out


def unbalanced(n: int, levels: list[int], seed: int) -> tuple[list[Factor], np.ndarray]:
    """Crossed factors with cells missing at random (and one level unused), and three responses."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, k, n) for k in levels]
    codes[0][codes[0] == levels[0] - 1] = 0  # the last level of the first factor has no rows
    factors = [Factor(c, k) for c, k in zip(codes, levels, strict=True)]
    effects = sum(rng.normal(size=k)[c] for c, k in zip(codes, levels, strict=True))
    y = effects[:, None] + rng.normal(size=(n, 3))
    return factors, y


@pytest.mark.parametrize("levels", [[6, 40], [5, 30, 30], [50, 7]])
@pytest.mark.parametrize("solved", [True, False])
def test_absorbed_residuals_are_the_dummy_regressions(
    levels: list[int], solved: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not solved:
        monkeypatch.setattr(absorb_mod, "MAX_SOLVED", 0)  # alternating projections
    factors, y = unbalanced(600, levels, seed=len(levels))
    expected = residuals(dummies(factors, 600), y)
    got, _ = absorb(y, factors)
    assert np.allclose(got, expected, atol=1e-8)
    one, _ = absorb(y[:, 0], factors)  # a vector in, a vector out
    assert one.shape == (600,) and np.allclose(one, expected[:, 0], atol=1e-8)


def test_one_factor_is_one_pass_of_group_means() -> None:
    factors, y = unbalanced(300, [9], seed=1)
    got, effects = absorb(y, factors, effects=True)
    assert np.allclose(got, residuals(dummies(factors, 300), y), atol=1e-10)
    assert effects[0].shape == (9, 3)
