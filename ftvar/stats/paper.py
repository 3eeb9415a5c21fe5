"""The comparison with the paper's headline results (arXiv 2501.00241), on the paper's own terms.

The paper fits polynomial regressions with one run per configuration and reports five p-values: main effects
of learning rate and batch size and the epochs × batch size interaction, in the settings' raw units. Its
exact model is not published; its abstract names those terms. Whether a lower-order term is significant
depends on the coding and the centring once an interaction is in the model, so the report's own fit (log
coded, centred, with squares) tests other hypotheses. The comparison therefore fits the terms the abstract
names, `metric ~ lr + bs + ep + bs:ep` in the settings' own units, not centred (absolute, and relative to the
baseline), with this study's seeds as blocks, and compares each of the five rows with its term there:

- where the paper states a direction (the learning rate lowers the relative eval loss): *consistent*
  (Holm-significant here, same direction), *contradicts* (opposite direction), or *inconclusive*;
- where it does not: *both significant* (Holm-significant here and p < 0.05 in the paper; no direction is
  compared), or *inconclusive*.

*Inconclusive* means not significant here (then the smallest slope this study detects with 80% power is
given) or significant here but not in the paper (a non-significant result says nothing about an effect's
absence). Two non-significant results are never counted as agreement. Holm's adjustment is over the four
terms of each fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from ftvar.stats.results import ALPHA, METRIC_LABELS, Fit
from ftvar.study.config import Study

PAPER_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"
PAPER_TASKS = ("glue/sst2", "sst2", "stanfordnlp/sst2", "nyu-mll/glue/sst2")
POWER = 0.8
# (effect, term, metric, fit, paper p, paper direction: sign of the slope or 0 when not stated)
PAPER_TERMS = [("lr",), ("bs",), ("ep",), ("bs", "ep")]  # the terms the abstract names, in raw units
PAPER = (
    ("learning rate", "lr", "eval_loss", "relative", 0.027, -1),
    ("batch size", "bs", "accuracy", "absolute", 0.028, 0),
    ("batch size", "bs", "f1", "absolute", 0.005, 0),
    ("batch size", "bs", "eval_loss", "absolute", 0.170, 0),
    ("epochs × batch size", "bs:ep", "f1", "absolute", 0.001, 0),
)
VERDICTS = ("consistent", "contradicts", "both significant", "inconclusive")
MODEL = (
    "the paper's model is not published beyond its abstract: these rows fit the terms it names, metric ~ "
    "lr + bs + ep + bs:ep in the settings' own units (not centred), with this study's seeds as blocks"
)


@dataclass
class PaperComparison:
    shown: bool
    reason: str  # why it is shown or left out
    rows: list[dict[str, Any]]


def comparable(study: Study) -> tuple[bool, str]:
    """Whether the study can be set beside the paper: its model and task, or analysis.compare_paper."""
    flag = study.analysis.compare_paper
    if flag is True:
        return True, "analysis.compare_paper = true"
    if flag is False:
        return False, "left out: analysis.compare_paper = false"
    axes = {a.name for a in study.axes}
    model = study.model.name_or_path
    same_model = (
        study.model.tiny is None
        and "model.name_or_path" not in axes
        and (model == PAPER_MODEL or Path(model).name == PAPER_MODEL)
    )
    d = study.data
    task = (d.hub or "").lower() if d.source == "hub" else (d.train or "").lower()
    same_task = d.source != "synthetic" and (
        task in PAPER_TASKS or "sst2" in task.replace("-", "") or "sst-2" in task
    )
    if same_model and same_task:
        return True, f"the paper's model ({PAPER_MODEL}) on SST-2"
    what = []
    if not same_model:
        what.append("another model" if study.model.tiny is None else "a tiny random-init model")
    if not same_task:
        what.append("another task" if d.source != "synthetic" else "synthetic data")
    return False, (
        f"left out: this study uses {' and '.join(what)}, not the paper's {PAPER_MODEL} on SST-2 "
        "(set analysis.compare_paper = true to compare anyway)"
    )


def verdict(significant: bool, direction: int, paper_p: float, paper_direction: int) -> tuple[str, str]:
    """(verdict, why) for one effect; a direction is compared only where the paper states one."""
    if not significant:
        return "inconclusive", "not significant here"
    if paper_p >= ALPHA:
        return "inconclusive", (
            f"significant here but not in the paper (p = {paper_p:g}): a non-significant result does not say "
            "the effect is absent, so there is nothing to agree or disagree with"
        )
    if paper_direction == 0:
        return "both significant", "significant in both; the paper states no direction, so none is compared"
    if direction == paper_direction:
        return "consistent", "significant in both, same direction"
    return "contradicts", "significant in both, opposite directions"


def detectable(se: float, df: float, m: int) -> float:
    """The smallest |slope| a two-sided test at the Bonferroni level 0.05/m (Holm's strictest step) detects
    with 80% power, given the slope's standard error."""
    level = ALPHA / max(m, 1)
    if df == float("inf") or df > 1e6:
        return float((stats.norm.ppf(1 - level / 2) + stats.norm.ppf(POWER)) * se)
    return float((stats.t.ppf(1 - level / 2, df) + stats.t.ppf(POWER, df)) * se)


def compare(study: Study, fits: list[Fit], relative_is_affine: bool) -> PaperComparison:
    """The five rows from the fits of the paper's terms (`fits`: absolute and relative per metric). When the
    comparison is not shown its fits are not made (each costs a fit): the rows say so, with no verdict."""
    shown, reason = comparable(study)
    rows = []
    for effect, term, metric, kind, paper_p, paper_dir in PAPER:
        fit = next((f for f in fits if f.metric == metric and f.kind == kind and f.subset == "all"), None)
        note = None
        if kind == "relative" and (fit is None or not fit.ok):
            fit = next(
                (f for f in fits if f.metric == metric and f.kind == "absolute" and f.subset == "all"), None
            )
            note = (
                "relative = the absolute fit scaled by one constant here (one shared baseline): same "
                "direction and p; the absolute fit is used"
                if relative_is_affine
                else "no relative fit; the absolute fit is used"
            )
        row: dict[str, Any] = {
            "effect": effect,
            "term": term,
            "metric": metric,
            "fit": fit.kind if fit else kind,
            "coding": "raw settings, not centred",
            "paper_p": paper_p,
            "paper_direction": paper_dir or None,
            "coef": None,
            "ci_low": None,
            "ci_high": None,
            "p": None,
            "p_holm": None,
            "direction": None,
            "verdict": None,
            "detectable": None,
            "note": note,
        }
        t = fit.term(term) if fit is not None and fit.ok else None
        if not shown:
            row["note"] = "not fitted: the comparison is left out"
        elif t is None or t.coef is None:
            row["note"] = (
                (fit.message if fit is not None and not fit.ok else None)
                or f"this study has no {term} term ({' or '.join(term.split(':'))} is not a varying numeric "
                "axis, or the term is not identifiable)"
            )
            row["verdict"] = "inconclusive"
        else:
            assert fit is not None
            direction = (t.coef > 0) - (t.coef < 0)
            v, why = verdict(t.significant, direction, paper_p, paper_dir)
            row.update(
                coef=t.coef,
                ci_low=t.ci_low,
                ci_high=t.ci_high,
                p=t.p,
                p_holm=t.p_holm,
                direction=direction,
                verdict=v,
            )
            if v == "inconclusive" and not t.significant and t.se is not None:
                row["detectable"] = detectable(
                    t.se,
                    fit.df_resid if fit.seed_model != "mixed" and fit.df_resid else float("inf"),
                    len(fit.tests),
                )
                why += (
                    f"; with 80% power this study detects slopes of |{row['detectable']:.2g}| or more "
                    f"({METRIC_LABELS[metric]} per unit of the setting)"
                )
            row["note"] = "; ".join(x for x in (why, note) if x)
        rows.append(row)
    return PaperComparison(shown, reason, rows)
