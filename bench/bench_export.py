"""Benchmark: `ftvar export` of N records to TensorBoard and to MLflow (SQLite), then again (nothing changed);
prints wall and CPU times (not a test).

    python bench/bench_export.py                      # 10,000 records with 10-point curves (target: < 60 s)
    python bench/bench_export.py --records 2000 --curve-points 0 --skip-mlflow
    python bench/bench_export.py --records 1000 --mlflow-client   # MLflow through its client, run by run

Records come from bench_collect's generator (a 4 × 4 × 3 grid × seeds), each with a learning curve of
`--curve-points` points (train loss, accuracy, F1, MCC, eval loss), written into a temporary folder first
(not timed). Each export then runs in a fresh Python process, imports included, as `ftvar export` would.
New MLflow runs go into the SQLite store in bulk (ftvar/export/mlflow_bulk.py); `--mlflow-client` measures
the export through MLflow's client instead (create_run, log_batch, set_terminated per run), for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_collect import bench_study, generate  # this folder is the script's first sys.path entry

from ftvar.store.paths import StudyPaths


def add_curves(out: Path, n_records: int, points: int) -> None:
    """Give every trial record a learning curve of `points` points that ends at its final metrics."""
    records = StudyPaths.of(out, bench_study(n_records).name).records
    for path in records.glob("*.json"):
        rec = json.loads(path.read_bytes())
        if rec["kind"] != "trial" or points == 0:
            continue
        acc, steps = rec["metrics"]["accuracy"], rec["steps"]
        rec["curve"] = [
            {
                "step": steps * (i + 1) // points,
                "epoch": (i + 1) / points,
                "train_loss": 0.7 - 0.3 * (i + 1) / points,
                "accuracy": 0.5 + (acc - 0.5) * (i + 1) / points,
                "f1": 0.49 + (acc - 0.5) * (i + 1) / points,
                "mcc": (acc - 0.5) * (i + 1) / points,
                "eval_loss": 1 - (0.5 + (acc - 0.5) * (i + 1) / points),
            }
            for i in range(points)
        ]
        path.write_text(json.dumps(rec, indent=1) + "\n")


def measure(out: Path, n_records: int, target: str) -> None:
    """One export in this (fresh) process: imports, reading the records, writing."""
    t0 = time.perf_counter()
    from ftvar.export.study import export_study

    study = bench_study(n_records)
    t1 = time.perf_counter()
    if target == "tensorboard":
        line = export_study(study, out, out / "tb", mlflow=False).lines[0]
    elif target == "mlflow":
        line = export_study(study, out, None, mlflow=True).lines[0]
    else:  # the same export, every run through MLflow's client
        from ftvar.export import to_mlflow
        from ftvar.export.records import read_study_records

        tracking = to_mlflow.connect(to_mlflow.default_uri(StudyPaths.of(out, study.name).root), derived=True)
        line = to_mlflow.export_mlflow(read_study_records(study, out), tracking, bulk=False).summary()
    t2 = time.perf_counter()
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(f"  {line}")
    print(
        f"  {target}: {t2 - t1:.1f} s (with imports {t2 - t0:.1f} s), CPU {me.ru_utime + me.ru_stime:.1f} s, "
        f"peak RSS {me.ru_maxrss / 1024:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--curve-points", type=int, default=10)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--mlflow-client", action="store_true", help="MLflow through its client (no bulk)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.records, args.target)
        return
    with tempfile.TemporaryDirectory(prefix="ftvar-bench-export-") as tmp:
        t0 = time.perf_counter()
        n = generate(Path(tmp), args.records)
        add_curves(Path(tmp), args.records, args.curve_points)
        print(f"generated {n} records ({args.curve_points}-point curves) in {time.perf_counter() - t0:.1f} s")
        mlflow = "mlflow-client" if args.mlflow_client else "mlflow"
        targets = ["tensorboard"] + ([] if args.skip_mlflow else [mlflow])
        for label in ("first export", "again, nothing changed"):
            print(label)
            for target in targets:
                cmd = [sys.executable, __file__, "--measure", tmp, "--records", str(args.records)]
                subprocess.run([*cmd, "--target", target], check=True)


if __name__ == "__main__":
    main()
