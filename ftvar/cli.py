"""The `ftvar` command line: a thin layer over the library, with no logic of its own.

Every user-facing error (FtvarError) becomes one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ftvar import __version__
from ftvar.errors import FtvarError
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import find_trial

app = typer.Typer(
    help="ftvar: fine-tuning variability studies. Plan a hyperparameter grid, run it (locally or as a SLURM "
    "job array), collect the JSON records and fit the regressions.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

StudyArg = Annotated[
    str, typer.Argument(help="A study TOML file, or a built-in study: smoke, paper, rte, mrpc, cola.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a study key in dotted TOML form, e.g. --set grid.seed=[0,1]. Repeatable.",
    ),
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Output root; the study's files go to OUT/<name>/.")
]
DEFAULT_OUT = Path("outputs")


def handle_errors(func: F) -> F:
    """Turn FtvarError into `ftvar: error: …` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FtvarError as exc:
            message = " ".join(str(exc).split())
            print(f"ftvar: error: {message}", file=sys.stderr)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except OSError as exc:  # the file system refused something no check foresaw: its path and cause
            from ftvar.store.files import cause

            where = f"{exc.filename}: " if exc.filename else ""
            print(f"ftvar: error: {where}{cause(exc)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("ftvar: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        print(f"ftvar {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """ftvar: fine-tuning variability studies on GPU clusters."""
    if ctx.invoked_subcommand != "prefetch":
        # only `prefetch` downloads; everything else (and every trial) works from the local HF cache
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load(study: str, overrides: list[str] | None) -> Study:
    return load_study(study, overrides or [])


@app.command()
@handle_errors
def plan(
    study: StudyArg,
    set_: SetOpt = None,
    out: OutOpt = DEFAULT_OUT,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show a study's trials and which of them already have records.

    Example: `ftvar plan smoke --set grid.seed=[0,1,2]`
    """
    from ftvar.run.trial_tables import plan_json, plan_table

    s = _load(study, set_)
    paths = StudyPaths.of(out, s.name)
    if as_json:
        print(json.dumps(plan_json(s, paths), indent=1))
    else:
        console.print(plan_table(s, paths))


@app.command("run-trial")
@handle_errors
def run_trial_cmd(
    study: StudyArg,
    trial: Annotated[str, typer.Option("--trial", "-t", help="Trial id (see plan).")],
    set_: SetOpt = None,
    out: OutOpt = DEFAULT_OUT,
) -> None:
    """Run one trial here and write its record (tokenizes the data first if needed).

    Example: `ftvar run-trial smoke --trial baseline`
    """
    from ftvar.store.folder import check_no_mixing, check_out
    from ftvar.train.runner import run_trial, set_threads

    s = _load(study, set_)
    paths = StudyPaths.of(out, s.name)
    check_no_mixing(s, paths)
    t = find_trial(s, trial)
    check_out(out, paths.root)
    set_threads()
    record = run_trial(s, t, paths, prepare_if_missing=True)
    m = record["metrics"]
    console.print(
        f"{t.trial_id}: {record['status']} accuracy={m['accuracy']} f1={m['f1']} mcc={m.get('mcc')} "
        f"eval_loss={m['eval_loss']} → {paths.record(t.trial_id)}"
    )
    if record["status"] != "ok":
        console.print(f"[red]{record['error']}[/red]")
        raise typer.Exit(1)


SlurmOpt = typer.Option  # options of the slurm executor; each may also sit in the study's [cluster] table
SLURM = "SLURM (also in the study's [cluster] table; the CLI wins)"


@app.command()
@handle_errors
def launch(
    study: StudyArg,
    executor: Annotated[
        str,
        typer.Option(
            help="auto (slurm when sbatch is on PATH, else local) | local | debug (in this process) | slurm"
        ),
    ] = "auto",
    out: OutOpt = DEFAULT_OUT,
    max_parallel: Annotated[
        int | None,
        typer.Option(help="local: processes at once (default: one per GPU, else up to 4 CPU processes)."),
    ] = None,
    set_: SetOpt = None,
    partition: Annotated[str | None, SlurmOpt(help="SLURM partition.", rich_help_panel=SLURM)] = None,
    account: Annotated[str | None, SlurmOpt(help="SLURM account.", rich_help_panel=SLURM)] = None,
    qos: Annotated[str | None, SlurmOpt(help="SLURM QOS.", rich_help_panel=SLURM)] = None,
    time: Annotated[
        int | None,
        SlurmOpt(
            help="Minutes per task (default 60). SIGUSR2 comes 5 % of it before the end (1 to 5 min, at most "
            "half of it): the trial checkpoints and submitit requeues it.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    max_requeues: Annotated[
        int | None,
        SlurmOpt(
            help="Times a task that reaches its time limit is requeued from its checkpoint (default 3); then "
            "its record says so and the next launch resumes it.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    gpus_per_task: Annotated[
        int | None, SlurmOpt(help="GPUs per task (default 1).", rich_help_panel=SLURM)
    ] = None,
    cpus_per_task: Annotated[int | None, SlurmOpt(help="CPUs per task.", rich_help_panel=SLURM)] = None,
    mem: Annotated[str | None, SlurmOpt(help="Memory per task, e.g. 32G.", rich_help_panel=SLURM)] = None,
    constraint: Annotated[
        str | None, SlurmOpt(help="Node features, e.g. a100.", rich_help_panel=SLURM)
    ] = None,
    array_parallelism: Annotated[
        int | None, SlurmOpt(help="Tasks running at once (SLURM's %N).", rich_help_panel=SLURM)
    ] = None,
    trials_per_task: Annotated[
        int | None,
        SlurmOpt(
            min=1,
            help="Trials packed into one task and run at once on its GPU (also each local process's lanes); "
            "capped by free GPU memory. Default 1.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    pack: Annotated[
        str | None,
        SlurmOpt(
            help="How a task runs its trials: 'lanes' (threads, one trial each) or 'stack' (trials of one "
            "model, data, batch size and epochs trained as one batched model). Default lanes.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    container: Annotated[
        str | None,
        SlurmOpt(
            help="Run each task in an image: apptainer:PATH.sif, docker:IMAGE or podman:IMAGE.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    slurm_arg: Annotated[
        list[str] | None,
        SlurmOpt(
            metavar="KEY=VALUE",
            help="Any other sbatch option (submitit's slurm_additional_parameters). Repeatable.",
            rich_help_panel=SLURM,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        SlurmOpt(
            help="Print the sbatch script submitit would submit; submit nothing.", rich_help_panel=SLURM
        ),
    ] = False,
    report_after: Annotated[
        bool,
        typer.Option(
            help="Collect and report once every trial has finished: on SLURM a small CPU job that depends on "
            "the array (afterany); locally right after the run."
        ),
    ] = False,
) -> None:
    """Run every trial that has no `ok` record yet.

    Locally it waits and prints a table (exit code 0 when every trial is ok, 1 otherwise); on SLURM it submits
    one job array and returns at once. Examples: `ftvar launch smoke`,
    `ftvar launch study.toml --partition gpu --time 120 --container apptainer:ftvar.sif`.
    """
    from ftvar.run.launch import launch_study
    from ftvar.run.slurm import parse_slurm_args

    cluster = {
        "partition": partition,
        "account": account,
        "qos": qos,
        "time": time,
        "max_requeues": max_requeues,
        "gpus_per_task": gpus_per_task,
        "cpus_per_task": cpus_per_task,
        "mem": mem,
        "constraint": constraint,
        "array_parallelism": array_parallelism,
        "trials_per_task": trials_per_task,
        "pack": pack,
        "container": container,
        "slurm_args": parse_slurm_args(slurm_arg or []),
    }
    code = launch_study(
        _load(study, set_), out, executor, max_parallel, cluster, dry_run, report_after, console
    )
    if code:
        raise typer.Exit(code)


@app.command()
@handle_errors
def prefetch(study: StudyArg, set_: SetOpt = None) -> None:
    """Download the study's model, tokenizer and Hub dataset into the Hugging Face cache.

    Run it on a login node with internet access; trials never download. Example: `ftvar prefetch paper`
    """
    from ftvar.data.prepare import prefetch as do_prefetch

    s = _load(study, set_)
    try:
        fetched = do_prefetch(s)
    except OSError as exc:
        raise FtvarError(f"prefetch failed (is the Hugging Face Hub reachable from here?): {exc}") from None
    for item in fetched:
        console.print(f"cached {item}")
    if not fetched:
        console.print(f"{s.name} needs nothing from the Hub (local or synthetic data, trained tokenizer)")


@app.command()
@handle_errors
def status(
    study: StudyArg,
    set_: SetOpt = None,
    out: OutOpt = DEFAULT_OUT,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow the study until no trial is pending or running, then show the tables: a live "
            "progress bar on a terminal, one line per change otherwise.",
        ),
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch (≥ 0.5).")] = 10.0,
    lines: Annotated[int, typer.Option(help="Log lines shown per failed trial.")] = 8,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every failed trial in full (by default, past 10: counts by reason and the first 10).",
        ),
    ] = False,
) -> None:
    """Show each array's pending / running / ok / failed / diverged trials (records plus sacct).

    Failed trials come with the reason (a time limit says how often it was requeued), the step the next
    launch resumes from, and the last lines of their SLURM log.
    Exit code 0 when every trial is ok, 1 otherwise.
    Example: `ftvar status smoke --watch`
    """
    from ftvar.run import status as S

    if not interval >= 0.5:
        raise FtvarError(f"--interval must be ≥ 0.5 seconds, got {interval}")
    if lines < 0:
        raise FtvarError(f"--lines must be ≥ 0, got {lines}")
    s = _load(study, set_)
    paths = StudyPaths.of(out, s.name)
    states = S.watch(s, paths, console, interval) if watch else S.trial_states(s, paths)
    console.print(S.render(s, paths, states, lines, show_all))
    if any(st.state != "ok" for st in states):
        raise typer.Exit(1)


StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Any corrupt, foreign or wrong-study record file "
        "is an error (exit code 1) instead of a skipped file.",
    ),
]


@app.command()
@handle_errors
def collect(
    study: StudyArg, set_: SetOpt = None, out: OutOpt = DEFAULT_OUT, strict: StrictOpt = False
) -> None:
    """Gather the study's JSON records into results.parquet and results.csv (no torch needed).

    Keeps the newest ok record per trial; lists skipped files on stderr.
    Example: `ftvar collect smoke --strict`
    """
    from ftvar.stats.analysis import collect as do_collect

    s = _load(study, set_)
    result = do_collect(s, out, strict=strict)
    console.print(result.summary())
    for path, reason in result.skipped:
        err_console.print(f"skipped {path}: {reason}", highlight=False)
    for path, reason in result.not_in_grid:
        err_console.print(f"not in the grid {path}: {reason}", highlight=False)
    console.print(f"wrote {result.parquet} and {result.csv}")


@app.command()
@handle_errors
def report(
    study: StudyArg, set_: SetOpt = None, out: OutOpt = DEFAULT_OUT, strict: StrictOpt = False
) -> None:
    """Collect the records, analyse them (variance shares, seed-blocked fits, best configuration) and write
    OUT/<study>/report/.

    Writes report.json, report.md, a self-contained report.html and PNG plots. Example: `ftvar report smoke`
    """
    from ftvar.report.build import build_report

    s = _load(study, set_)
    build_report(s, out, console=console, strict=strict)


@app.command()
@handle_errors
def export(
    study: StudyArg,
    set_: SetOpt = None,
    out: OutOpt = DEFAULT_OUT,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Write one TensorBoard run per trial into DIR (HParams, final metrics, learning curves); "
            "needs ftvar[tensorboard].",
        ),
    ] = None,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Write one MLflow run per trial, by default into OUT/STUDY/mlflow.db; needs ftvar[mlflow].",
        ),
    ] = False,
    mlflow_uri: Annotated[
        str | None,
        typer.Option(metavar="URI", help="The MLflow tracking URI to write to (any; implies --mlflow)."),
    ] = None,
) -> None:
    """Export the study's records to TensorBoard and/or MLflow (records only, no torch: runs on a login node).

    A re-export updates each trial's run in place. Examples: `ftvar export smoke --tensorboard tb/`,
    `ftvar export paper --mlflow`, `ftvar export paper --mlflow-uri http://mlflow.example:5000`.
    """
    from ftvar.export.study import export_study

    result = export_study(_load(study, set_), out, tensorboard, mlflow, mlflow_uri)
    for path, reason in result.skipped:
        err_console.print(f"skipped {path}: {reason}", highlight=False)
    for line in result.lines:
        console.print(line, highlight=False, soft_wrap=True)


def main() -> None:
    app()
