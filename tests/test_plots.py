"""The report's plots (ftvar.report.plots): what they draw, checked on the figure before it is saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from records_factory import make_study, simulate

from ftvar.report import plots


def test_the_parallel_plot_draws_every_trial_once_and_names_few_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trial is one line of one collection, the best drawn last (on top), coloured by its metric; an
    axis with many values (a large study's seeds) names its first and last only, not hundreds overprinted."""
    study = make_study(lr=[1e-5, 2e-5, 5e-5], bs=[8, 16], ep=[1], seeds=list(range(40)))
    table = simulate(
        study,
        lambda rows: 0.8 + 0.01 * np.log10(rows["learning_rate"].to_numpy()),
        rng=np.random.default_rng(0),
    )
    trials = table[table["kind"] == "trial"].reset_index(drop=True)
    axes = [a for a in study.axes if a.name in ("learning_rate", "batch_size")]
    seed_axes = [a for a in study.axes if a.is_seed and trials[a.name].nunique() >= 2]
    figures: list[Figure] = []
    real_save = plots._save

    def keep(fig: Figure, path: Path) -> None:
        figures.append(fig)
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    out = tmp_path / "parallel.png"
    plots.parallel_plot(trials, axes + seed_axes, "accuracy", out)
    assert out.stat().st_size > 0
    ax = figures[0].axes[0]
    collections = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(collections) == 1 and len(collections[0].get_segments()) == len(trials) == 240
    colours = np.asarray(collections[0].get_array())
    assert np.all(np.diff(colours) >= 0) and colours[-1] == trials["accuracy"].max()
    labels = [t.get_text() for t in ax.texts]
    assert len(seed_axes) == 2  # init and order seed, 40 values each: their ends only
    assert labels.count("0") == labels.count("39") == 2 and "20" not in labels
    assert len(labels) == 3 + 2 + 2 * 2  # 3 learning rates, 2 batch sizes, 2 per seed axis
