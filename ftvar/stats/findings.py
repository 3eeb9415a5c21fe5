"""Plain-language findings from the seed-blocked fits: the few terms that matter, by Holm-adjusted p-value.

A finding is a hyperparameter term whose Holm-adjusted p is below 0.05 in the fit of all ok trials, Holm's
adjustment running over the findings family — every term of every metric's fit of all trials together
(`TermTest.p_family`), so that three metrics do not triple the chance of a false finding — at most
`PER_METRIC` per metric, strongest first. Curvature is described as a peak (or a trough) only when the
quadratic's vertex lies inside the range the study ran; otherwise the finding says that it does not.
"""

from __future__ import annotations

from typing import Any

from ftvar.stats.optimum import vertex
from ftvar.stats.results import ALPHA, FIT_METRICS, METRIC_LABELS, Fit, TermTest
from ftvar.stats.terms import ModelData, Predictor

PER_METRIC = 4
UNIT = {"log10": "per 10× {label}", "log2": "per doubling of {label}", "raw": "per unit of {label}"}


def _show(value: float) -> str:
    return f"{value:.3g}"


def _p(t: TermTest) -> str:
    return f"Holm p = {_family_p(t):.2g}"


def _family_p(t: TermTest) -> float:
    """The test's Holm p over the findings family (over its own fit where no family was formed)."""
    return t.p_family if t.p_family is not None else t.p_holm


def _finding(t: TermTest) -> bool:
    return bool(_family_p(t) < ALPHA)


def describe(fit: Fit, t: TermTest, md: ModelData) -> str:
    """One sentence for one term of one fit."""
    metric = METRIC_LABELS[fit.metric]
    preds: dict[str, Predictor] = {p.name: p for p in md.predictors}
    parts = [preds[n] for n in dict.fromkeys(md.terms[[x.name for x in md.terms].index(t.term)].parts)]
    spec = next(x for x in md.terms if x.name == t.term)
    if len(parts) == 1 and parts[0].kind == "categorical":
        p = parts[0]
        levels = {str(p.values[0]): 0.0}
        for c in fit.coefs:
            if c.term == t.term and ":" not in c.name:
                levels[c.name.split("[T.", 1)[1].rstrip("]")] = c.coef
        good = max if fit.metric != "eval_loss" else min
        top = good(levels, key=lambda k: levels[k])
        ref = str(p.values[0])
        diff = "" if top == ref else f" ({levels[top]:+.2g} against {ref})"
        return f"{p.label} matters for {metric} ({_p(t)}, F-test over its levels): best level {top}{diff}"
    if len(spec.parts) == 1 and t.coef is not None:
        p = parts[0]
        unit = UNIT.get(p.transform, "per unit of {label}").format(label=p.label)
        way = "higher" if t.coef > 0 else "lower"
        return (
            f"{p.label}: higher → {way} {metric} (slope {t.coef:+.2g} {unit} at the centre of the design, "
            f"{_p(t)})"
        )
    if len(spec.parts) == 2 and len(parts) == 1 and t.coef is not None:
        p = parts[0]
        coefs = {c.name: c.coef for c in fit.coefs}
        v = vertex(md, coefs, p)
        shape = "peaks" if t.coef < 0 else "is lowest"
        if v is not None and v[1]:
            return (
                f"{metric} {shape} at {p.label} ≈ {_show(v[0])}, inside the range the study ran "
                f"({_show(min(p.values))}–{_show(max(p.values))}; curvature {_p(t)})"
            )
        where = f" (≈ {_show(v[0])})" if v is not None else ""
        return (
            f"{metric} curves along {p.label} ({_p(t)}), but the vertex{where} lies outside the range the "
            "study "
            f"ran ({_show(min(p.values))}–{_show(max(p.values))}): no optimum inside it is claimed"
        )
    if (
        len(spec.parts) == 2
        and len(parts) == 2
        and t.coef is not None
        and all(x.kind == "numeric" for x in parts)
    ):
        a, b = parts
        way = "rises" if t.coef > 0 else "falls"
        return f"{a.label} × {b.label}: the slope of {metric} in {a.label} {way} as {b.label} grows ({_p(t)})"
    coef = f"coefficient {t.coef:+.2g}, " if t.coef is not None else ""
    return f"{t.label} ({t.term}): {coef}{_p(t)} on {metric}"


def findings(
    fits: list[Fit], models: dict[str, ModelData], metrics: tuple[str, ...] = FIT_METRICS
) -> list[dict[str, Any]]:
    """The significant terms (Holm) of the absolute fits of all trials: at most PER_METRIC for the first
    metric (the study's primary metric), then for the others only the terms the first did not already show,
    with one line when they show the same."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    same: list[str] = []
    for metric in metrics:
        fit = next(
            (f for f in fits if f.metric == metric and f.kind == "absolute" and f.subset == "all"), None
        )
        md = models.get(metric)
        if fit is None or not fit.ok or md is None:
            continue
        terms = sorted((t for t in fit.tests if _finding(t)), key=_family_p)
        if out or seen:
            new = [t for t in terms if t.term not in seen]
            if not new and terms:
                same.append(METRIC_LABELS[metric])
            terms = new
        seen.update(t.term for t in terms)
        for t in terms[:PER_METRIC]:
            out.append(
                {
                    "metric": metric,
                    "term": t.term,
                    "coef": t.coef,
                    "p": t.p,
                    "p_holm": _family_p(t),
                    "p_bh": t.p_bh,
                    "text": describe(fit, t, md),
                }
            )
        if len(terms) > PER_METRIC:
            out.append(
                {
                    "metric": metric,
                    "term": None,
                    "coef": None,
                    "p": None,
                    "p_holm": None,
                    "p_bh": None,
                    "text": f"… and {len(terms) - PER_METRIC} more significant term(s) for "
                    f"{METRIC_LABELS[metric]}: see its fit",
                }
            )
    if same:
        text = f"{' and '.join(same)}: the same terms are significant as above (directions in their fits)"
        out.append(
            {
                "metric": None,
                "term": None,
                "coef": None,
                "p": None,
                "p_holm": None,
                "p_bh": None,
                "text": text,
            }
        )
    return out
