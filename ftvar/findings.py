"""Plain-language findings and the comparison with the paper's headline results, from the fits."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ftvar.fits import ALPHA, FIT_METRICS, LABELS, METRIC_LABELS, Fit, Term, jsonable

PAPER = (
    ("learning rate", "lr", "eval_loss", "relative", 0.027, -1),
    ("batch size", "bs", "accuracy", "absolute", 0.028, 0),
    ("batch size", "bs", "f1", "absolute", 0.005, 0),
    ("batch size", "bs", "eval_loss", "absolute", 0.170, 0),
    ("epochs × batch size", "bs:ep", "f1", "absolute", 0.001, 0),
)


def _finding(fit: Fit, t: Term) -> str:
    metric = METRIC_LABELS[fit.metric]
    parts = Counter(f.split("(")[-1].split(" ")[0] for f in t.term.split(":"))
    where = f"p = {t.p:.2g} ({fit.kind} fit)"
    if len(parts) == 1 and ":" not in t.term:
        (v,) = parts
        if "**" not in t.term:
            return f"{LABELS[v]}: higher → {'higher' if t.coef > 0 else 'lower'} {metric}, {where}"
        if "** 2" not in t.term:
            return f"{t.term}: coefficient {t.coef:+.3g} on {metric}, {where}"
        shape = "∩-shaped: highest" if t.coef < 0 else "∪-shaped: lowest"
        return f"{LABELS[v]} (curvature): {metric} is {shape} at intermediate {LABELS[v]}, {where}"
    names = " × ".join(LABELS[v] for v in parts)
    if len(parts) == 2 and "**" not in t.term:
        a, b = parts
        return (
            f"{names}: {'positive' if t.coef > 0 else 'negative'} interaction: the slope of {metric} in "
            f"{LABELS[a]} {'rises' if t.coef > 0 else 'falls'} as {LABELS[b]} grows, {where}"
        )
    return f"{t.term}: coefficient {t.coef:+.3g} on {metric}, {where}"


def findings(fits: list[Fit]) -> list[dict[str, Any]]:
    """One plain-language line per significant term of the absolute and paired fits (relative = absolute)."""
    out = []
    for fit in fits:
        if not fit.ok or fit.kind == "relative":
            continue
        for t in fit.terms:
            if t.term != "Intercept" and t.significant:
                out.append(
                    {
                        "metric": fit.metric,
                        "fit": fit.kind,
                        "term": t.term,
                        "coef": t.coef,
                        "p": t.p,
                        "text": _finding(fit, t),
                    }
                )
    order = {m: i for i, m in enumerate(FIT_METRICS)}
    return sorted(out, key=lambda f: (order[f["metric"]], f["fit"], f["p"]))


def paper_comparison(fits: list[Fit]) -> list[dict[str, Any]]:
    """The paper's headline results next to this study's: direction and significance at 0.05."""
    rows = []
    for effect, term, metric, kind, paper_p, paper_dir in PAPER:
        fit = next(f for f in fits if f.metric == metric and f.kind == kind)
        note = None
        if not fit.ok and kind == "relative":
            fit = next(f for f in fits if f.metric == metric and f.kind == "absolute")
            note = "relative fit unavailable; absolute fit used (a shared baseline leaves slopes unchanged)"
        t = fit.term(term) if fit.ok else None
        row: dict[str, Any] = {
            "effect": effect,
            "term": term,
            "metric": metric,
            "fit": fit.kind,
            "paper_p": paper_p,
            "paper_direction": paper_dir or None,
            "coef": None,
            "p": None,
            "direction": None,
            "agrees": None,
            "note": note,
        }
        if t is None:
            row["note"] = fit.message if not fit.ok else f"term {term} is not in this study's formula"
        else:
            ours_sig, paper_sig = t.significant, paper_p < ALPHA
            same_dir = paper_dir == 0 or np.sign(t.coef) == paper_dir
            row.update(
                coef=t.coef,
                p=t.p,
                direction=int(np.sign(t.coef)),
                agrees=bool(ours_sig == paper_sig and (not paper_sig or same_dir)),
            )
        rows.append(jsonable(row))
    return rows
