"""Coverage study of the analysis on simulated studies with a known truth; prints a Markdown table (no test).

    python bench/bench_analysis.py              # 200 studies per setting (a few minutes on 2 cores)
    python bench/bench_analysis.py --studies 50 --bootstrap 100

For each setting it simulates studies `accuracy = polynomial(axes) + init-seed effect + order-seed effect +
noise` (tests/records_factory.simulate), runs the analysis' own functions, and counts how often the 95%
intervals contain the truth: the seed-blocked coefficients, the variance shares (bootstrap over seeds), the
best configuration; how often cross-validation picks the true degree; and how often Holm's correction keeps a
null study free of false findings. The figures are quoted in docs/report-format.md.
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

from records_factory import make_study, simulate, study_with

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
    noise = 0.01
    for label, study, init_sd, order_sd in settings:
        mean = polynomial(study)
        hits: dict[str, int] = {}
        est: dict[str, list[float]] = {}
        for r in range(studies):
            rows = trials(simulate(study, mean, init_sd=init_sd, order_sd=order_sd, noise=noise, rng=rng))
            md = build(rows, study.axes, 2)
            hp = float(np.var(mean(rows)))
            seeds = {s.name: (init_sd if s.name != "order_seed" else order_sd) ** 2 for s in md.seeds}
            total = hp + sum(seeds.values()) + noise**2
            truth = {"hyperparameters": hp / total, "residual": noise**2 / total}
            truth |= {k: v / total for k, v in seeds.items()}
            truth["luck"] = (sum(seeds.values()) + noise**2) / total
            d = decompose(md, rows[["accuracy"]].to_numpy(), ["accuracy"], b, seed=r)[0]
            comps = {c.name: c for c in d.components} | {"luck": d.luck}
            for name, value in truth.items():
                c = comps[name]
                hits[name] = hits.get(name, 0) + int(c.ci_low is not None and c.ci_low <= value <= c.ci_high)
                est.setdefault(name, []).append(c.share - value)
        for name, h in hits.items():
            out.append(
                {
                    "setting": label,
                    "quantity": f"95% interval of the {name} share",
                    "coverage": h / studies,
                    "mean error of the share": float(np.mean(est[name])),
                }
            )
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    rows = []
    for part in (
        lambda: coefficients(args.studies, rng),
        lambda: shares(args.studies, args.bootstrap, rng),
        lambda: degrees(args.studies, rng),
        lambda: optimum(args.studies, args.bootstrap, rng),
        lambda: holm(args.studies, rng),
    ):
        rows += part()
        print(f"… {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(f"{args.studies} simulated studies per setting, {args.bootstrap} bootstrap resamples\n")
    print(markdown(table))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
