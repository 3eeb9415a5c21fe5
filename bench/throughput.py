"""Benchmark: training throughput of the Hugging Face Trainer, the plain engine and the fast engine.

    python bench/throughput.py                          # CPU: tiny DistilBERT, bs 16 and 32 (about a minute)
    python bench/throughput.py --device cuda            # GPU: DistilBERT-base shape, bs 8, 16, 32, 64
    python bench/throughput.py --device cuda --json throughput.json

Every engine trains the same model (random init from the same seed), on the same SST-2 rows, at the same batch
sizes, in this one process. A run is `--warmup` steps (start-up, CUDA-graph capture) then `--steps` timed
steps; samples/s counts the timed steps only, with the device synchronised at both ends. The fast engine
warms up longer (--warmup-fast), so that the graphs of the common batch shapes are captured before timing.
The Trainer runs twice: with its defaults (fp32: `trainer-fp32`) and in bf16 (`trainer-bf16`), the precision
the other engines use on a GPU ("auto"). `fast-torch-dropout` is the fast engine with torch's dropout (drawn
from the process's generator, as ftvar 0.1 did), to price each trial's own dropout (ftvar.train.noise):
    python bench/throughput.py --runs fast fast-torch-dropout --repeat 7
Prints samples/s per engine and batch size (the median of --repeat runs, interleaved across engines, each
run's figure beside it), samples per second of the process' CPU time (steadier on a loaded machine), and each
engine's ratio to the Trainer.

The price of learning curves (issue 23): `--curve` trains whole trials instead, --curve-epochs epochs of
bs × --steps rows each, evaluated on an eval split of 1/--eval-ratio as many rows (9: RTE's and MRPC's
train:validation ratio, the largest evaluation share of the GLUE tasks ftvar studies), once with the default
train.eval_every (1.0: once an epoch) and once without a curve (0), interleaved; the figure is training
samples per CPU-second of the whole fit, final evaluation included in both, and, measured inside each run
with a curve (free of the run-to-run noise of a loaded machine), the share of the fit spent on the curve's
evaluations:
    python bench/throughput.py --curve --runs plain fast --repeat 7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from ftvar.data.cache import Split, load_prepared
from ftvar.study.trial import Trial, expand, settings
from ftvar.train import registry
from ftvar.train.engine import FitJob
from ftvar.train.noise import NoiseState
from ftvar.train.runner import build_model

RUNS = (  # (label, engine, precision)
    ("trainer-fp32", "trainer", "fp32"),
    ("trainer-bf16", "trainer", "auto"),
    ("plain", "plain", "auto"),
    ("fast", "fast", "auto"),
    # the fast engine with torch's own dropout (a shared generator: what ftvar 0.1 did), to price the
    # trial's own dropout (ftvar.train.noise)
    ("fast-torch-dropout", "fast", "auto"),
)


def subset(split: Split, rows: int, seed: int = 0) -> Split:
    idx = np.random.default_rng(seed).permutation(len(split))[:rows]
    types = None if split.types is None else split.types[idx]
    return Split(split.ids[idx], split.lengths[idx], split.labels[idx], types)


def one_trial(args: argparse.Namespace, *overrides: str) -> tuple[Trial, Any, Any, torch.device, Any]:
    """The benchmark study's one trial (with `--set`-style overrides): its settings, its prepared data, the
    device and a freshly built model."""
    study = common.study(args, *overrides)
    paths = common.ensure_cache(study, args.out)
    (trial,) = expand(study)
    s = settings(study, trial)
    prepared = load_prepared(study, paths, trial)
    model, _ = build_model(study, s, prepared, 0)
    return trial, s, prepared, torch.device(args.device), model


def measure(
    args: argparse.Namespace, engine: str, precision: str, bs: int, torch_dropout: bool = False
) -> dict[str, Any]:
    trial, s, prepared, device, model = one_trial(
        args, f"grid.batch_size=[{bs}]", f"train.engine={engine}", f"train.precision={precision}"
    )
    if torch_dropout:  # a counter the engines find: they then leave torch's dropout modules in place
        model.add_module("ftvar_noise", NoiseState(0))
    marks: dict[str, float] = {}
    count = 0
    warmup = args.warmup_fast if engine == "fast" else args.warmup

    def after_step() -> None:
        nonlocal count
        count += 1
        if count in (warmup, warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks["start" if count == warmup else "end"] = time.perf_counter()
            marks["cpu_start" if count == warmup else "cpu_end"] = time.process_time()

    job = FitJob(
        model=model,
        train=subset(prepared.train, bs * (warmup + args.steps)),
        eval=subset(prepared.eval, 64),
        trial=trial,
        settings=s.train,
        device=device,
        pad_id=prepared.pad_token_id,
        num_labels=len(prepared.label_names),
        after_step=after_step,
    )
    result = registry.make(engine, device).fit(job)
    seconds = marks["end"] - marks["start"]
    out = {
        "engine": engine,
        "precision": precision,
        "batch_size": bs,
        "steps": args.steps,
        "seconds": seconds,
        "samples_per_s": args.steps * bs / seconds,
        # per second of this process' CPU time: steadier than wall time on a machine others load too
        "samples_per_cpu_s": args.steps * bs / max(1e-9, marks["cpu_end"] - marks["cpu_start"]),
        "train_loss": result.metrics.get("train_loss"),
        "detail": {k: v for k, v in result.engine.items() if k != "name"},
    }
    del model, job
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def measure_curve(args: argparse.Namespace, engine: str, bs: int, eval_every: float) -> dict[str, Any]:
    """One whole trial (all its epochs and its final evaluation) with or without a learning curve."""
    trial, s, prepared, device, model = one_trial(
        args, f"grid.batch_size=[{bs}]", f"grid.epochs=[{args.curve_epochs}]", f"train.engine={engine}"
    )
    rows = bs * args.steps
    job = FitJob(
        model=model,
        train=subset(prepared.train, rows),
        eval=subset(prepared.eval, max(1, rows // args.eval_ratio), seed=1),
        trial=trial,
        settings=dataclasses.replace(s.train, eval_every=eval_every),
        device=device,
        pad_id=prepared.pad_token_id,
        num_labels=len(prepared.label_names),
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    result = registry.make(engine, device).fit(job)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = rows * args.curve_epochs
    return {
        "engine": engine,
        "batch_size": bs,
        "eval_every": eval_every,
        "points": len(result.curve or []),
        # the share of the fit spent evaluating during training, inside this run (no run-to-run noise)
        "curve_share": result.curve_time / seconds,
        "samples_per_s": samples / seconds,
        "samples_per_cpu_s": samples / max(1e-9, cpu),
        "eval_rows": len(job.eval),
        "train_rows": rows,
    }


def main_curve(args: argparse.Namespace) -> None:
    """The price of learning curves: whole trials with the default eval_every against none, interleaved."""
    rows: list[dict[str, Any]] = []
    engines = [e for e in args.runs if e in ("plain", "fast")] or ["plain", "fast"]
    for bs in args.batch_sizes:
        for engine in engines:
            runs: dict[float, list[dict[str, Any]]] = {0.0: [], 1.0: []}
            for _ in range(args.repeat):
                for every in (0.0, 1.0):  # interleaved: a load that comes and goes hits both alike
                    runs[every].append(measure_curve(args, engine, bs, every))
            medians = {e: float(np.median([r["samples_per_cpu_s"] for r in rs])) for e, rs in runs.items()}
            walls = {e: float(np.median([r["samples_per_s"] for r in rs])) for e, rs in runs.items()}
            # the spread of the repeats: each curve run against the no-curve run next to it
            with_curve = runs[1.0]
            paired = zip(with_curve, runs[0.0], strict=True)
            pairs = [1 - a["samples_per_cpu_s"] / b["samples_per_cpu_s"] for a, b in paired]
            cost = 1 - medians[1.0] / medians[0.0]
            shares = [r["curve_share"] for r in with_curve]
            row = {
                "engine": engine,
                "batch_size": bs,
                "epochs": args.curve_epochs,
                "train_rows": runs[0.0][0]["train_rows"],
                "eval_rows": runs[0.0][0]["eval_rows"],
                "points": runs[1.0][0]["points"],
                "samples_per_cpu_s": medians,
                "samples_per_s": walls,
                "cost": cost,
                "curve_share": float(np.median(shares)),
                "curve_shares": [round(s, 4) for s in shares],
                "paired_costs": [round(c, 4) for c in pairs],
                "all": {str(e): [round(r["samples_per_cpu_s"], 1) for r in rs] for e, rs in runs.items()},
            }
            rows.append(row)
            print(
                f"bs {bs:3d}  {engine:5s} {row['train_rows']} rows × {args.curve_epochs} epochs, "
                f"{row['eval_rows']} eval rows, {row['points']} curve points: "
                f"{medians[0.0]:.0f} → {medians[1.0]:.0f} samples/CPU-s, cost {cost:+.1%} "
                f"[inside the runs: {float(np.median(shares)):.1%} of the fit on the curve's evaluations, "
                f"runs {', '.join(f'{s:.1%}' for s in shares)}] "
                f"(paired runs: {', '.join(f'{c:+.1%}' for c in pairs)}; "
                f"samples/s {walls[0.0]:.0f} → {walls[1.0]:.0f})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"curve": rows}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 300 GPU, 60 CPU)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--warmup-fast", type=int, default=None, help="the fast engine's (default 300 GPU)")
    parser.add_argument("--runs", nargs="+", default=[label for label, _, _ in RUNS], help="which engines")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per figure, median shown (3 CPU, 1 GPU)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--curve", action="store_true", help="the price of learning curves (see above)")
    parser.add_argument("--curve-epochs", type=int, default=3, help="--curve: epochs of each trial")
    parser.add_argument("--eval-ratio", type=int, default=9, help="--curve: train rows per eval row")
    args = parser.parse_args()
    if args.prepare_only:
        common.ensure_cache(common.study(args), args.out)
        print(f"cache ready under {args.out}")
        return
    gpu = args.device == "cuda"
    args.batch_sizes = args.batch_sizes or ([8, 16, 32, 64] if gpu else [16, 32])
    args.steps = args.steps or (300 if gpu else 60)
    args.warmup_fast = args.warmup_fast or (300 if gpu else args.warmup)
    args.repeat = args.repeat or (1 if gpu else 3)
    if args.curve:
        print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'} · torch {torch.__version__}")
        main_curve(args)
        return
    device_name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    model = args.model or ("base" if gpu else "tiny")
    print(f"device: {device_name} · torch {torch.__version__} · model {model}")
    rows: list[dict[str, Any]] = []
    chosen = [r for r in RUNS if r[0] in args.runs and not (r[0] == "trainer-bf16" and not gpu)]  # CPU: fp32
    for bs in args.batch_sizes:
        # the repeats of every engine interleaved: a load that comes and goes on the machine hits them alike
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in chosen}
        failed: dict[str, str] = {}
        for _ in range(args.repeat):
            for label, engine, precision in chosen:
                if label in failed:
                    continue
                try:
                    runs[label].append(measure(args, engine, precision, bs, label == "fast-torch-dropout"))
                except Exception as exc:  # one failing engine must not hide the others' figures
                    failed[label] = repr(exc)[:300]
        for label, engine, precision in chosen:
            if label in failed:
                row: dict[str, Any] = {"engine": engine, "precision": precision, "batch_size": bs}
                row["error"] = failed[label]
            else:
                done = runs[label]
                row = sorted(done, key=lambda r: r["samples_per_s"])[len(done) // 2]  # the median run
                row["all_samples_per_s"] = [round(r["samples_per_s"], 1) for r in done]
                row["samples_per_cpu_s"] = sorted(r["samples_per_cpu_s"] for r in done)[len(done) // 2]
            row["label"] = label
            rows.append(row)
            shown = row.get("error", "")
            if "samples_per_s" in row:
                shown = (
                    f"{row['samples_per_s']:8.0f} samples/s (runs: {row['all_samples_per_s']}), "
                    f"{row['samples_per_cpu_s']:.0f} per CPU-second"
                )
            print(f"bs {bs:3d}  {label:18s} {shown}", flush=True)
        own, shared = (
            next((r for r in rows if r["batch_size"] == bs and r["label"] == x), {})
            for x in ("fast", "fast-torch-dropout")
        )
        if own.get("samples_per_cpu_s") and shared.get("samples_per_cpu_s"):
            cost = 1 - own["samples_per_cpu_s"] / shared["samples_per_cpu_s"]
            print(f"bs {bs:3d}  the trial's own dropout costs {cost:+.1%} of the fast engine's samples/CPU-s")
    print("\nratios to the Trainer (same batch size):")
    for bs in args.batch_sizes:
        at = {r["label"]: r.get("samples_per_s") for r in rows if r["batch_size"] == bs}
        for base in ("trainer-fp32", "trainer-bf16"):
            if not at.get(base):
                continue
            parts = [f"{label} {at[label] / at[base]:.2f}×" for label in ("plain", "fast") if at.get(label)]
            print(f"bs {bs:3d}  vs {base:14s} " + ", ".join(parts))
    if args.json:
        args.json.write_text(
            json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
