"""What runs on a compute node: a pack of resumable trials (a SLURM task or a local job), and the report job.

submitit pickles these callables on the login node and calls them in the task. The training code is imported
lazily, inside the call, so that the login node never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit
from rich.console import Console

from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.trial import Trial


def job_main(
    study: Study, trials: list[Trial], paths: StudyPaths, lanes: int | None = None, stack: bool = False
) -> dict[str, str]:
    """A local job: a pack of trials (`lanes` at a time, or stacks of up to `lanes` with `stack`); one
    trial's crash does not stop the others."""
    from ftvar.train.pack import run_pack  # lazily: torch is only imported inside the job

    return run_pack(None, study, trials, paths, lanes, stack)


class PackTask(submitit.helpers.Checkpointable):
    """One SLURM array task: a pack of resumable trials (one, unless --trials-per-task says more).
    submitit calls `checkpoint()` before the time limit: every running trial saves its state and the task is
    requeued with the same trials (the finished ones are skipped then)."""

    def __init__(self) -> None:
        self.pack: Any = None  # set by the running task: what to save

    def __call__(
        self, study: Study, trials: list[Trial], paths: StudyPaths, lanes: int = 1, stack: bool = False
    ) -> dict[str, str]:
        from ftvar.train.pack import run_pack

        return run_pack(self, study, trials, paths, lanes, stack)

    def checkpoint(
        self, study: Study, trials: list[Trial], paths: StudyPaths, lanes: int = 1, stack: bool = False
    ) -> submitit.helpers.DelayedSubmission:
        if self.pack is not None:
            self.pack.save_all()
        return submitit.helpers.DelayedSubmission(PackTask(), study, trials, paths, lanes, stack)


def report_main(study: Study, out: Path) -> str:
    """The dependent job of `launch --report-after`: collect and report once the arrays have finished."""
    from ftvar.report.build import build_report

    result = build_report(study, out, console=Console())
    return str(result.html)
