"""Benchmark: collect N records and run every fit; prints wall time and peak RSS (not a test).

    python bench/bench_collect.py               # 100,000 records (the issue's target: ≤ 10 s, ≤ 2 GB)
    python bench/bench_collect.py --records 20000 --workers 1
    python bench/bench_collect.py --pss         # and the memory of all processes together (slower)

Records are generated into a temporary folder first (not timed); the measured part then runs in a fresh
Python process so that its peak RSS is the collector's own. Files just written sit in the page cache, so
this measures a warm cache (a cold network file system is slower: that is I/O, not ftvar).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ftvar.store.paths import StudyPaths
from ftvar.store.schema import SCHEMA_VERSION
from ftvar.study.config import Grid, Study
from ftvar.study.trial import expand

LR = [1e-5, 2e-5, 5e-5, 1e-4]
BS = [8, 16, 32, 64]
EPOCHS = [1, 2, 3]


def bench_study(n_records: int) -> Study:
    seeds = max(1, math.ceil(n_records / (len(LR) * len(BS) * len(EPOCHS))))
    grid = Grid.of({"learning_rate": LR, "batch_size": BS, "epochs": EPOCHS, "seed": list(range(seeds))})
    return Study(name="bench", grid=grid)


def _record(study: Study, tid: str, params: dict[str, float | int | None], acc: float) -> dict[str, object]:
    return {
        "schema_version": SCHEMA_VERSION,
        "study": {"name": study.name, "hash": study.hash, "source": "bench"},
        "trial_id": tid,
        "kind": "baseline" if tid.startswith("baseline") else "trial",
        "params": params,
        "status": "ok",
        "error": None,
        "metrics": {"accuracy": acc, "f1": acc - 0.01, "eval_loss": 1 - acc, "train_loss": 0.3},
        "n_train": 67349,
        "n_eval": 872,
        "label_names": ["negative", "positive"],
        "steps": 1000,
        "timings": {"load": 3.1, "train": 301.2, "eval": 2.2, "total": 306.5},
        "throughput": {"train_samples_per_s": 223.6, "train_tokens_per_s": 28612.0},
        "resume": {"requeues": 0, "resumed_from_step": None},
        "environment": {
            "host": "gpu-node-017",
            "device": "cuda:0 NVIDIA H100",
            "torch": "2.3.1",
            "transformers": "4.41.2",
            "ftvar": "0.1.0",
            "python": "3.11.9",
            "slurm_job_id": "123",
            "slurm_array_job_id": "120",
            "slurm_array_task_id": "3",
            "container_image": None,
        },
        "started_at": "2024-05-01T11:55:00.000+00:00",
        "finished_at": "2024-05-01T12:00:00.000+00:00",
    }


def generate(out: Path, n_records: int) -> int:
    study = bench_study(n_records)
    records = StudyPaths.of(out, study.name).records
    records.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 0
    for t in expand(
        study
    ):  # the baselines (one per init seed: the default model's head is not known), then trials
        if n >= n_records:
            break
        if t.is_baseline:
            acc = 0.5
        else:
            assert t.learning_rate is not None and t.batch_size is not None
            x = math.log10(t.learning_rate) + 4.5
            acc = (
                0.85
                + 0.02 * x
                - 0.03 * x * x
                - 0.004 * (math.log2(t.batch_size) - 4)
                + float(rng.normal(0, 0.01))
            )
        rec = _record(study, t.trial_id, t.params(), acc)
        (records / f"{t.trial_id}.json").write_text(json.dumps(rec, indent=1) + "\n")
        n += 1
    return n


class PssSampler(threading.Thread):
    """The largest total proportional set size (shared pages split between the processes that share them) of
    this process and its children, sampled every 50 ms from /proc (Linux); 0 where /proc has no Pss."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak_kb = max(self.peak_kb, sum(map(_pss_kb, _family(os.getpid()))))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak_kb // 1024


def _family(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [p for child in task.read_text().split() for p in _family(int(child))]
        except OSError:
            continue
    return out


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


def measure(out: Path, n_records: int, workers: int | None, pss: bool) -> None:
    sampler = PssSampler()
    if pss:
        sampler.start()
    t0 = time.perf_counter()
    from ftvar.stats.analysis import analyze, collect

    t1 = time.perf_counter()
    study = bench_study(n_records)
    result = collect(study, out, workers=workers)
    t2 = time.perf_counter()
    analysis = analyze(study, result.table)
    t3 = time.perf_counter()
    pss_mb = sampler.stop() if pss else None
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    self_mb, child_mb = me.ru_maxrss / 1024, kids.ru_maxrss / 1024
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    fitted = sum(f.ok for f in analysis.fits)
    print(f"records: {result.n_files} files, {result.n_trials} trials, {len(result.skipped)} skipped")
    print(
        f"imports: {t1 - t0:.2f} s   collect (read+validate+tables): {t2 - t1:.2f} s   "
        f"fits ({fitted} of {len(analysis.fits)} fitted): {t3 - t2:.2f} s"
    )
    print(f"collect + fits: {t3 - t1:.2f} s   (with imports: {t3 - t0:.2f} s)   target ≤ 10 s")
    print(
        f"CPU time (all processes, imports included): {cpu:.2f} s   "
        f"(wall > CPU/cores means other load on the machine)"
    )
    print(f"peak RSS: main process {self_mb:.0f} MB, largest worker {child_mb:.0f} MB   target ≤ 2048 MB")
    if pss_mb is not None:  # RSS counts the pages forked workers share with the main process in each of them
        print(f"all processes together (proportional set size, sampled every 50 ms): peak {pss_mb} MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None, help="reader processes (default: CPU count)")
    parser.add_argument(
        "--pss",
        action="store_true",
        help="also sample the memory of all processes together (Linux; the sampling slows the run by ~1 s)",
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.records, args.workers, args.pss)
        return
    with tempfile.TemporaryDirectory(prefix="ftvar-bench-") as tmp:
        t0 = time.perf_counter()
        n = generate(Path(tmp), args.records)
        print(f"generated {n} records in {time.perf_counter() - t0:.1f} s (not timed below)")
        cmd = [sys.executable, __file__, "--measure", tmp, "--records", str(args.records)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        if args.pss:
            cmd.append("--pss")
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
