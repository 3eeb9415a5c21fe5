"""The paper comparison: every verdict, when it is shown, what it compares (the paper's terms in raw units)
and the detectable effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from records_factory import make_study, simulate
from scipy import stats

from ftvar.stats.analysis import analyze
from ftvar.stats.paper import MODEL, PAPER, PAPER_MODEL, VERDICTS, comparable, compare, detectable, verdict
from ftvar.stats.results import Fit, TermTest
from ftvar.study.config import DataConfig, ModelConfig, TinyModel


@pytest.mark.parametrize(
    ("significant", "direction", "paper_p", "paper_direction", "expected"),
    [
        (True, -1, 0.027, -1, "consistent"),  # both significant, same direction
        (True, 1, 0.028, 0, "both significant"),  # the paper states no direction: none compared
        (True, 1, 0.027, -1, "contradicts"),  # both significant, opposite directions
        (True, -1, 0.17, 0, "inconclusive"),  # significant here only: a null in the paper is not evidence
        (False, -1, 0.027, -1, "inconclusive"),  # not significant here
        (False, 1, 0.17, 0, "inconclusive"),  # two non-significant results never agree
    ],
)
def test_every_verdict(
    significant: bool, direction: int, paper_p: float, paper_direction: int, expected: str
) -> None:
    got, why = verdict(significant, direction, paper_p, paper_direction)
    assert got == expected and why


def test_detectable_effect_is_the_80_percent_power_slope_at_the_bonferroni_level() -> None:
    se, df, m = 0.01, 40.0, 9
    expected = (stats.t.ppf(1 - 0.05 / m / 2, df) + stats.t.ppf(0.8, df)) * se
    assert detectable(se, df, m) == pytest.approx(expected)
    # simulated: a slope of that size is detected (two-sided t at 0.05/m) about 80% of the time
    rng = np.random.default_rng(0)
    t = rng.standard_t(df, 20_000) + expected / se
    crit = stats.t.ppf(1 - 0.05 / m / 2, df)
    assert np.mean(np.abs(t) > crit) == pytest.approx(0.8, abs=0.02)
    assert detectable(se, float("inf"), 1) == pytest.approx(
        (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * se
    )


def test_shown_only_for_the_papers_model_and_task_or_when_asked() -> None:
    paper = make_study()
    assert paper.model.name_or_path == PAPER_MODEL and comparable(paper)[0]
    minilm = make_study()
    minilm = type(minilm)(name="m", model=ModelConfig(name_or_path="/models/minilm"), grid=minilm.grid)
    shown, why = comparable(minilm)
    assert not shown and "another model" in why and "compare_paper = true" in why
    tiny = type(minilm)(
        name="t",
        model=ModelConfig(tiny=TinyModel(), tokenizer="train"),
        data=DataConfig(synthetic=None, hub=None, train="x.tsv", eval="y.tsv"),
        grid=minilm.grid,
    )
    assert not comparable(tiny)[0] and "tiny" in comparable(tiny)[1]
    forced = make_study(compare_paper=True)
    forced = type(forced)(
        name="f", model=ModelConfig(name_or_path="/m"), grid=forced.grid, analysis=forced.analysis
    )
    assert comparable(forced) == (True, "analysis.compare_paper = true")
    off = make_study(compare_paper=False)
    assert comparable(off)[0] is False and "compare_paper = false" in comparable(off)[1]
    agnews = type(paper)(name="a", data=DataConfig(hub="ag_news"), grid=paper.grid)
    assert not comparable(agnews)[0] and "another task" in comparable(agnews)[1]


def _fit(metric: str, term: str, coef: float, p_holm: float, kind: str = "absolute") -> Fit:
    f = Fit(metric, kind, "all", metric, "", "blocks", 100, 10, df_resid=80.0)
    f.tests = [
        TermTest(
            term,
            term,
            1,
            coef / 0.01,
            p_holm,
            p_holm,
            p_holm,
            coef=coef,
            se=0.01,
            ci_low=coef - 0.02,
            ci_high=coef + 0.02,
        )
    ]
    f.tests += [TermTest(f"x{i}", "x", 1, 0.0, 1.0, 1.0, 1.0, coef=0.0, se=0.01) for i in range(8)]
    return f


def test_rows_name_terms_codings_and_never_agree_on_two_nulls() -> None:
    study = make_study()
    fits = [
        _fit("eval_loss", "lr", -0.05, 1e-4),  # relative fit missing: the absolute one is used, and said so
        _fit("accuracy", "bs", 0.002, 0.4),
        _fit("f1", "bs", 0.03, 0.001),
    ]
    # one fit per metric: eval loss also has bs, F1 also has bs:ep
    fits[0].tests.append(TermTest("bs", "bs", 1, 0.1, 0.9, 0.9, 0.9, coef=0.001, se=0.01))
    fits[2].tests.append(_fit("f1", "bs:ep", -0.02, 0.01).tests[0])
    out = compare(study, fits, True)
    rows = {(r["effect"], r["metric"]): r for r in out.rows}
    lr = rows[("learning rate", "eval_loss")]
    assert (
        lr["verdict"] == "consistent" and lr["fit"] == "absolute" and "scaled by one constant" in lr["note"]
    )
    assert lr["coding"] == "raw settings, not centred"
    acc = rows[("batch size", "accuracy")]
    assert acc["verdict"] == "inconclusive" and acc["detectable"] is not None and "80% power" in acc["note"]
    assert rows[("batch size", "f1")]["verdict"] == "both significant"  # the paper gives no direction
    loss = rows[("batch size", "eval_loss")]
    assert loss["verdict"] == "inconclusive"  # not significant here, not in the paper: never "agrees"
    inter = rows[("epochs × batch size", "f1")]
    assert inter["verdict"] == "both significant"
    assert len(out.rows) == len(PAPER) and all(r["verdict"] in VERDICTS for r in out.rows)


def test_a_study_without_a_paper_axis_says_the_term_is_missing() -> None:
    study = make_study(ep=[2], bootstrap=0)
    table = simulate(
        study, lambda r: 0.8 + 0.01 * np.log2(r["batch_size"].to_numpy(dtype=float)), noise=0.005
    )
    result = analyze(study, table)
    row = next(r for r in result.paper.rows if r["effect"] == "epochs × batch size")
    assert row["verdict"] == "inconclusive" and "no bs:ep term" in row["note"]
    bs = next(r for r in result.paper.rows if r["effect"] == "batch size" and r["metric"] == "accuracy")
    assert bs["verdict"] == "both significant" and bs["direction"] == 1
    assert isinstance(pd.DataFrame(result.paper.rows), pd.DataFrame)


def test_the_comparison_fits_the_papers_terms_in_raw_units_not_the_reports_model() -> None:
    """With an epochs × batch size interaction, the batch-size main effect of the raw, uncentred model is the
    slope at 0 epochs — another number (and possibly another verdict) than the report's centred log-coded
    slope. The comparison's fits are `metric ~ lr + bs + ep + bs:ep` in the settings' own units."""
    study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2, 3], seeds=[0, 1], bootstrap=0)

    def mean(rows: pd.DataFrame) -> np.ndarray:
        bs, ep = rows["batch_size"].to_numpy(dtype=float), rows["epochs"].to_numpy(dtype=float)
        return np.asarray(0.8 - 0.002 * bs * (ep - 2) + 0.001 * ep)

    result = analyze(study, simulate(study, mean, noise=0.002, rng=np.random.default_rng(0)))
    paper_fit = next(f for f in result.paper_fits if f.metric == "accuracy" and f.kind == "absolute")
    assert paper_fit.formula == "accuracy ~ lr + bs + ep + bs:ep + C(seed)"
    raw = paper_fit.coef("bs")
    assert raw is not None and raw.ci_low <= 0.004 <= raw.ci_high  # −0.002 × (0 − 2): the slope at ep = 0
    centred = result.fit("accuracy")
    assert centred is not None and centred.coef("bs") is not None
    assert abs(centred.coef("bs").coef) < 0.01 * 0.5  # type: ignore[union-attr]  # ≈ 0 at the centre (ep = 2)
    assert "not published" in MODEL
