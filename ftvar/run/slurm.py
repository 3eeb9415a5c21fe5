"""The SLURM executor: job arrays through submitit (options, containers, submission).

One array task per trial. Trials with an `ok` record are skipped, trials still pending or running in an
earlier array (from `launches.jsonl`, checked with sacct) are not submitted twice, and arrays larger than the
cluster's MaxArraySize are split. Before anything is written, the options are checked: their values here,
the partition with `sinfo`, everything else with `sbatch --test-only`, and a container image with its engine.
Nothing here imports torch: the task imports `ftvar.train` when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from rich.console import Console

from ftvar.data.hub import hf_home
from ftvar.errors import FtvarError
from ftvar.run.jobs import PackTask, report_main
from ftvar.run.local import submission_files
from ftvar.run.sacct import active_trials
from ftvar.store.files import WriteFailed
from ftvar.store.launches import append_launch
from ftvar.store.paths import StudyPaths
from ftvar.store.redact import REDACTED, SECRET_NAME_RE
from ftvar.study.config import PACK_MODES, ClusterConfig, Study, is_local_path
from ftvar.study.trial import Trial

CONTAINER_ENGINES = ("apptainer", "docker", "podman")
# what a task inside docker/podman needs from the SLURM step (apptainer passes the environment through)
PASS_ENV = (
    "SUBMITIT_EXECUTOR",
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "SLURM_NNODES",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_STEP_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_CPUS_PER_TASK",
    "SLURM_JOB_NAME",
    "CUDA_VISIBLE_DEVICES",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "FTVAR_THREADS",
    "FTVAR_CONTAINER_IMAGE",
)
IMAGE_HF_HOME = "/cache/hf"  # HF_HOME inside ftvar's images (Dockerfile, apptainer.def)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLURM_ARG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# submitit's USR2 before the time limit: 5 % of the limit, at least 60 s (the step in flight plus a checkpoint
# of a GPU model and its optimizer on shared storage), at most 5 min (more only wastes compute); and always
# at most half the limit less slurmctld's 30 s signal resolution, so that a task trains at least half its time
SIGNAL_FRACTION, SIGNAL_FLOOR_S, SIGNAL_CEILING_S, SLURM_TIMER_S = 0.05, 60, 300, 30
# (CLI option, lowest value) for the integer options
MINIMA = {"time": 1, "gpus_per_task": 0, "cpus_per_task": 1, "array_parallelism": 1, "max_requeues": 0}
OPTION_NAMES = {"slurm_args": "slurm-arg", "env": "cluster.env"}


def signal_delay_s(time_min: int) -> int:
    """Seconds before the time limit at which SLURM sends SIGUSR2 (submitit's `signal_delay_s`).

    slurmctld checks time limits every 30 s and sends the signal at the first check within `delay + 30` s of
    the limit, so it arrives between `delay` and `delay + 30` s before the end. submitit's default 90 s came
    at once with a 1-minute limit; this never comes before half the limit."""
    limit = time_min * 60
    delay = min(max(SIGNAL_FRACTION * limit, SIGNAL_FLOOR_S), SIGNAL_CEILING_S)
    return int(max(1, min(delay, limit / 2 - SLURM_TIMER_S)))


def option_name(key: str) -> str:
    return f"--{OPTION_NAMES.get(key, key).replace('_', '-')}"


def merge_options(cluster: ClusterConfig, cli: dict[str, Any]) -> ClusterConfig:
    """The study's [cluster] table with the CLI's options on top (None = not given on the CLI), validated:
    every value that reaches the sbatch script or a container command line is checked here."""
    given = {k: v for k, v in cli.items() if v is not None and v != {} and v != []}
    if "slurm_args" in given:
        given["slurm_args"] = {**cluster.slurm_args, **given["slurm_args"]}
    merged = dataclasses.replace(cluster, **given)
    for key, low in MINIMA.items():
        value = getattr(merged, key)
        if value is not None and value < low:
            raise FtvarError(f"{option_name(key)} must be ≥ {low}, got {value}")
    for key in ("partition", "account", "qos", "mem", "constraint", "container"):
        value = getattr(merged, key)
        if value is not None and (not value.strip() or CONTROL_RE.search(value)):
            raise FtvarError(
                f"{option_name(key)} {value!r} must be a non-empty value without control characters"
            )
    if merged.pack not in PACK_MODES:
        raise FtvarError(f"--pack {merged.pack!r} is not valid; choose one of: {', '.join(PACK_MODES)}")
    for name, value in merged.slurm_args.items():
        if not SLURM_ARG_RE.match(name) or CONTROL_RE.search(value):
            raise FtvarError(
                f"--slurm-arg {name}={value!r}: the key must be an sbatch option name and the value must "
                "not hold control characters (newlines would add lines to the sbatch script)"
            )
    for name, value in merged.env.items():
        if not ENV_NAME_RE.match(name):
            raise FtvarError(
                f"cluster.env: {name!r} is not an environment variable name (letters, digits and '_', "
                "not starting with a digit)"
            )
        if CONTROL_RE.search(value):
            raise FtvarError(f"cluster.env.{name}: the value must not hold control characters")
    secrets = [k for k in merged.env if SECRET_NAME_RE.search(k)]
    if secrets:
        raise FtvarError(
            f"cluster.env must not hold secrets ({', '.join(secrets)}): it is written into the sbatch "
            "script; trials run offline and need no token"
        )
    if merged.container:
        engine, _, image = merged.container.partition(":")
        if engine not in CONTAINER_ENGINES or not image.strip():
            raise FtvarError(
                f"--container {merged.container!r}: use apptainer:PATH.sif, docker:IMAGE or podman:IMAGE"
            )
    return merged


def parse_slurm_args(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FtvarError(f"--slurm-arg {item!r} must look like key=value, e.g. --slurm-arg exclude=node3")
        out[key.strip().lstrip("-").replace("-", "_")] = value
    return out


def check_container(c: ClusterConfig) -> None:
    """The image must exist here: a SIF file for apptainer (a URI such as docker://… is left to apptainer),
    an image the local engine has for docker and podman (when that engine is installed on this node)."""
    if not c.container:
        return
    engine, image = c.container.split(":", 1)
    if engine == "apptainer":
        if "://" not in image and not Path(image).expanduser().is_file():
            raise FtvarError(
                f"--container {c.container}: there is no SIF file {image} (build it with `apptainer build "
                f"{image} apptainer.def`, on storage the compute nodes can read)"
            )
        return
    if shutil.which(engine) is None:
        return  # e.g. a login node without the engine: the compute nodes' engine is the judge
    cmd = [engine, "image", "exists", image] if engine == "podman" else [engine, "image", "inspect", image]
    try:
        found = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FtvarError(f"--container {c.container}: `{' '.join(cmd)}` failed ({exc})") from None
    if not found:
        raise FtvarError(
            f"--container {c.container}: {engine} has no image {image!r} here (`{engine} images` lists "
            f"them; build or pull it first)"
        )


def partitions() -> list[str] | None:
    """The cluster's partitions (`sinfo`), or None when sinfo is not available."""
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})
        if not proc.returncode
        else None
    )


def check_cluster(c: ClusterConfig, study: Study, paths: StudyPaths, n_tasks: int) -> None:
    """Ask SLURM, before anything is written or submitted: the partition must exist (`sinfo`), and sbatch
    must accept the whole array as it will be submitted (`sbatch --test-only`: account, QOS, time, memory,
    GPUs, constraints, any --slurm-arg). Any refusal becomes one FtvarError line."""
    known = partitions()
    if c.partition and known is not None and c.partition not in known:
        raise FtvarError(
            f"--partition {c.partition}: no such partition on this cluster; partitions: "
            f"{', '.join(known) or 'none'} (see `sinfo -s`)"
        )
    script = dry_run_script(c, study, paths, max(1, min(n_tasks, max_array_size())))  # as arrays are split
    try:
        proc = subprocess.run(
            ["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FtvarError(f"sbatch --test-only failed: {exc}; is the SLURM controller up (`sinfo`)?") from None
    if proc.returncode:
        message = _sbatch_error(proc.stderr or proc.stdout)
        if controller_down(message):
            raise FtvarError(controller_message("sbatch --test-only", message))
        raise FtvarError(f"sbatch refuses these options: {message}")


CONTROLLER_DOWN = re.compile(
    r"unable to contact slurm controller|slurm_receive_msg|socket timed out|connection refused|"
    r"zero bytes were transmitted|slurmctld.*not responding",
    re.IGNORECASE,
)


def controller_down(message: str) -> bool:
    """Whether an sbatch error says the controller did not answer (not that it refused the job)."""
    return bool(CONTROLLER_DOWN.search(message))


def controller_message(what: str, message: str) -> str:
    return (
        f"the SLURM controller does not answer ({what}: {message}); nothing was submitted. Is slurmctld "
        "up (`scontrol ping`, `sinfo`)? Launch again once it is"
    )


def _sbatch_error(text: str) -> str:
    """sbatch's complaint in one line ("sbatch: error: Batch job submission failed: …")."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    return " · ".join(dict.fromkeys(ln.removeprefix("sbatch: error: ") for ln in errors)) or "no message"


def container_python(c: ClusterConfig, study: Study, paths: StudyPaths) -> str:
    """The `python` submitit runs each task with: the host's, or the image's through its engine."""
    if not c.container:
        return shlex.quote(sys.executable)
    engine, image = c.container.split(":", 1)
    # the output root at its own path (records, logs, the data cache); the HF cache at the image's HF_HOME
    binds = [f"{paths.root.parent}:{paths.root.parent}"]
    if Path(hf_home()).is_dir():
        binds.append(f"{hf_home()}:{IMAGE_HF_HOME}")
    if study.model.tiny is None and is_local_path(study.model.name_or_path):
        binds.append(f"{study.model.name_or_path}:{study.model.name_or_path}")
    if engine == "apptainer":
        nv = " --nv" if c.gpus_per_task else ""
        bind = f"--bind {shlex.quote(','.join(binds))} --env HF_HOME={IMAGE_HF_HOME}"
        return f"apptainer exec{nv} {bind} {shlex.quote(image)} python3"
    gpu_flag = {"docker": " --gpus all", "podman": " --device nvidia.com/gpu=all"}[engine]
    gpus = gpu_flag if c.gpus_per_task else ""
    # records and logs belong to the submitting user, not to the image's user
    user = ' --user "$(id -u):$(id -g)"'
    if engine == "podman":
        user += ' $([ "$(id -u)" = 0 ] || echo --userns=keep-id)'
    mounts = "".join(f" -v {shlex.quote(b)}" for b in binds)
    # the image's own HF_HOME, where the host cache is mounted (never the login node's path)
    env = f" -e HF_HOME={IMAGE_HF_HOME}" + "".join(f" -e {name}" for name in (*PASS_ENV, *c.env))
    # python is PID 1 and handles SIGTERM/SIGUSR2 itself (checkpoints), so no init process is needed
    run = f"{engine} run --rm --network none{gpus}{user}{mounts}{env}"
    return f"{run} --entrypoint python3 {shlex.quote(image)}"


def setup_lines(c: ClusterConfig) -> list[str]:
    """Exported in every task before python starts (the HF token is never written here)."""
    env = {
        "HF_HOME": hf_home(),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **c.env,
    }
    if c.container:
        env["FTVAR_CONTAINER_IMAGE"] = c.container
    return [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]


def executor_parameters(c: ClusterConfig, study: Study) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": f"ftvar-{study.name}",
        "partition": c.partition,
        "account": c.account,
        "qos": c.qos,
        "time": c.time,
        "ntasks_per_node": 1,
        "cpus_per_task": c.cpus_per_task,
        "mem": c.mem,
        "constraint": c.constraint,
        "array_parallelism": c.array_parallelism,
        "signal_delay_s": signal_delay_s(c.time),
        "setup": setup_lines(c),
    }
    if c.gpus_per_task:
        params["gpus_per_task"] = c.gpus_per_task
    additional = dict(c.slurm_args)
    return {k: v for k, v in params.items() if v is not None} | (
        {"additional_parameters": additional} if additional else {}
    )


def make_executor(c: ClusterConfig, study: Study, paths: StudyPaths) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(
        folder=str(paths.submitit / "%j"),
        python=container_python(c, study, paths),
        max_num_timeout=c.max_requeues,
    )
    try:
        executor.update_parameters(**executor_parameters(c, study))
    except ValueError as exc:  # submitit lists the valid parameter names
        raise FtvarError(f"invalid SLURM option: {exc}") from None
    return executor


def dry_run_script(
    c: ClusterConfig, study: Study, paths: StudyPaths, n_tasks: int, after: str | None = None
) -> str:
    """The sbatch script submitit would submit for an array of n tasks (nothing is submitted); `after`: the
    job it would depend on (afterany)."""
    from submitit.slurm.slurm import _make_sbatch_string

    executor = submitit.SlurmExecutor(
        folder=str(paths.submitit / "%j"), python=container_python(c, study, paths)
    )
    executor.update_parameters(**executor_parameters(c, study))
    params = dict(executor.parameters)
    if after is not None:
        params["additional_parameters"] = chained(params.get("additional_parameters", {}), after)
    if n_tasks > 1:
        params["map_count"] = n_tasks
    return str(_make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **params))


def dry_run(c: ClusterConfig, study: Study, paths: StudyPaths, n_tasks: int, limit: int) -> str:
    """`launch --dry-run`: the sbatch script of each array the launch would submit (one per `limit` tasks,
    MaxArraySize), each under a line that says which it is; with --array-parallelism every array after the
    first waits for the one before (see `submit_arrays`)."""
    sizes = [min(limit, n_tasks - start) for start in range(0, n_tasks, limit)] or [0]
    if len(sizes) == 1:
        return dry_run_script(c, study, paths, sizes[0])
    parts = []
    for i, size in enumerate(sizes):
        after = f"JOBID_OF_ARRAY_{i}" if i and c.array_parallelism else None  # known once submitted
        waits = (
            f", after array {i} ends (--array-parallelism {c.array_parallelism} for the launch)"
            if after
            else ""
        )
        parts.append(
            f"# ---- array {i + 1} of {len(sizes)}: {size} task(s) (MaxArraySize {limit}){waits} ----\n"
            + dry_run_script(c, study, paths, size, after)
        )
    return "\n".join(parts)


def chained(additional: dict[str, Any], after: str) -> dict[str, Any]:
    """sbatch's additional parameters with `--dependency=afterany:<after>` added (and to a user's own
    dependency: "," is AND)."""
    own = additional.get("dependency")
    return {**additional, "dependency": f"{own},afterany:{after}" if own else f"afterany:{after}"}


def max_array_size() -> int:
    """Tasks one array may hold: MaxArraySize from `scontrol show config` (indices run up to it minus one)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1001
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return max(1, int(match.group(1))) if match else 1001


def chunks(items: Sequence[Trial], size: int) -> list[list[Trial]]:
    """Consecutive groups of `size` trials (the last one may be smaller)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def task_study(study: Study) -> Study:
    """The study as tasks get it (pickled into the submitit folder): `[cluster.env]` values, which the sbatch
    script exports, are left out; the study hash is kept as computed here."""
    if not study.cluster.env:
        return study
    cluster = dataclasses.replace(study.cluster, env=dict.fromkeys(study.cluster.env, REDACTED))
    out = dataclasses.replace(study, cluster=cluster)
    out.__dict__["hash"] = study.hash  # the cached_property's slot: the same hash, not recomputed on the node
    return out


@contextlib.contextmanager
def sbatch_errors(paths: StudyPaths, what: str) -> Iterator[None]:
    """submitit's sbatch failure (FailedJobError, which also prints sbatch's stderr) as one FtvarError line,
    and a file system's refusal to take the submission's files as one line naming the cause; the files of
    the failed submission are removed (`submission_files`)."""
    captured = io.StringIO()
    with submission_files(paths, what):
        try:
            with contextlib.redirect_stderr(captured):
                yield
        except submitit.core.utils.FailedJobError as exc:
            message = _sbatch_error(str(exc) or captured.getvalue())
            if controller_down(message):
                raise FtvarError(controller_message(f"sbatch of {what}", message)) from None
            raise FtvarError(f"sbatch failed to submit {what}: {message}") from None


def submit_arrays(
    executor: submitit.SlurmExecutor,
    study: Study,
    paths: StudyPaths,
    trials: Sequence[Trial],
    limit: int,
    per_task: int = 1,
    stack: bool = False,
    chain: bool = False,
) -> list[tuple[str, list[Trial]]]:
    """Submit the trials as arrays of at most `limit` tasks, `per_task` trials packed into each task (trained
    as stacks with `stack`), each array recorded in `launches.jsonl` as soon as it is submitted. With
    `chain` (--array-parallelism N), every array after the first depends on the one before (afterany), so
    that N tasks at most run at once for the whole launch, not N per array. Returns (array job id, its
    trials in task order) per array."""
    packs = chunks(trials, max(1, per_task))
    arrays: list[tuple[str, list[Trial]]] = []
    sent = task_study(study)
    own = dict(executor.parameters.get("additional_parameters", {}))
    for start in range(0, len(packs), limit):
        group = packs[start : start + limit]
        members = [t for pack in group for t in pack]
        if chain and arrays:  # --array-parallelism holds for the launch: one array runs after the other
            executor.update_parameters(additional_parameters=chained(own, arrays[-1][0]))
        with sbatch_errors(paths, f"an array of {len(group)} task(s)"), executor.batch():
            jobs = [executor.submit(PackTask(), sent, pack, paths, per_task, stack) for pack in group]
        array_id = str(jobs[0].job_id).split("_")[0]
        entry: dict[str, Any] = {
            "executor": "slurm",
            "array_id": array_id,
            "trials": [t.trial_id for t in members],
        }
        if per_task > 1:
            entry["trials_per_task"] = per_task
        try:
            append_launch(paths, study.hash, entry)
        except WriteFailed as exc:  # an array the ledger does not hold could not be followed: cancel it
            subprocess.run(["scancel", array_id], capture_output=True, timeout=60, check=False)
            raise FtvarError(
                f"{exc}; array {array_id} was cancelled, since the launch could not record it"
            ) from None
        arrays.append((array_id, members))
    return arrays


def submit_report(c: ClusterConfig, study: Study, paths: StudyPaths, array_ids: Sequence[str]) -> str:
    """A small CPU job that collects and reports once every array has finished (afterany)."""
    executor = submitit.SlurmExecutor(
        folder=str(paths.submitit / "%j"),
        python=container_python(dataclasses.replace(c, gpus_per_task=0), study, paths),
    )
    params = executor_parameters(dataclasses.replace(c, gpus_per_task=0, cpus_per_task=1), study)
    params.update(
        job_name=f"ftvar-{study.name}-report",
        time=30,
        additional_parameters={
            **params.get("additional_parameters", {}),
            "dependency": "afterany:" + ":".join(array_ids),
        },
    )
    executor.update_parameters(**params)
    with sbatch_errors(paths, "the report job"):
        job = executor.submit(report_main, task_study(study), paths.root.parent)
    return str(job.job_id)


def run_slurm(
    study: Study,
    paths: StudyPaths,
    todo: list[Trial],
    cluster: ClusterConfig,
    report_after: bool,
    console: Console,
) -> list[str]:
    """Submit the trials that are not already pending or running as arrays; returns the array job ids."""
    active = active_trials(paths)
    submit = [t for t in todo if t.trial_id not in active]
    if active:
        console.print(
            f"{len(todo) - len(submit)} trial(s) still pending or running in earlier arrays: not resubmitted"
        )
    if not submit:
        return []
    executor = make_executor(cluster, study, paths)
    per_task = cluster.trials_per_task or 1
    stack = cluster.pack == "stack" and per_task > 1
    chain = cluster.array_parallelism is not None
    arrays = submit_arrays(executor, study, paths, submit, max_array_size(), per_task, stack, chain)
    for i, (array_id, group) in enumerate(arrays):
        n_tasks = -(-len(group) // per_task)
        packed = f" ({per_task} trials per task{', stacked' if stack else ''})" if per_task > 1 else ""
        after = f", after array {arrays[i - 1][0]}" if chain and i else ""
        console.print(f"submitted array job {array_id}: {n_tasks} task(s){packed}{after}")
    if report_after:
        job_id = submit_report(cluster, study, paths, [a for a, _ in arrays])
        console.print(f"submitted report job {job_id} (runs after arrays {', '.join(a for a, _ in arrays)})")
    return [a for a, _ in arrays]
