"""Benchmark: a task's start-up — from the process start to its trial's first optimizer step.

    python bench/startup.py                      # CPU: the smoke study's first trial
    python bench/startup.py --device cuda        # GPU: the DistilBERT-base bench study (bench/common.py)

Each run starts a fresh Python process that does what a SLURM array task does (unpickling aside): import
ftvar's job code, load the study, and run a pack of one trial, which imports torch and the model class, reads
the tokenized cache, builds the model and trains. The record's `timings.startup` is the time from the
process' start to the first step; the script also prints when the imports were done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CHILD = """
import time, json, sys
from ftvar.train.runner import process_started  # noqa: E402  (torch comes in here)
t_torch = time.time() - process_started()
from ftvar.study.config import load_study
from ftvar.run.jobs import PackTask
from ftvar.store.paths import StudyPaths
from ftvar.study.trial import expand
study = load_study({study!r}, {overrides!r})
t_loaded = time.time() - process_started()
paths = StudyPaths.of({out!r}, study.name)
trial = [t for t in expand(study) if not t.is_baseline][0]
PackTask()(study, [trial], paths)
rec = json.loads(paths.record(trial.trial_id).read_text())
print(json.dumps({{"imports": t_torch, "study": t_loaded, "startup": rec["timings"].get("startup"),
                  "engine": rec["engine"]["name"]}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cuda":
            study = common.study(args)
            spec, overrides = study.source, ["grid.batch_size=[16]"]
            paths_out = str(args.out)
        else:
            spec, overrides, paths_out = "smoke", ["analysis.baseline=none"], tmp
            from ftvar.data.prepare import prepare
            from ftvar.store.paths import StudyPaths
            from ftvar.study.config import load_study

            smoke = load_study(spec, overrides)
            prepare(smoke, StudyPaths.of(tmp, smoke.name))
        print(f"device: {args.device}")
        for i in range(args.runs):
            for records in Path(paths_out).glob("*/records"):  # a fresh trial every run
                for f in records.glob("*.json"):
                    f.unlink()
            script = textwrap.dedent(CHILD).format(study=spec, overrides=overrides, out=paths_out)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"run {i + 1}: first step {figures['startup']:.1f} s after the process started "
                f"(torch and ftvar imported at {figures['imports']:.1f} s, study loaded at "
                f"{figures['study']:.1f} s; engine {figures['engine']})",
                flush=True,
            )


if __name__ == "__main__":
    main()
