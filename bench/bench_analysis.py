"""Coverage study of the analysis on simulated studies with a known truth; prints a Markdown table (no test).

    python bench/bench_analysis.py              # 400 studies per setting, 1000 for the best value (about
                                                # 20 minutes on 2 quiet cores)
    python bench/bench_analysis.py --studies 50 --bootstrap 100 --best-studies 100   # a quick look

For each setting it simulates studies `accuracy = polynomial(axes) + init-seed effect + order-seed effect +
noise` (tests/records_factory.simulate), runs the analysis' own functions, and counts how often the 95%
intervals contain the truth: the seed-blocked coefficients, the variance shares (generalized pivotal
quantities; with equal and with unequal noise across configurations), the best configuration's value
(inference on winners) under a flat truth, a clear curvature and a misspecified degree, and its position; how
often cross-validation picks the true degree; how often Holm's correction keeps a null study free of false
findings; the failure model's slope and its test; expected max on a random design against its closed form;
and Henderson's seed-variance estimator on unbalanced crossed seeds. `mc se` is the Monte Carlo standard
error of a coverage, √(p(1 − p)/studies). The figures are quoted in docs/report-format.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from records_factory import crossed_seeds_study, make_study, simulate, study_with

from ftvar.stats.analysis import _noise, search_space
from ftvar.stats.expected_max import curves
from ftvar.stats.failures import model_failures
from ftvar.stats.optimum import best
from ftvar.stats.regression import fit
from ftvar.stats.selection import select
from ftvar.stats.terms import build
from ftvar.stats.variance import decompose
from ftvar.study.config import Study

SLOPES = {"lr": 0.01, "bs": -0.01, "I(lr ** 2)": -0.02}


def polynomial(study: Study, curvature: float = -0.02) -> Any:
    lr_c = float(np.mean(np.log10(study.grid.learning_rate)))
    bs_c = float(np.mean(np.log2(study.grid.batch_size)))

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) - lr_c
        z = np.log2(rows["batch_size"].to_numpy(dtype=float)) - bs_c
        return np.asarray(0.85 + 0.01 * x + curvature * x * x - 0.01 * z)

    return mean


def trials(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["kind"] == "trial"].reset_index(drop=True)


def coefficients(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    study = make_study(seeds=[0, 1, 2])  # the paper's grid: 48 configurations × 3 seeds
    mean = polynomial(study)
    hits = dict.fromkeys(SLOPES, 0)
    naive_hits = dict.fromkeys(SLOPES, 0)
    for _ in range(studies):
        rows = trials(simulate(study, mean, init_sd=0.02, noise=0.01, rng=rng))
        md = build(rows, study.axes, 2)
        y = rows["accuracy"].to_numpy()
        f = fit(md, y, "accuracy", "absolute", "all", "blocks")
        naive = sm.OLS(y, md.X).fit()
        ci = naive.conf_int(0.05)
        for name, value in SLOPES.items():
            c = f.coef(name)
            assert c is not None
            hits[name] += c.ci_low <= value <= c.ci_high
            j = md.columns.index(name)
            naive_hits[name] += ci[j, 0] <= value <= ci[j, 1]
    out = [
        {
            "setting": "seed-blocked fit, 4×4×3 grid × 3 seeds",
            "quantity": f"95% CI of {n}",
            "coverage": h / studies,
        }
        for n, h in hits.items()
    ]
    out += [
        {"setting": "same, seeds ignored (plain OLS)", "quantity": f"95% CI of {n}", "coverage": h / studies}
        for n, h in naive_hits.items()
    ]
    return out


def shares(studies: int, b: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    settings: list[tuple[str, Study, float, float]] = []
    for s in (3, 5, 10):
        study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2], seeds=list(range(s)))
        settings.append((f"{s} seeds (init = order), 18 configurations", study, 0.01, 0.0))
    crossed = study_with(
        {
            "learning_rate": [1e-5, 3e-5, 1e-4],
            "batch_size": [8, 16, 32],
            "epochs": [1, 2],
            "init_seed": list(range(5)),
            "order_seed": list(range(5)),
        }
    )
    settings.append(("5 init × 5 order seeds, 18 configurations", crossed, 0.01, 0.007))
    for s in (3, 5, 10):  # a third of the configurations (learning rate 1e-4) with 3× the noise sd
        study = make_study(lr=[1e-5, 3e-5, 1e-4], bs=[8, 16, 32], ep=[1, 2], seeds=list(range(s)))
        settings.append((f"{s} seeds, unequal noise (sd ×3 at learning rate 1e-4)", study, 0.01, -1.0))
    noise = 0.01
    for label, study, init_sd, order_sd in settings:
        mean = polynomial(study)
        hits: dict[str, int] = {}
        est: dict[str, list[float]] = {}
        unequal = order_sd < 0
        order_sd = max(order_sd, 0.0)
        for r in range(studies):
            rows = trials(simulate(study, mean, init_sd=init_sd, order_sd=order_sd, noise=noise, rng=rng))
            noise2 = noise**2
            if unequal:
                loud = rows["learning_rate"].to_numpy() == 1e-4
                rows.loc[loud, "accuracy"] += rng.normal(0, noise * np.sqrt(8), int(loud.sum()))
                noise2 = noise**2 * (1 + 8 / 3)
            md = build(rows, study.axes, 2)
            hp = float(np.var(mean(rows)))
            seeds = {s.name: (init_sd if s.name != "order_seed" else order_sd) ** 2 for s in md.seeds}
            total = hp + sum(seeds.values()) + noise2
            truth = {"hyperparameters": hp / total, "residual": noise2 / total}
            truth |= {k: v / total for k, v in seeds.items()}
            truth["luck"] = (sum(seeds.values()) + noise2) / total
            d = decompose(md, rows[["accuracy"]].to_numpy(), ["accuracy"], b, seed=r)[0]
            comps = {c.name: c for c in d.components} | {"luck": d.luck}
            for name, value in truth.items():
                c = comps[name]
                hits[name] = hits.get(name, 0) + int(c.ci_low is not None and c.ci_low <= value <= c.ci_high)
                est.setdefault(name, []).append(c.share - value)
        for name, h in hits.items():
            out.append(
                coverage(
                    label,
                    f"95% interval of the {name} share",
                    h,
                    studies,
                    **{"mean error of the share": float(np.mean(est[name]))},
                )
            )
    return out


def mc_se(p: float, n: int) -> float:
    return float(np.sqrt(max(p * (1 - p), 0.0) / max(n, 1)))


def coverage(setting: str, quantity: str, hits: float, n: int, **more: Any) -> dict[str, Any]:
    """A table row: how often (`hits` of `n` studies) the interval held, with its Monte Carlo SE."""
    rate = hits / n
    return {"setting": setting, "quantity": quantity, "coverage": rate, "mc se": mc_se(rate, n), **more}


def best_value(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The best value's interval (inference on winners): how often it contains the true mean (over seeds) of
    the recommended configuration and the best true mean on the grid, on the paper-like 4×4×3 grid with 3
    seeds, under a flat truth, a clear curvature (degree 2, the true one) and the same curvature fitted with
    degree 1 (lack of fit: the choice falls back to the configurations' means); and the naive estimate's
    bias against the selection-corrected one (medians over studies)."""
    study = make_study(seeds=[0, 1, 2])
    space = search_space(study)
    lr_c = float(np.mean(np.log10(study.grid.learning_rate)))
    bs_c = float(np.mean(np.log2(study.grid.batch_size)))
    out = []
    for label, curvature, degree in (
        ("flat truth (no hyperparameter matters)", 0.0, 2),
        ("clear curvature, degree-2 fit", -0.05, 2),
        ("clear curvature, degree-1 fit (lack of fit)", -0.05, 1),
    ):

        def mean(rows: pd.DataFrame, curvature: float = curvature) -> np.ndarray:
            x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) - lr_c
            z = np.log2(rows["batch_size"].to_numpy(dtype=float)) - bs_c
            return np.asarray(0.85 + (0.01 * x + curvature * x * x - 0.01 * z) * (curvature != 0))

        hit = hit_best = 0
        naive, corrected = [], []
        for r in range(studies):
            rows = trials(simulate(study, mean, init_sd=0.01, noise=0.01, rng=rng))
            md = build(rows, study.axes, degree)
            y = rows["accuracy"].to_numpy()
            b = best(md, y, "accuracy", True, degree, 0, r, space, _noise(md, y))
            truth = float(mean(pd.DataFrame([b.recommended]))[0])
            top = float(mean(rows).max())
            assert b.ci_low is not None and b.ci_high is not None and b.corrected is not None
            hit += b.ci_low <= truth <= b.ci_high
            hit_best += b.ci_low <= top <= b.ci_high
            naive.append(b.predicted - truth)
            corrected.append(b.corrected - truth)
        setting = f"{label}, 4×4×3 grid × 3 seeds"
        out += [
            coverage(
                setting,
                "95% interval of the recommended configuration's value (its true mean)",
                hit,
                studies,
                picks=f"median bias: naive {np.median(naive):+.4f}, corrected {np.median(corrected):+.4f}",
            ),
            coverage(setting, "same interval, covering the best true mean on the grid", hit_best, studies),
        ]
    return out


def failure_slope(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The failure model on 4 learning rates × 2 batch sizes × 2 epochs × 5 seeds: logit P(fail) = −1.5 +
    slope × (log10 learning rate − centre); the slope's mean estimate, its 95% Wald interval's coverage and
    how often the penalised likelihood-ratio test rejects at 0.05 (its level when the slope is 0)."""
    study = make_study(lr=[1e-5, 3e-5, 1e-4, 3e-4], bs=[16, 32], ep=[1, 2], seeds=list(range(5)))
    centre = float(np.mean(np.log10(study.grid.learning_rate)))
    out = []
    for slope in (0.0, 2.0):

        def p_fail(rows: pd.DataFrame, slope: float = slope) -> np.ndarray:
            x = np.log10(rows["learning_rate"].to_numpy(dtype=float)) - centre
            return np.asarray(1 / (1 + np.exp(-(-1.5 + slope * x))))

        estimates, hits, rejects = [], 0, 0
        for _ in range(studies):
            table = simulate(study, lambda r: np.full(len(r), 0.85), noise=0.01, degenerate=p_fail, rng=rng)
            model = model_failures(trials(table), study.axes, 1)
            t = next((t for t in model.terms if t.term == "lr"), None)
            if t is None or t.coef is None or t.se is None:
                continue
            estimates.append(t.coef)
            hits += t.coef - 1.96 * t.se <= slope <= t.coef + 1.96 * t.se
            rejects += t.p < 0.05
        n = max(1, len(estimates))
        setting = f"failure model, true slope {slope:g} per decade, 16 configurations × 5 seeds"
        out += [
            coverage(
                setting,
                "95% Wald interval of the slope (Firth)",
                hits,
                n,
                picks=f"mean estimate {np.mean(estimates):+.3f} ({n} studies fitted)",
            ),
            coverage(setting, "penalised LR test rejects at 0.05", rejects, n),
        ]
    return out


def expected_max_random(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Expected max on a random design: N = 60 draws of learning rate ~ log-uniform[1e-5, 1e-3], accuracy =
    0.85 − 0.05 (log10 lr + 4)² + N(0, 0.01²). Its exact E[max of n draws] is the integral of t d(F(t)ⁿ), F
    the score's distribution (quadrature over the prior and the noise). Reported: the estimator's mean error
    over studies and how often the 95% band (a bootstrap of the trials, one seed) contains the truth."""
    from scipy import stats

    n_trials, noise = 60, 0.01
    u = np.linspace(-5, -3, 4001)
    g = 0.85 - 0.05 * (u + 4) ** 2
    t = np.linspace(g.min() - 8 * noise, g.max() + 8 * noise, 4001)
    cdf = stats.norm.cdf((t[:, None] - g[None, :]) / noise).mean(axis=1)
    budgets = (1, 5, 10, 15)
    truth = {n: float(np.sum(t[1:] * np.diff(cdf**n)) + t[0] * cdf[0] ** n) for n in budgets}
    errors = {n: [] for n in budgets}
    hits = dict.fromkeys(budgets, 0)
    for r in range(studies):
        lr = 10 ** rng.uniform(-5, -3, n_trials)
        acc = 0.85 - 0.05 * (np.log10(lr) + 4) ** 2 + rng.normal(0, noise, n_trials)
        table = pd.DataFrame({"learning_rate": lr, "accuracy": acc})
        curve = curves(table, "accuracy", None, None, bootstrap=200, seed=r)[0]
        for n in budgets:  # the band stops at N/4 = 15
            errors[n].append(curve.mean[n - 1] - truth[n])
            assert curve.band_low is not None and curve.band_high is not None
            hits[n] += curve.band_low[n - 1] <= truth[n] <= curve.band_high[n - 1]
    return [
        coverage(
            f"random design, {n_trials} draws from log-uniform learning rates, budget n = {n}",
            "95% band of expected max contains the closed form",
            hits[n],
            studies,
            picks=f"closed form {truth[n]:.4f}, mean error {np.mean(errors[n]):+.4f}",
        )
        for n in budgets
    ]


def henderson(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Crossed 4 × 4 seeds over 4 configurations with 40% of the trials missing: the mean of the init- and
    order-seed variance estimates against the truth (the unbalanced case Henderson's method III must get
    right)."""
    study = crossed_seeds_study()
    init_sd, order_sd = 0.02, 0.01
    init, order = [], []
    for _ in range(studies):
        rows = trials(
            simulate(
                study, lambda r: np.full(len(r), 0.8), init_sd=init_sd, order_sd=order_sd, noise=0.01, rng=rng
            )
        )
        rows = rows[rng.random(len(rows)) > 0.4].reset_index(drop=True)
        md = build(rows, study.axes, 1)
        if len(md.seeds) < 2:
            continue
        d = decompose(md, rows[["accuracy"]].to_numpy(), ["accuracy"], 0)[0]
        init.append(d.component("init_seed").variance)  # type: ignore[union-attr]
        order.append(d.component("order_seed").variance)  # type: ignore[union-attr]
    return [
        {
            "setting": "crossed 4 × 4 seeds, 4 configurations, 40% of trials missing",
            "quantity": f"mean {name} variance ÷ truth (Henderson III)",
            "coverage": float(np.mean(values) / sd**2),
            "mc se": float(np.std(values) / np.sqrt(len(values)) / sd**2),
        }
        for name, values, sd in (("init-seed", init, init_sd), ("order-seed", order, order_sd))
    ]


def degrees(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    out = []
    study = make_study(seeds=[0, 1, 2], degree=3)
    for true, curvature in ((1, 0.0), (2, -0.05), (2, -0.02)):
        mean = polynomial(study, curvature=curvature)
        picks = []
        for _ in range(studies):
            rows = trials(simulate(study, mean, init_sd=0.01, noise=0.01, rng=rng))
            sel = select(
                "accuracy",
                lambda d, rows=rows: build(rows, study.axes, d),
                lambda md: md.rows["accuracy"].to_numpy(dtype=float),
                3,
            )
            picks.append(sel.chosen)
        counts = pd.Series(picks).value_counts(normalize=True).to_dict()
        out.append(
            {
                "setting": f"true degree {true} (curvature {curvature:g}), 4×4×3 grid × 3 seeds, degrees 1–3",
                "quantity": "CV picks the true degree",
                "coverage": counts.get(true, 0.0),
                "picks": {int(k): round(v, 3) for k, v in sorted(counts.items())},
            }
        )
    return out


def optimum(studies: int, b: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    study = make_study(lr=[1e-5, 2e-5, 5e-5, 1e-4, 2e-4], bs=[16, 32], ep=[1], seeds=list(range(5)))
    lr_c = float(np.mean(np.log10(study.grid.learning_rate)))
    vertex = lr_c + 0.2

    def mean(rows: pd.DataFrame) -> np.ndarray:
        x = np.log10(rows["learning_rate"].to_numpy(dtype=float))
        return np.asarray(0.85 - 0.05 * (x - vertex) ** 2)

    hits = 0
    for r in range(studies):
        rows = trials(simulate(study, mean, init_sd=0.01, noise=0.01, rng=rng))
        got = best(build(rows, study.axes, 2), rows["accuracy"].to_numpy(), "accuracy", True, 2, b, seed=r)
        lr = got.axes[0]
        hits += int(lr.ci_low is not None and lr.ci_low <= 10**vertex <= lr.ci_high)
    return [
        {
            "setting": "5 learning rates × 2 batch sizes × 5 seeds",
            "quantity": "95% interval of the best learning rate",
            "coverage": hits / studies,
        }
    ]


def holm(studies: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    study = make_study(seeds=[0, 1, 2])
    any_raw = any_holm = 0
    for _ in range(studies):
        rows = trials(simulate(study, lambda r: np.full(len(r), 0.8), init_sd=0.02, noise=0.01, rng=rng))
        f = fit(build(rows, study.axes, 2), rows["accuracy"].to_numpy(), "accuracy", "absolute", "all")
        any_raw += any(t.p < 0.05 for t in f.tests)
        any_holm += any(t.significant for t in f.tests)
    return [
        {
            "setting": "no effect at all, 9 terms",
            "quantity": "studies with a false finding, raw p < 0.05",
            "coverage": any_raw / studies,
        },
        {
            "setting": "no effect at all, 9 terms",
            "quantity": "studies with a false finding, Holm p < 0.05",
            "coverage": any_holm / studies,
        },
    ]


def markdown(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.3f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


PARTS = (
    "coefficients",
    "shares",
    "degrees",
    "optimum",
    "best_value",
    "holm",
    "failure_slope",
    "expected_max",
    "henderson",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--bootstrap", type=int, default=400)
    parser.add_argument("--best-studies", type=int, default=1000)
    parser.add_argument(
        "--only", nargs="*", default=None, help="parts to run (default: all): " + ", ".join(PARTS)
    )
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    rows = []
    parts = {
        "coefficients": lambda: coefficients(args.studies, rng),
        "shares": lambda: shares(args.studies, args.bootstrap, rng),
        "degrees": lambda: degrees(args.studies, rng),
        "optimum": lambda: optimum(args.studies, args.bootstrap, rng),
        "best_value": lambda: best_value(args.best_studies, rng),
        "holm": lambda: holm(args.studies, rng),
        "failure_slope": lambda: failure_slope(args.studies, rng),
        "expected_max": lambda: expected_max_random(args.studies, rng),
        "henderson": lambda: henderson(args.studies, rng),
    }
    for name, part in parts.items():
        if args.only and name not in args.only:
            continue
        rows += part()
        print(f"… {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(
        f"{args.studies} simulated studies per setting ({args.best_studies} for the best value), "
        f"{args.bootstrap} resamples or draws per interval\n"
    )
    print(markdown(table))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
