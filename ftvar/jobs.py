"""What runs on a compute node: a resumable trial task, a group of trials, and the report job.

submitit pickles these callables on the login node and calls them in the task. The training code is imported
lazily, inside the call, so that the login node never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit
from rich.console import Console

from ftvar.config import Study
from ftvar.trial import StudyPaths, Trial


def job_main(study: Study, trials: list[Trial], paths: StudyPaths) -> dict[str, str]:
    """A local job: each trial in turn; one trial's crash does not stop the others."""
    from ftvar.train.runner import log_to_stderr, run_trial  # lazily: torch is imported inside the job

    log_to_stderr()
    statuses = {}
    for trial in trials:
        record = run_trial(study, trial, paths)
        statuses[trial.trial_id] = str(record["status"])
    return statuses


class TrialTask(submitit.helpers.Checkpointable):
    """One SLURM array task: a resumable trial. submitit calls `checkpoint()` before a time limit."""

    def __init__(self) -> None:
        self.resumable: Any = None  # set by the running task: where and what to save

    def __call__(self, study: Study, trial: Trial, paths: StudyPaths) -> str:
        from ftvar.train.runner import run_task

        return run_task(self, study, trial, paths)

    def checkpoint(self, study: Study, trial: Trial, paths: StudyPaths) -> submitit.helpers.DelayedSubmission:
        if self.resumable is not None:
            self.resumable.save()
        return submitit.helpers.DelayedSubmission(TrialTask(), study, trial, paths)


def report_main(study: Study, out: Path) -> str:
    """The dependent job of `launch --report-after`: collect and report once the arrays have finished."""
    from ftvar.report import build_report

    result = build_report(study, out, console=Console())
    return str(result.html)
