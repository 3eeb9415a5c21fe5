"""Benchmark: a packed sweep (K trials at once in one task) against one trial at a time, and what it means
for the paper's 144-trial grid on one GPU.

    python bench/sweep.py                                   # CPU: tiny model, K = 1 and 2
    python bench/sweep.py --device cuda --lanes 1 8         # GPU: DistilBERT-base shape
    python bench/sweep.py --device cuda --json sweep.json
    python bench/sweep.py --device cuda --stack --lanes 1 4 12   # stacks: K trials as one batched model

For each batch size and each K, a pack of K trials (different seeds) runs in this process, each trial training
on --rows SST-2 rows and then evaluated on the validation split, as a real trial is; twice, for 1 and for 3
epochs, so that the wall time splits into a per-pack overhead (model build, graph capture, evaluation) and an
aggregate training rate. From those, the time of the paper's grid (4 learning
rates × 3 epoch counts × 3 seeds per batch size, 67,349 rows an epoch) is estimated for K trials per task on
one GPU, with the task start-up measured by bench/startup.py added per task (--startup). With --stack the K
trials of a pack train as one stack (ftvar.train.stack) instead of K lanes; a stack's members share their
epochs, so the paper's grid is then 3 stacks' worth of 12 trials (4 learning rates × 3 seeds) per batch size
and epoch count.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from ftvar.study.trial import expand
from ftvar.train.pack import run_pack

PAPER_ROWS = 67_349
PAPER_TRIALS_PER_BS = 4 * 3 * 3  # learning rates × epoch counts × seeds
PAPER_EPOCH_SUM = 4 * 3 * (1 + 2 + 3)  # epochs trained per batch size, summed over lr × seed × epochs


def run(args: argparse.Namespace, bs: int, lanes: int, epochs: int) -> dict[str, Any]:
    """A pack of `lanes` trials (seeds 0..lanes-1) of `epochs` epochs over --rows rows: its wall time."""
    study = common.study(
        args,
        "name=bench-sweep",
        f"grid.batch_size=[{bs}]",
        f"grid.epochs=[{epochs}]",
        f"grid.seed=[{','.join(str(s) for s in range(lanes))}]",
        f"data.train_limit={args.rows}",
        "train.eval_every=0",  # no curve: the 3-epoch run's evaluations would count as training time
    )
    paths = common.ensure_cache(study, args.out)
    if args.prepare_only:
        return {}
    for folder in (paths.records, paths.ckpt):  # every run starts from no records
        shutil.rmtree(folder, ignore_errors=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    statuses = run_pack(None, study, expand(study), paths, lanes, args.stack)
    wall = time.perf_counter() - t0
    bad = {k: v for k, v in statuses.items() if v != "ok"}
    return {
        "bs": bs,
        "lanes": lanes,
        "epochs": epochs,
        "wall": wall,
        "samples": lanes * epochs * args.rows,
        "not_ok": bad,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument(
        "--lanes", type=int, nargs="+", default=None, help="K values (default 1 and 8 on GPU)"
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="train rows per trial (default 4096 GPU, 320 CPU)"
    )
    parser.add_argument(
        "--startup", type=float, default=None, help="task start-up seconds (bench/startup.py)"
    )
    parser.add_argument("--stack", action="store_true", help="train each pack as one stack, not in lanes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.batch_sizes = args.batch_sizes or ([8, 16, 32, 64] if gpu else [16])
    args.lanes = args.lanes or ([1, 8] if gpu else [1, 2])
    args.rows = args.rows or (4096 if gpu else 320)
    if args.prepare_only:
        run(args, args.batch_sizes[0], args.lanes[0], 1)
        print(f"cache ready under {args.out}")
        return
    device_name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"device: {device_name}", flush=True)
    run(args, args.batch_sizes[-1], 1, 1)  # untimed: imports, the device's context, kernels' first use
    rows, fits = [], []
    for bs in args.batch_sizes:
        for k in args.lanes:
            short = run(args, bs, k, 1)
            long = run(args, bs, k, 3)
            rate = (long["samples"] - short["samples"]) / max(1e-9, long["wall"] - short["wall"])
            overhead = max(0.0, short["wall"] - short["samples"] / rate)
            rows += [short, long]
            fits.append({"bs": bs, "lanes": k, "rate": rate, "overhead_per_pack": overhead})
            bad = short["not_ok"] or long["not_ok"]
            print(
                f"bs {bs:3d} K {k:2d}: {short['wall']:6.1f} s (1 epoch) / {long['wall']:6.1f} s (3 epochs) → "
                f"{rate:8.0f} samples/s in all, {overhead:5.1f} s per pack"
                + (f"  NOT OK: {bad}" if bad else ""),
                flush=True,
            )
    if not gpu:
        print("(the paper's grid is estimated for a GPU only)")
        return
    startup = args.startup or 0.0
    print(f"\nthe paper's grid (144 trials + baseline), estimated on one {device_name}:")
    estimates = {}
    for k in args.lanes:
        total = 0.0
        for bs in args.batch_sizes:
            fit = next(f for f in fits if f["bs"] == bs and f["lanes"] == k)
            # lanes take any trials; a stack's members share their epoch count (12 trials per count)
            packs = (
                3 * math.ceil(PAPER_TRIALS_PER_BS / 3 / k)
                if args.stack
                else math.ceil(PAPER_TRIALS_PER_BS / k)
            )
            total += PAPER_ROWS * PAPER_EPOCH_SUM / fit["rate"] + packs * (fit["overhead_per_pack"] + startup)
        missing = {8, 16, 32, 64} - set(args.batch_sizes)
        note = f" (batch sizes {sorted(missing)} not measured: left out)" if missing else ""
        estimates[k] = total
        how = "stacked" if args.stack else "in lanes"
        print(f"K = {k:2d} trials per task ({how}): {total / 60:6.1f} min{note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device_name,
                    "stack": args.stack,
                    "runs": rows,
                    "fits": fits,
                    "paper_minutes": estimates,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
