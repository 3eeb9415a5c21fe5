"""What the per-example predictions add: how much a configuration's score owes to the particular eval rows,
whether the top configurations really differ, how many predictions flip from seed to seed, and the chosen
configuration's score on the held-out test split.

Every trial's sidecar (ftvar.store.predictions) holds each eval row's gold and predicted label. From them:

- **Eval-sampling interval** of each configuration's score (its mean over seeds): a bootstrap over the eval
  rows, the seeds kept, so it says how much another sample of sentences of the same kind would move the score
  (a 95% half-width of about 2 points of accuracy on SST-2's 872 validation sentences at 90% accuracy; seed
  noise is the variance decomposition's business).
- **Paired comparisons** of the chosen configuration with the next ones: for accuracy, the difference of the
  two configurations' rows × seeds matrices of correct answers (paired by row, and by seed value where they
  share seeds) under the crossed random-effects model, rows and seeds both sampled — its standard error from
  the two-way ANOVA's mean squares, a t-test with Satterthwaite's degrees of freedom (with one seed, a paired
  test over rows, McNemar's large-sample twin); for other metrics a bootstrap over rows and seeds, which errs
  wide. Holm-adjusted over the comparisons. The configurations were ranked on these same rows, so the p-values
  describe, they do not confirm.
- **Prediction churn** (Summers & Dinneen 2021; D'Amour et al. 2020): per configuration, the share of eval
  rows two of its seeds predict differently (averaged over pairs of seeds), and the share whose prediction is
  not the same under every seed; the rows that flip most, with their text and how often each class was
  predicted.
- **The held-out test split, once**: the chosen configuration's mean test score over its trials, with an
  interval from a bootstrap over the test rows and the configuration's seeds. Nothing else reads the test
  split, so the number is not optimistic the way the eval score of a configuration chosen on eval is.

Scores come from each trial's confusion matrix under the row weights, so any metric that is a function of
the confusion matrix plugs in (`FROM_CONFUSION`); the bootstrap is numpy's, seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ftvar.stats.regression import holm
from ftvar.store.predictions import TrialPredictions

LEVEL = 0.95
BOOTSTRAP = 1000
COMPARED = 5  # the best configuration and the next COMPARED − 1
FLIPS_SHOWN = 10
TEXT_CHARS = 120
ROW_CELLS = 20_000_000  # resamples × rows per chunk of the row bootstrap


def _accuracy(conf: np.ndarray) -> np.ndarray:
    total = conf.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.trace(conf, axis1=-2, axis2=-1) / total)


def _f1(conf: np.ndarray) -> np.ndarray:
    """Binary F1 of class 1 for two classes, macro F1 otherwise (sklearn's f1_score as the trials compute it,
    zero_division = 0)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    fp = conf.sum(axis=-2) - tp
    fn = conf.sum(axis=-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    if conf.shape[-1] == 2:
        return np.asarray(per_class[..., 1])
    return np.asarray(per_class.mean(axis=-1))


# metric → its value from a confusion matrix (gold × predicted, any leading dimensions)
FROM_CONFUSION: dict[str, Callable[[np.ndarray], np.ndarray]] = {"accuracy": _accuracy, "f1": _f1}


@dataclass
class Rows:
    """One configuration's trials on one split: gold labels (n) and each trial's predictions (trials × n)."""

    key: dict[str, Any]  # the configuration's axis values
    labels: np.ndarray
    predicted: np.ndarray
    p_gold: np.ndarray  # probability of the gold label (trials × n)
    seeds: list[str]  # each trial's seed key ("init/order")
    trial_ids: list[str]


@dataclass
class ConfigScore:
    key: dict[str, Any]
    n_trials: int
    value: float  # the configuration's score (mean over its trials) on the eval rows
    ci_low: float | None  # eval-sampling interval: rows resampled, seeds kept
    ci_high: float | None
    churn: float | None  # share of rows two seeds predict differently, mean over pairs of seeds
    unstable: float | None  # share of rows not predicted alike by every seed


@dataclass
class Comparison:
    best: dict[str, Any]
    other: dict[str, Any]
    difference: float  # best − other
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = float("nan")
    paired_seeds: int = 0  # seed values the two share (resampled together)


@dataclass
class Flip:
    row: int
    text: str | None
    label: str
    counts: dict[str, int]  # predicted class → trials
    p_gold: float  # mean probability of the gold label over the trials


@dataclass
class HeldOut:
    """The chosen configuration on the held-out test split."""

    metric: str
    key: dict[str, Any]
    n_trials: int
    n_rows: int
    value: float
    ci_low: float | None
    ci_high: float | None
    eval_value: float | None  # the same configuration's eval score, for comparison
    per_trial: list[float] = field(default_factory=list)
    interval: str = ""  # how the interval was made


@dataclass
class PerExample:
    metric: str
    n_rows: int
    n_trials: int  # trials with predictions
    bootstrap: int
    configurations: list[ConfigScore]
    comparisons: list[Comparison]
    flips_best: list[Flip]  # the rows the best configuration's seeds disagree on most
    flips_all: list[Flip]  # the same over every trial that learned (not degenerate)
    best_key: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    held_out: HeldOut | None = None


def _seed_key(row: pd.Series) -> str:
    return f"{row.get('init_seed')}/{row.get('order_seed')}"


def groups(
    trials: pd.DataFrame, keys: list[str], found: dict[str, TrialPredictions], split: str
) -> list[Rows]:
    """Per configuration, its trials' predictions on `split` (trials without a sidecar left out)."""
    out: list[Rows] = []
    if trials.empty:
        return out
    by = keys or [pd.Series("all", index=trials.index)]
    for key, part in trials.groupby(by, sort=False, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        rows = [
            r for _, r in part.iterrows() if r["trial_id"] in found and split in found[r["trial_id"]].splits
        ]
        if not rows:
            continue
        preds = [found[r["trial_id"]].splits[split] for r in rows]
        labels = preds[0].labels
        keep = [i for i, p in enumerate(preds) if len(p) == len(labels) and np.array_equal(p.labels, labels)]
        preds, rows = [preds[i] for i in keep], [rows[i] for i in keep]
        predicted = np.vstack([p.predicted for p in preds])
        p_gold = np.vstack([p.probabilities[np.arange(len(labels)), labels] for p in preds])
        out.append(
            Rows(
                dict(zip(keys, values, strict=True)) if keys else {},
                labels,
                predicted,
                p_gold,
                [_seed_key(r) for r in rows],
                [str(r["trial_id"]) for r in rows],
            )
        )
    return out


def _weights(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap row counts (b × n): each resample draws n rows with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float32)


def _confusions(labels: np.ndarray, predicted: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices under row weights: (resamples, trials, k, k) from weights (resamples × n)."""
    codes = labels[None, :] * k + predicted  # trials × n
    out = np.empty((w.shape[0], predicted.shape[0], k * k))
    for t in range(predicted.shape[0]):
        onehot = np.zeros((len(labels), k * k), dtype=np.float32)
        onehot[np.arange(len(labels)), codes[t]] = 1.0
        out[:, t, :] = w @ onehot
    return out.reshape(w.shape[0], predicted.shape[0], k, k)


def score(rows: Rows, metric: str, k: int, w: np.ndarray | None = None) -> np.ndarray:
    """The configuration's score (mean over its trials) per resample (`w`: row weights) or as observed."""
    weights = w if w is not None else np.ones((1, len(rows.labels)), dtype=np.float32)
    conf = _confusions(rows.labels, rows.predicted, weights, k)
    return np.asarray(np.nanmean(FROM_CONFUSION[metric](conf), axis=1))


def churn(predicted: np.ndarray) -> tuple[float | None, float | None]:
    """(mean share of rows two trials predict differently over pairs of trials, share of rows not predicted
    alike by every trial); None with fewer than two trials."""
    t = predicted.shape[0]
    if t < 2:
        return None, None
    pairs = [float(np.mean(predicted[i] != predicted[j])) for i in range(t) for j in range(i + 1, t)]
    unstable = float(np.mean((predicted != predicted[:1]).any(axis=0)))
    return float(np.mean(pairs)), unstable


def flips(rows: Rows, names: list[str], texts: list[str] | None, shown: int = FLIPS_SHOWN) -> list[Flip]:
    """The rows the trials disagree on most (fewest trials behind the most predicted class; then the mean
    probability of the gold label nearest one half), at most `shown`, only rows with any disagreement."""
    k = len(names)
    counts = np.stack([(rows.predicted == c).sum(axis=0) for c in range(k)], axis=1)  # n × k
    agree = counts.max(axis=1)
    disagree = np.flatnonzero(agree < rows.predicted.shape[0])
    if not len(disagree):
        return []
    p = rows.p_gold.mean(axis=0)
    order = disagree[np.lexsort((np.abs(p[disagree] - 0.5), agree[disagree]))][:shown]
    out = []
    for i in order:
        text = texts[i] if texts is not None and i < len(texts) else None
        if text is not None and len(text) > TEXT_CHARS:
            text = text[: TEXT_CHARS - 1] + "…"
        out.append(
            Flip(
                int(i),
                text,
                names[int(rows.labels[i])],
                {names[c]: int(counts[i, c]) for c in range(k) if counts[i, c]},
                float(p[i]),
            )
        )
    return out


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None, None
    lo, hi = np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _pvalue(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of no difference: twice the smaller share of resamples on either side of
    0 (with the observed sample counted, so never 0)."""
    finite = diffs[np.isfinite(diffs)]
    n = len(finite)
    low = (np.sum(finite <= 0) + 1) / (n + 1)
    high = (np.sum(finite >= 0) + 1) / (n + 1)
    return float(min(1.0, 2 * min(low, high)))


def crossed_mean(d: np.ndarray) -> tuple[float, float, float]:
    """The mean of a seeds × rows matrix of differences and its standard error and degrees of freedom under
    the crossed random-effects model d_sr = μ + a_s + b_r + e_sr (seeds and rows both sampled): Var(mean) =
    (MS_rows + MS_seeds − MS_interaction) / (S n) from the two-way ANOVA's mean squares, with Satterthwaite's
    degrees of freedom. One seed: the rows alone (a paired t-test over rows, McNemar's large-sample twin)."""
    s, n = d.shape
    grand = float(d.mean())
    row_means, seed_means = d.mean(axis=0), d.mean(axis=1)
    ms_r = s * float(np.sum((row_means - grand) ** 2)) / max(n - 1, 1)
    if s < 2:
        return grand, float(np.sqrt(ms_r / n)), float(max(n - 1, 1))
    ms_s = n * float(np.sum((seed_means - grand) ** 2)) / (s - 1)
    inter = d - row_means[None, :] - seed_means[:, None] + grand
    ms_rs = float(np.sum(inter**2)) / ((n - 1) * (s - 1))
    parts = [(ms_r, n - 1.0), (ms_s, s - 1.0), (-ms_rs, (n - 1.0) * (s - 1))]
    total = sum(v for v, _ in parts)
    if total <= 0:  # the seeds' and rows' mean squares below the interaction's: its own, conservatively
        parts, total = [(max(ms_r, ms_s, ms_rs), min(n - 1.0, s - 1.0))], max(ms_r, ms_s, ms_rs)
    df = total**2 / sum(v * v / f for v, f in parts if f > 0)
    return grand, float(np.sqrt(total / (s * n))), float(df)


def compare(a: Rows, b: Rows, metric: str, k: int, w: np.ndarray, rng: np.random.Generator) -> Comparison:
    """The best configuration `a` against `b`. For accuracy, a mean over rows: the difference's standard
    error from the crossed seeds × rows model (crossed_mean; trials paired by their shared seed values, else
    by position), a t-test. For other metrics: a bootstrap that resamples the rows alike for both and the
    seeds (shared seed values together), which counts the rows × seeds interaction twice and so errs wide."""
    shared = [s for s in dict.fromkeys(a.seeds) if s in b.seeds]
    observed = float(score(a, metric, k)[0] - score(b, metric, k)[0])
    paired = len(shared) >= 2
    if metric == "accuracy":
        if paired:
            ia, ib = [a.seeds.index(s) for s in shared], [b.seeds.index(s) for s in shared]
        else:
            m = min(len(a.seeds), len(b.seeds))
            ia, ib = list(range(m)), list(range(m))
        right_a = (a.predicted[ia] == a.labels[None, :]).astype("float64")
        right_b = (b.predicted[ib] == b.labels[None, :]).astype("float64")
        _, se, df = crossed_mean(right_a - right_b)
        if se > 0:
            t = observed / se
            half = float(stats.t.ppf((1 + LEVEL) / 2, df)) * se
            p = float(2 * stats.t.sf(abs(t), df))
            return Comparison(
                a.key,
                b.key,
                observed,
                observed - half,
                observed + half,
                p,
                paired_seeds=len(shared) if paired else 0,
            )
    reps = w.shape[0]
    per_a = FROM_CONFUSION[metric](_confusions(a.labels, a.predicted, w, k))  # resamples × trials
    per_b = FROM_CONFUSION[metric](_confusions(b.labels, b.predicted, w, k))
    if paired:
        ia_ = np.array([a.seeds.index(s) for s in shared])
        ib_ = np.array([b.seeds.index(s) for s in shared])
        draw = rng.integers(0, len(shared), size=(reps, len(shared)))
        da = np.take_along_axis(per_a[:, ia_], draw, axis=1).mean(axis=1)
        db = np.take_along_axis(per_b[:, ib_], draw, axis=1).mean(axis=1)
    else:
        da = np.take_along_axis(per_a, rng.integers(0, per_a.shape[1], size=per_a.shape), axis=1).mean(1)
        db = np.take_along_axis(per_b, rng.integers(0, per_b.shape[1], size=per_b.shape), axis=1).mean(1)
    diffs = da - db
    lo, hi = _interval(diffs)
    return Comparison(
        a.key,
        b.key,
        observed,
        lo if lo is not None else observed,
        hi if hi is not None else observed,
        _pvalue(diffs),
        paired_seeds=len(shared) if paired else 0,
    )


def analyse(
    trials: pd.DataFrame,
    keys: list[str],
    found: dict[str, TrialPredictions],
    texts: dict[str, list[str]],
    metric: str,
    best_key: dict[str, Any] | None,
    b: int = BOOTSTRAP,
    seed: int = 0,
) -> PerExample | None:
    """The per-example part of the report from the ok trials (`keys`: the configuration columns), their
    sidecars and the rows' texts; `metric` is the report's lead metric (accuracy when it is not a function of
    the confusion matrix); `best_key` the chosen configuration (else the best observed)."""
    notes: list[str] = []
    if metric not in FROM_CONFUSION:
        notes.append(f"{metric} is not computed from predicted labels: the per-example tables use accuracy")
        metric = "accuracy"
    configs = groups(trials, keys, found, "eval")
    if not configs:
        return None
    names = next(iter(found.values())).label_names
    k = len(names)
    n = len(configs[0].labels)
    configs = [c for c in configs if len(c.labels) == n and np.array_equal(c.labels, configs[0].labels)]
    missing = len(trials) - sum(len(c.trial_ids) for c in configs)
    if missing:
        notes.append(
            f"{missing} ok trial(s) have no per-example predictions (run before they were kept, or of other "
            "eval rows) and are not in these tables"
        )
    rng = np.random.default_rng(seed)
    reps = max(1, min(b, ROW_CELLS // max(n, 1)))
    if reps < b:
        notes.append(f"{reps} row resamples instead of {b}, to keep {n} rows fast")
    w = _weights(n, reps, rng)
    scores = []
    for c in configs:
        value = float(score(c, metric, k)[0])
        lo, hi = _interval(score(c, metric, k, w)) if b > 0 else (None, None)
        pair, unstable = churn(c.predicted)
        scores.append(ConfigScore(c.key, len(c.trial_ids), value, lo, hi, pair, unstable))
    order = np.argsort([-s.value for s in scores], kind="stable")
    scores = [scores[i] for i in order]
    configs = [configs[i] for i in order]
    if best_key is not None:
        first = next((i for i, c in enumerate(configs) if _same_key(c.key, best_key)), 0)
        configs.insert(0, configs.pop(first))
    comparisons: list[Comparison] = []
    if b > 0 and len(configs) >= 2:
        comparisons = [compare(configs[0], other, metric, k, w, rng) for other in configs[1:COMPARED]]
        adjusted = holm(np.array([cmp.p for cmp in comparisons]))
        for cmp, p in zip(comparisons, adjusted, strict=True):
            cmp.p_holm = float(p)
    eval_texts = texts.get("eval")
    if eval_texts is not None and len(eval_texts) != n:
        eval_texts = None
    if eval_texts is None:
        notes.append("the eval rows' texts are not in the data cache: rows are shown by number")
    learned = trials.loc[~trials["degenerate_flag"].astype(bool)] if "degenerate_flag" in trials else trials
    everything = groups(learned, [], found, "eval")
    flips_all = flips(everything[0], names, eval_texts) if everything else []
    return PerExample(
        metric,
        n,
        sum(len(c.trial_ids) for c in configs),
        reps if b > 0 else 0,
        scores,
        comparisons,
        flips(configs[0], names, eval_texts),
        flips_all,
        configs[0].key,
        notes,
    )


def _same_key(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def same(x: Any, y: Any) -> bool:
        try:
            return bool(np.isclose(float(x), float(y), rtol=1e-9, atol=0))
        except (TypeError, ValueError):
            return str(x) == str(y)

    return all(k in b and same(v, b[k]) for k, v in a.items())


def held_out(
    trials: pd.DataFrame,
    keys: list[str],
    key: dict[str, Any],
    found: dict[str, TrialPredictions],
    metric: str,
    eval_value: float | None,
    b: int = BOOTSTRAP,
    seed: int = 0,
) -> HeldOut | None:
    """The chosen configuration (`key`) on the test split: from its trials' sidecars (interval: test rows
    and seeds resampled), else from the records' test metrics (interval: seeds only). None without a test
    score."""
    mask = np.ones(len(trials), dtype=bool)
    for name, value in key.items():
        column = trials[name]
        numeric = pd.to_numeric(column, errors="coerce")
        if isinstance(value, int | float) and not isinstance(value, bool) and numeric.notna().all():
            mask &= np.isclose(numeric.to_numpy(dtype="float64"), float(value), rtol=1e-9, atol=0)
        else:
            mask &= (column.astype(str) == str(value)).to_numpy()
    part = trials.loc[mask]
    column = f"test_{metric}"
    if part.empty:
        return None
    rows = groups(part, keys, found, "test") if metric in FROM_CONFUSION else []
    if rows:
        r = rows[0]
        k = len(next(iter(found.values())).label_names)
        rng = np.random.default_rng(seed)
        ones = np.ones((1, len(r.labels)), dtype=np.float32)
        per_trial = FROM_CONFUSION[metric](_confusions(r.labels, r.predicted, ones, k))[0]
        w = _weights(len(r.labels), b, rng)
        per = FROM_CONFUSION[metric](_confusions(r.labels, r.predicted, w, k))  # resamples × trials
        draw = rng.integers(0, per.shape[1], size=per.shape)
        lo, hi = _interval(np.take_along_axis(per, draw, axis=1).mean(axis=1)) if b > 0 else (None, None)
        return HeldOut(
            metric,
            key,
            len(r.trial_ids),
            len(r.labels),
            float(per_trial.mean()),
            lo,
            hi,
            eval_value,
            [float(v) for v in per_trial],
            "a bootstrap over the test rows and the configuration's seeds",
        )
    if column not in part.columns or part[column].isna().all():
        return None
    values = part[column].dropna().to_numpy(dtype="float64")
    n_rows = int(part["n_test"].dropna().iloc[0]) if "n_test" in part and part["n_test"].notna().any() else 0
    lo = hi = None
    how = "one trial: no interval"
    if len(values) >= 2:
        t = float(stats.t.ppf((1 + LEVEL) / 2, len(values) - 1))
        half = t * float(values.std(ddof=1)) / float(np.sqrt(len(values)))
        lo, hi = float(values.mean() - half), float(values.mean() + half)
        how = "a t interval over the configuration's seeds (no per-example predictions to resample test rows)"
    return HeldOut(
        metric,
        key,
        len(values),
        n_rows,
        float(values.mean()),
        lo,
        hi,
        eval_value,
        [float(v) for v in values],
        how,
    )
