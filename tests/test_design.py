"""Any setting as an axis, and designs beyond the full grid: sobol, lhs, central composite."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ftvar.errors import StudyError
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests.helpers import ftvar

BASE = """
name = "d"
[model]
tokenizer = "train"
tiny = { dim = 16, layers = 1, heads = 2 }
[data]
synthetic = { train = 100, eval = 50 }
"""


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.toml"
    path.write_text(BASE + textwrap.dedent(text))
    return path


def test_dotted_axes_in_quoted_or_nested_form(tmp_path: Path) -> None:
    quoted = load_study(
        str(
            study_file(
                tmp_path, '[grid]\nseed = [0]\n"train.warmup_ratio" = [0.0, 0.1]\n"data.max_length" = 32\n'
            )
        )
    )
    nested = load_study(
        str(
            study_file(
                tmp_path, "[grid]\nseed = [0]\ntrain = { warmup_ratio = [0.0, 0.1] }\ndata.max_length = 32\n"
            )
        )
    )
    assert quoted.grid == nested.grid
    names = [a.name for a in quoted.axes]
    assert names == [
        "learning_rate",
        "batch_size",
        "epochs",
        "train.warmup_ratio",
        "data.max_length",
        "init_seed",
        "order_seed",
    ]
    warmup = next(a for a in quoted.axes if a.name == "train.warmup_ratio")
    assert (warmup.kind, warmup.coding, warmup.values, warmup.label) == (
        "numeric",
        "raw",
        (0.0, 0.1),
        "warmup ratio",
    )
    sched = load_study(str(study_file(tmp_path, '[grid]\n"train.scheduler" = ["linear", "cosine"]\n')))
    axis = next(a for a in sched.axes if a.name == "train.scheduler")
    assert (axis.kind, axis.coding) == ("categorical", "categorical")


def test_sobol_gives_n_distinct_reproducible_points(tmp_path: Path) -> None:
    text = """
    [design]
    kind = "sobol"
    n = 16
    seed = 7
    [grid]
    learning_rate = { min = 1e-5, max = 1e-3, scale = "log" }
    batch_size = { min = 8, max = 64, scale = "log", round = "pow2" }
    "train.warmup_ratio" = { min = 0.0, max = 0.2, round = 0.01 }
    epochs = [1, 2]
    seed = [0, 1]
    """
    study = load_study(str(study_file(tmp_path, text)))
    points = [p.as_dict() for p in study.points]
    assert len(points) == 16 and len({tuple(p.items()) for p in points}) == 16
    assert all(1e-5 <= p["learning_rate"] <= 1e-3 for p in points)
    assert {p["batch_size"] for p in points} <= {8, 16, 32, 64}
    assert all(
        abs(p["train.warmup_ratio"] * 100 - round(p["train.warmup_ratio"] * 100)) < 1e-9 for p in points
    )
    assert {p["epochs"] for p in points} == {1, 2}
    trials = [t for t in expand(study) if not t.is_baseline]
    assert len(trials) == 32 and len({t.trial_id for t in trials}) == 32  # seeds cross every point
    again = load_study(str(study_file(tmp_path, text)))
    assert [t.trial_id for t in expand(again)] == [t.trial_id for t in expand(study)]  # reproducible
    other = load_study(str(study_file(tmp_path, text.replace("seed = 7", "seed = 8"))))
    assert [p.as_dict() for p in other.points] != points


def test_lhs_stratifies_each_axis(tmp_path: Path) -> None:
    text = """
    [design]
    kind = "lhs"
    n = 10
    [grid]
    learning_rate = { min = 1e-5, max = 1e-3, scale = "log" }
    "train.weight_decay" = { min = 0.0, max = 0.1 }
    batch_size = 16
    epochs = 1
    seed = 0
    """
    study = load_study(str(study_file(tmp_path, text)))
    decay = sorted(p.as_dict()["train.weight_decay"] for p in study.points)
    assert len(decay) == 10
    # one value in each tenth of the range
    assert [int(d / 0.01) for d in decay] == list(range(10))


def test_ccd_has_the_textbook_point_count(tmp_path: Path) -> None:
    text = """
    [design]
    kind = "ccd"
    center = 3
    [grid]
    learning_rate = { min = 1e-5, max = 1e-4, scale = "log" }
    "train.warmup_ratio" = { min = 0.0, max = 0.2 }
    epochs = { min = 1, max = 3 }
    batch_size = 16
    seed = [0, 1]
    """
    study = load_study(str(study_file(tmp_path, text)))
    assert len(study.points) == 2**3 + 2 * 3 + 3
    coded = {p.as_dict()["epochs"] for p in study.points}
    assert coded == {1, 2, 3}  # face-centred: corners and axial points on the range's ends
    trials = [t for t in expand(study) if not t.is_baseline]
    assert len(trials) == (2**3 + 2 * 3 + 3) * 2
    centre = [t for t in trials if t.epochs == 2 and t.learning_rate == pytest.approx(10**-4.5, rel=1e-5)]
    centre = [t for t in centre if dict(t.extra)["train.warmup_ratio"] == pytest.approx(0.1)]
    assert len(centre) == 3 * 2 and len({(t.init_seed, t.order_seed) for t in centre}) == 6  # own seeds
    rotatable_text = """
    [design]
    kind = "ccd"
    alpha = "rotatable"
    [grid]
    learning_rate = { min = 1e-5, max = 1e-4, scale = "log" }
    "train.warmup_ratio" = { min = 0.1, max = 0.2 }
    batch_size = 16
    epochs = 1
    seed = 0
    """
    rotatable = load_study(str(study_file(tmp_path, rotatable_text)))
    warm = sorted({p.as_dict()["train.warmup_ratio"] for p in rotatable.points})
    assert len(rotatable.points) == 4 + 4 + 1
    assert len(warm) == 5 and warm[0] == pytest.approx(0.15 - 0.05 * 2**0.5, abs=1e-6)  # axial at ±(2²)^¼


def test_rotatable_axial_points_outside_a_setting_are_an_error(tmp_path: Path) -> None:
    text = """
    [design]
    kind = "ccd"
    alpha = "rotatable"
    [grid]
    "train.warmup_ratio" = { min = 0.0, max = 0.2 }
    epochs = { min = 1, max = 3 }
    batch_size = 16
    seed = 0
    """
    with pytest.raises(
        StudyError, match=r"grid.train.warmup_ratio = -0.04\d*: train.warmup_ratio must be in"
    ):
        load_study(str(study_file(tmp_path, text)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[grid]\n"train.nope" = [1]\n',
            r"unknown key grid.train.nope; valid keys in \[grid\]: learning_rate",
        ),
        ('[grid]\n"data.train" = ["a.tsv"]\n', r"unknown key grid.data.train; valid keys"),
        ('[grid]\n"model.tiny" = [1]\n', r"unknown key grid.model.tiny"),
        (
            '[train]\nwarmup_ratio = 0.1\n[grid]\n"train.warmup_ratio" = [0.0, 0.1]\n',
            r"both an axis .* and a fixed",
        ),
        ('[grid]\n"train.scheduler" = ["linear", 3]\n', r"mixed types"),
        (
            '[grid]\n"train.scheduler" = ["linear", "sigmoid"]\n',
            r"'sigmoid' is not valid; choose one of: linear",
        ),
        ('[grid]\n"train.warmup_ratio" = [0.0, { min = 0.0, max = 0.1 }]\n', r"mixes a range and a list"),
        (
            '[grid]\n"train.warmup_ratio" = [0.0]\ntrain = { warmup_ratio = { min = 0.0, max = 0.1 } }\n',
            r"given twice",
        ),
        ("[grid]\nlearning_rate = { min = 1e-5, max = 1e-4 }\n", r"full grid cannot run: give a list"),
        (
            '[design]\nkind = "sobol"\nn = 8\n[grid]\n'
            'learning_rate = { min = 0.0, max = 1e-4, scale = "log" }\n',
            r"a log scale needs bounds > 0",
        ),
        (
            '[design]\nkind = "sobol"\nn = 8\n[grid]\nlearning_rate = { min = 1e-4, max = 1e-4 }\n',
            r"min .* ≥ max",
        ),
        (
            '[design]\nkind = "sobol"\nn = 5\n[grid]\nlearning_rate = { min = 1e-5, max = 1e-4 }\n'
            '"train.warmup_ratio" = { min = 0.0, max = 0.2 }\nepochs = { min = 1, max = 3 }\n'
            "batch_size = 16\n",
            r"design.n = 5 is fewer than the 10 parameters .* use n ≥ 10",
        ),
        ('[design]\nkind = "sobol"\n[grid]\nlearning_rate = { min = 1e-5, max = 1e-4 }\n', r"needs design.n"),
        (
            '[design]\nkind = "ccd"\n[grid]\nlearning_rate = { min = 1e-5, max = 1e-4 }\nepochs = [2]\n',
            r"a ccd design needs at least 2 numeric axes given as ranges",
        ),
        ('[design]\nkind = "taguchi"\n', r"design.kind = 'taguchi' is not valid; choose one of: grid, sobol"),
        ("[grid]\nseed = [0]\ninit_seed = [1]\n", r"give either seed, or init_seed and order_seed"),
        ("[grid]\ninit_seed = [0, 0]\n", r"grid.init_seed has repeated values"),
        (
            '[analysis]\ncoding = { "train.warmup_ratio" = "raw" }\n',
            r"not an axis of this study; axes: learning",
        ),
        ("[analysis]\ncoding = { epochs = 'ln' }\n", r"analysis.coding.epochs = 'ln' is not valid"),
        (
            '[analysis]\nexpected_max_by = "train.scheduler"\n',
            r"expected_max_by = 'train.scheduler' is not an axis",
        ),
        ("[analysis]\nreference = { epochs = 1 }\n", r"analysis.reference is gone: .* delete the key"),
        (
            '[grid]\n"model.name_or_path" = ["./a", "./b"]\n',
            r"model.tiny .* a model axis needs model folders",
        ),
        (
            '[design]\nkind = "random"\nn = 10\n[grid]\nlearning_rate = [1e-5]\nbatch_size = [16]\n'
            "epochs = [1]\n",
            r"a random design draws every point from the axes' priors, and no axis has one",
        ),
        (
            '[design]\nkind = "random"\n[grid]\nlearning_rate = { min = 1e-5, max = 1e-4, scale = "log" }\n',
            r"design.kind = 'random' needs design.n",
        ),
        ("test_fraction = 0.0\n", r"data.test_fraction = 0: give a share of the eval rows strictly between"),
        ("test_fraction = 1.0\n", r"data.test_fraction = 1: give a share"),
        ('test = "t.tsv"\n', r"data.test is a file .* use data.test_fraction with synthetic data"),
        ('test_split = "test"\n', r"data.test_split names a Hub split"),
        (
            'test_fraction = 0.5\ntest_split = "test"\n',
            r"data.test_split and data.test_fraction are both set",
        ),
        (
            "[analysis]\nnear_degenerate = 0.3\n",
            r"analysis.near_degenerate = 0.3: .* above 0.5 and at most 1",
        ),
    ],
)
def test_bad_axes_and_designs_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = study_file(tmp_path, text)
    with pytest.raises(StudyError, match=message):
        load_study(str(path))
    out = ftvar("plan", str(path), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.startswith("ftvar: error: ")
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_plan_shows_the_design_and_its_cost_next_to_the_full_grid(tmp_path: Path) -> None:
    text = """
    [design]
    kind = "ccd"
    [grid]
    learning_rate = { min = 1e-5, max = 1e-4, scale = "log" }
    "train.warmup_ratio" = { min = 0.0, max = 0.2 }
    epochs = { min = 1, max = 3 }
    batch_size = 16
    seed = [0, 1, 2]
    """
    out = ftvar("plan", str(study_file(tmp_path, text)), "--json", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    import json

    design = json.loads(out.stdout)["design"]
    assert "8 corners + 6 axial + 1 centre" in design
    assert "15 distinct point(s) × 3 seed setting(s) = 45 trials" in design
    assert "a full 3-level grid over the same axes: 27 point(s), 81 trials" in design


def test_a_random_design_draws_independent_points_from_the_priors(tmp_path: Path) -> None:
    path = study_file(
        tmp_path,
        """
        [design]
        kind = "random"
        n = 400
        seed = 1
        [grid]
        learning_rate = { min = 1e-5, max = 1e-3, scale = "log" }
        "train.warmup_ratio" = { min = 0.0, max = 0.2 }
        batch_size = [16, 32]
        epochs = [1]
        seed = [0]
        """,
    )
    study = load_study(str(path))
    points = [p.as_dict() for p in study.points]
    assert len(points) == 400 and study.points == load_study(str(path)).points  # seeded
    lr = np.log10([p["learning_rate"] for p in points])
    warmup = np.array([p["train.warmup_ratio"] for p in points])
    bs = np.array([p["batch_size"] for p in points])
    assert stats.kstest((lr + 5) / 2, "uniform").pvalue > 0.01  # log-uniform
    assert stats.kstest(warmup / 0.2, "uniform").pvalue > 0.01  # uniform
    assert 0.4 < np.mean(bs == 16) < 0.6 and set(bs) == {16, 32}  # a uniform choice
    trials = [t for t in expand(study) if not t.is_baseline]
    assert len(trials) == 400 and len({t.trial_id for t in trials}) == 400
    small = load_study(
        str(
            study_file(
                tmp_path,
                '[design]\nkind = "random"\nn = 400\n[grid]\nlearning_rate = [1e-5, 1e-4]\n'
                "batch_size = [16, 32]\nepochs = [1]\nseed = [0]\n",
            )
        )
    )
    repeats = [p.repeat for p in small.points]
    assert max(repeats) > 0  # a point drawn again is run again, with its own seeds: every draw a trial
    assert len({t.trial_id for t in expand(small) if not t.is_baseline}) == 400
