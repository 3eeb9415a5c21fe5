"""Benchmark: the quick start's smoke study, launch plus report, in a fresh output folder (not a test).

    python bench/bench_smoke.py            # target: ≤ 60 s wall on a 2-core machine
    python bench/bench_smoke.py --runs 3
    python bench/bench_smoke.py --runs 2 --launch-args "--trials-per-task 2 --pack stack"

Runs `ftvar launch smoke --executor local --report-after` as a user would, and prints the wall time of each
run, the per-trial train times from the records, and the accuracy range across the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(out: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ftvar",
            "launch",
            "smoke",
            "--executor",
            "local",
            "--report-after",
            "--out",
            str(out),
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--launch-args", default="", help="more `ftvar launch` options, in one string")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}")
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            wall = run_once(Path(tmp), shlex.split(args.launch_args))
            records = [json.loads(p.read_text()) for p in (Path(tmp) / "smoke" / "records").glob("*.json")]
            trains = sorted(r["timings"]["train"] for r in records if r["kind"] == "trial")
            accs = [r["metrics"]["accuracy"] for r in records if r["kind"] == "trial"]
            assert (Path(tmp) / "smoke" / "report" / "report.html").is_file()
        print(
            f"run {i + 1}: launch + report {wall:.1f} s wall · {len(records)} records · train per trial "
            f"{trains[0]:.1f}–{trains[-1]:.1f} s · accuracy {min(accs):.3f}–{max(accs):.3f}"
        )


if __name__ == "__main__":
    main()
