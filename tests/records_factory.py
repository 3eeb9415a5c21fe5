"""Build valid ftvar records (and whole synthetic studies) without training anything."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftvar.store.paths import StudyPaths
from ftvar.store.schema import SCHEMA_VERSION, validate
from ftvar.study.config import AnalysisConfig, DataConfig, Grid, ModelConfig, Study
from ftvar.study.config import validate as validate_study
from ftvar.study.design import DesignConfig
from ftvar.study.trial import Trial, expand, trial_id

Truth = Callable[[float, float, float], float]  # (coded lr, coded bs, epochs) → metric


def make_study(
    name: str = "synth",
    lr: list[float] | None = None,
    bs: list[int] | None = None,
    ep: list[int] | None = None,
    seeds: list[int] | None = None,
    **analysis: Any,
) -> Study:
    grid = Grid.of(
        {
            "learning_rate": lr if lr is not None else [1e-5, 2e-5, 5e-5, 1e-4],
            "batch_size": bs if bs is not None else [8, 16, 32, 64],
            "epochs": ep if ep is not None else [1, 2, 3],
            "seed": seeds if seeds is not None else [0, 1, 2],
        }
    )
    return Study(name=name, grid=grid, analysis=AnalysisConfig(**analysis))


def study_with(
    grid: dict[str, Any],
    name: str = "synth",
    design: DesignConfig | None = None,
    model: ModelConfig | None = None,
    data: DataConfig | None = None,
    **analysis: Any,
) -> Study:
    """A validated study over any axes (a [grid] table as parsed TOML, dotted names allowed)."""
    study = Study(
        name=name,
        grid=Grid.of(grid),
        design=design or DesignConfig(),
        model=model or ModelConfig(),
        data=data or DataConfig(),
        analysis=AnalysisConfig(**analysis),
    )
    validate_study(study)
    return study


def crossed_seeds_study() -> Study:
    """Crossed 4 × 4 init and order seeds over 2 learning rates × 2 batch sizes: the design on which, with
    trials missing, Henderson's method III must be exact (tests/test_simulation.py, bench_analysis.py)."""
    return study_with(
        {
            "learning_rate": [1e-5, 1e-4],
            "batch_size": [16, 32],
            "epochs": [1],
            "init_seed": list(range(4)),
            "order_seed": list(range(4)),
        },
        bootstrap=0,
    )


def find(study: Study, learning_rate: float | None, batch_size: int | None, epochs: int, seed: int) -> Trial:
    """The study's trial with these params (a baseline: the one of this init seed, or the only one); a trial
    outside the study gets an id of its own."""
    for t in expand(study):
        if t.is_baseline and learning_rate is None and t.init_seed in (None, seed):
            return t
        same = (t.learning_rate, t.batch_size, t.epochs) == (learning_rate, batch_size, epochs)
        if not t.is_baseline and same and t.init_seed == t.order_seed == seed:
            return t
    assert learning_rate is not None and batch_size is not None, "no such baseline"
    tid = trial_id(study.hash, learning_rate, batch_size, epochs, seed)
    return Trial(tid, learning_rate, batch_size, epochs, seed, seed)


def make_record(
    study: Study,
    *,
    learning_rate: float | None,
    batch_size: int | None,
    epochs: int,
    seed: int,
    status: str = "ok",
    metrics: dict[str, float | None] | None = None,
    finished_at: str = "2024-05-01T12:00:00.000+00:00",
    tid: str | None = None,
) -> dict[str, Any]:
    """A record dict that passes the schema (checked with record.validate before it is returned)."""
    baseline = learning_rate is None
    trial = find(study, learning_rate, batch_size, epochs, seed)
    tid = tid or trial.trial_id
    if status == "ok":
        m = {"accuracy": 0.8, "f1": 0.8, "eval_loss": 0.5, "train_loss": 0.4, **(metrics or {})}
    else:
        m = {"accuracy": None, "f1": None, "eval_loss": None, "train_loss": None}
    rec = {
        "schema_version": SCHEMA_VERSION,
        "study": {"name": study.name, "hash": study.hash, "source": "test"},
        "trial_id": tid,
        "kind": "baseline" if baseline else "trial",
        "params": trial.params(),
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom",
        "metrics": m,
        "n_train": 2000,
        "n_eval": 500,
        "label_names": ["negative", "positive"],
        "steps": 100,
        "timings": {"load": 1.0, "train": 10.0, "eval": 1.0, "total": 12.0},
        "throughput": {"train_samples_per_s": 200.0, "train_tokens_per_s": 20000.0},
        "resume": {"requeues": 0, "resumed_from_step": None},
        "environment": {
            "host": "node1",
            "device": "cpu",
            "torch": "2.3.0",
            "transformers": "4.41.0",
            "ftvar": "0.1.0",
            "python": "3.11.9",
        },
        "started_at": "2024-05-01T11:59:00.000+00:00",
        "finished_at": finished_at,
    }
    validate(rec)
    return rec


def write(records_dir: Path, rec: dict[str, Any], name: str | None = None) -> Path:
    records_dir.mkdir(parents=True, exist_ok=True)
    path = records_dir / (name or f"{rec['trial_id']}.json")
    path.write_text(json.dumps(rec, indent=1))
    return path


def code(lr: float, bs: float, ep: float) -> tuple[float, float, float]:
    return math.log10(lr), math.log2(bs), float(ep)


def synth_study(
    out: Path,
    study: Study,
    truth: Truth,
    noise: float = 0.01,
    seed_sd: float = 0.0,
    rng: np.random.Generator | None = None,
    baseline: float | None = 0.5,
) -> dict[str, float]:
    """Write one ok record per grid point: accuracy = truth(coded) + seed effect + noise,
    f1 = accuracy − 0.01, eval_loss = 1 − accuracy. Returns the seed effects."""
    rng = rng or np.random.default_rng(0)
    g = study.grid
    records = StudyPaths.of(out, study.name).records
    seed_fx = {s: float(rng.normal(0, seed_sd)) if seed_sd else 0.0 for s in g.init_seed}
    for lr, bs, ep, s in itertools.product(g.learning_rate, g.batch_size, g.epochs, g.init_seed):
        y = truth(*code(lr, bs, ep)) + seed_fx[s] + float(rng.normal(0, noise))
        y = min(max(y, 0.02), 0.98)
        write(
            records,
            make_record(
                study,
                learning_rate=lr,
                batch_size=bs,
                epochs=ep,
                seed=s,
                metrics={"accuracy": y, "f1": y - 0.01, "eval_loss": 1 - y},
            ),
        )
    if baseline is not None:
        for t in expand(study):
            if t.is_baseline:
                write(
                    records,
                    make_record(
                        study,
                        learning_rate=None,
                        batch_size=None,
                        epochs=0,
                        seed=t.init_seed or 0,
                        metrics={"accuracy": baseline, "f1": baseline, "eval_loss": 0.7},
                    ),
                )
    return seed_fx


def synth_table(
    study: Study,
    truth: Truth,
    noise: float = 0.01,
    seed_sd: float = 0.0,
    rng: np.random.Generator | None = None,
    baseline: float | None = 0.5,
) -> pd.DataFrame:
    """The table `collect` would build from `synth_study`'s records, made in memory (for simulations)."""
    rng = rng or np.random.default_rng(0)
    g = study.grid
    seed_fx = {s: float(rng.normal(0, seed_sd)) if seed_sd else 0.0 for s in g.init_seed}
    rows = []
    for lr, bs, ep, s in itertools.product(g.learning_rate, g.batch_size, g.epochs, g.init_seed):
        y = truth(*code(lr, bs, ep)) + seed_fx[s] + float(rng.normal(0, noise))
        rows.append(
            {
                "trial_id": trial_id(study.hash, lr, bs, ep, s),
                "kind": "trial",
                "status": "ok",
                "learning_rate": lr,
                "batch_size": bs,
                "epochs": ep,
                "seed": s,
                "init_seed": s,
                "order_seed": s,
                "accuracy": y,
                "f1": y - 0.01,
                "eval_loss": 1 - y,
                "train_loss": 0.4,
                "in_grid": True,
            }
        )
    if baseline is not None:
        for t in expand(study):
            if t.is_baseline:
                rows.append(
                    {
                        "trial_id": t.trial_id,
                        "kind": "baseline",
                        "status": "ok",
                        "learning_rate": None,
                        "batch_size": None,
                        "epochs": 0,
                        "seed": t.seed,
                        "init_seed": t.init_seed,
                        "order_seed": None,
                        "accuracy": baseline,
                        "f1": baseline,
                        "eval_loss": 0.7,
                        "train_loss": None,
                        "in_grid": True,
                    }
                )
    df = pd.DataFrame(rows)
    df["batch_size"] = df["batch_size"].astype("Int64")
    df["learning_rate"] = df["learning_rate"].astype("float64")
    return df


# ------------------------------------------------------------------------------ simulations over any axes

Mean = Callable[[pd.DataFrame], np.ndarray]  # the trials' table (one column per axis) → true mean metric


def simulate(
    study: Study,
    mean: Mean,
    *,
    init_sd: float = 0.0,
    order_sd: float = 0.0,
    noise: float = 0.01,
    rng: np.random.Generator | None = None,
    degenerate: float | Callable[[pd.DataFrame], np.ndarray] = 0.0,
    majority: float = 0.5,
    baseline: float | None = 0.5,
) -> pd.DataFrame:
    """The table `collect` would build for every trial of the study (any axes, any design), made in memory.

    accuracy = mean(axes) + a(init seed) + b(order seed) + noise, with a ~ N(0, init_sd²), b ~ N(0, order_sd²)
    drawn once per seed value; f1 = accuracy − 0.01; eval_loss = 1 − accuracy. A trial is degenerate with
    probability `degenerate` (a number, or a function of the trials' table): its accuracy is then `majority`,
    as a model that always answers the majority class. Baselines (one per init seed or one shared, as
    `expand` makes them) get accuracy `baseline` (+ their init seed's effect when they have one)."""
    rng = rng or np.random.default_rng(0)
    trials = expand(study)
    runs = [t for t in trials if not t.is_baseline]
    rows = pd.DataFrame([{**t.params(), "trial_id": t.trial_id} for t in runs])
    init_values = sorted({t.init_seed for t in trials if t.init_seed is not None})
    order_values = sorted({t.order_seed for t in runs if t.order_seed is not None})
    a = dict(zip(init_values, rng.normal(0, init_sd, len(init_values)).tolist(), strict=True))
    b = dict(zip(order_values, rng.normal(0, order_sd, len(order_values)).tolist(), strict=True))
    acc = (
        np.asarray(mean(rows), dtype="float64")
        + rows["init_seed"].map(a).to_numpy(dtype="float64")
        + rows["order_seed"].map(b).to_numpy(dtype="float64")
        + rng.normal(0, noise, len(rows))
    )
    p_deg = degenerate(rows) if callable(degenerate) else np.full(len(rows), float(degenerate))
    is_deg = rng.random(len(rows)) < p_deg
    acc = np.where(is_deg, majority, acc)
    table = rows.assign(
        kind="trial",
        status="ok",
        accuracy=acc,
        f1=acc - 0.01,
        eval_loss=1 - acc,
        train_loss=0.4,
        degenerate=is_deg,
        majority_share=majority,
        n_eval=500,
        in_grid=True,
    )
    if baseline is not None:
        base = []
        for t in trials:
            if t.is_baseline:
                value = baseline + (a.get(t.init_seed, 0.0) if t.init_seed is not None else 0.0)
                base.append(
                    {
                        **t.params(),
                        "trial_id": t.trial_id,
                        "kind": "baseline",
                        "status": "ok",
                        "accuracy": value,
                        "f1": value,
                        "eval_loss": 0.7,
                        "train_loss": None,
                        "degenerate": False,
                        "majority_share": majority,
                        "n_eval": 500,
                        "in_grid": True,
                    }
                )
        table = pd.concat([pd.DataFrame(base), table], ignore_index=True)
    for col in ("init_seed", "order_seed", "batch_size"):
        if col in table.columns:
            table[col] = table[col].astype("Int64")
    table["degenerate"] = table["degenerate"].astype("boolean")
    table["learning_rate"] = table["learning_rate"].astype("float64")
    return table


def write_table(out: Path, study: Study, table: pd.DataFrame) -> None:
    """Write one valid record per row of a simulated table (as `launch` would have)."""
    records = StudyPaths.of(out, study.name).records
    by_id = {t.trial_id: t for t in expand(study)}
    for row in table.to_dict(orient="records"):
        trial = by_id[row["trial_id"]]
        ok = row["status"] == "ok"
        metrics = {
            m: (float(row[m]) if ok and row[m] is not None and row[m] == row[m] else None)
            for m in ("accuracy", "f1", "eval_loss", "train_loss")
        }
        rec = make_record(study, learning_rate=1e-5, batch_size=8, epochs=1, seed=0, status=row["status"])
        rec.update(
            trial_id=trial.trial_id,
            kind="baseline" if trial.is_baseline else "trial",
            params=trial.params(),
            metrics=metrics,
        )
        if ok:
            n = 500
            share = float(row.get("majority_share", 0.5))
            deg = bool(row.get("degenerate", False))
            rec["eval"] = {
                "label_counts": [round(n * share), n - round(n * share)],
                "pred_counts": [n, 0] if deg else [n // 2, n - n // 2],
                "majority_share": share,
                "degenerate": deg,
            }
        validate(rec)
        write(records, rec)


def write_predictions(
    out: Path,
    study: Study,
    table: pd.DataFrame,
    n_rows: int = 200,
    rng: np.random.Generator | None = None,
    test_rows: int = 0,
    texts: bool = True,
) -> None:
    """Per-example prediction sidecars (ftvar.store.predictions) for the ok rows of a simulated table: every
    trial sees the same gold labels; each row is predicted right with probability the trial's accuracy (rows
    differ in difficulty, so that seeds agree more on easy rows); a test split of `test_rows` rows likewise.
    With `texts`, the data cache's texts.json for them."""
    from ftvar.store.predictions import sidecar
    from ftvar.store.predictions import write_predictions as write_sidecar

    rng = rng or np.random.default_rng(0)
    paths = StudyPaths.of(out, study.name)
    key = "0123456789ab"
    sizes = {"eval": n_rows, **({"test": test_rows} if test_rows else {})}
    gold = {split: np.arange(n) % 2 for split, n in sizes.items()}
    ease = {split: rng.normal(0, 1.5, n) for split, n in sizes.items()}
    for row in table.to_dict(orient="records"):
        if row["status"] != "ok" or row["kind"] != "trial":
            continue
        splits = {}
        for split, n in sizes.items():
            acc = float(row["accuracy"] if split == "eval" else row.get("test_accuracy", row["accuracy"]))
            shift = np.quantile(ease[split], 1 - min(max(acc, 0.0), 1.0))
            right = ease[split] + rng.normal(0, 0.7, n) > shift
            predicted = np.where(right, gold[split], 1 - gold[split])
            p1 = np.clip(np.where(predicted == 1, 0.7, 0.3) + rng.normal(0, 0.1, n), 0.01, 0.99)
            splits[split] = (gold[split], predicted, np.column_stack([1 - p1, p1]))
        data = sidecar(row["trial_id"], {"name": study.name, "hash": study.hash}, key, ["neg", "pos"], splits)
        write_sidecar(paths.prediction(row["trial_id"]), data)
    if texts:
        paths.texts(key).parent.mkdir(parents=True, exist_ok=True)
        paths.texts(key).write_text(
            json.dumps({split: [f"{split} sentence {i}" for i in range(n)] for split, n in sizes.items()})
        )
