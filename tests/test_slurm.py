"""SLURM job arrays against the real single-node cluster (slurm/dev-cluster.sh starts it; CI runs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ftvar.run.sacct import expand_job_ids, sacct_states
from ftvar.store import record
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests.helpers import ftvar

SMALL = [
    "data.synthetic.train=200",
    "data.synthetic.eval=50",
    "model.tiny.dim=32",
    "grid.batch_size=[64]",
    "grid.epochs=[1]",
    "grid.learning_rate=[1e-3]",
    "grid.seed=[0,1]",
]
GOLDEN = Path(__file__).parent / "golden" / "dry_run.sbatch"
LONG = [
    "--set",
    "data.synthetic.train=3000",
    "--set",
    "grid.epochs=[6]",
    "--set",
    "grid.batch_size=[16]",
    "--set",
    "model.tiny.dim=64",
    "--set",
    "model.tiny.layers=2",
]


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(
        ["sinfo", "-h", "-p", "gpu", "-o", "%a"], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and "up" in out.stdout


@pytest.fixture
def cluster() -> None:
    if not cluster_up():
        if os.environ.get("CI") == "true":
            pytest.fail(
                "the SLURM dev cluster is not running: `bash slurm/dev-cluster.sh` (scripts/test.sh does)"
            )
        pytest.skip("no SLURM dev cluster here (run `bash slurm/dev-cluster.sh` as root)")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_completed(array: str, tasks: int, timeout: float) -> None:
    """Wait until sacct shows the array's `tasks` tasks, and only those, COMPLETED."""
    done = {f"{array}_{i}": "COMPLETED" for i in range(tasks)}
    wait_for(
        lambda: {k: v for k, v in sacct_states([array]).items() if k.startswith(f"{array}_")} == done,
        timeout,
        f"sacct to show {tasks} completed tasks",
    )


def array_ids(out: str) -> list[str]:
    return re.findall(r"submitted array job (\d+)", out)


def launches(paths: StudyPaths) -> list[dict[str, object]]:
    return [json.loads(line) for line in paths.launches.read_text().splitlines()]


def overrides(args: list[str]) -> list[str]:
    """The KEY=VALUE items of the `--set` options in a CLI argument list."""
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def log_of(paths: StudyPaths, task: str) -> str:
    path = paths.submitit / task / f"{task}_0_log.err"
    return path.read_text(errors="replace") if path.exists() else ""


def test_expand_job_ids() -> None:
    assert expand_job_ids("12_[2-4,7%2]") == ["12_2", "12_3", "12_4", "12_7"]
    assert expand_job_ids("12_3") == ["12_3"]
    assert expand_job_ids("15") == ["15"]


def test_dry_run_matches_the_golden_sbatch_script(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    study = write_study()
    env = {**os.environ, "HF_HOME": "/shared/hf"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftvar",
            "launch",
            str(study),
            "--executor",
            "slurm",
            "--dry-run",
            "--out",
            str(tmp_path / "out"),
            "--partition",
            "gpu",
            "--time",
            "30",
            "--cpus-per-task",
            "2",
            "--mem",
            "8G",
            "--array-parallelism",
            "2",
            "--slurm-arg",
            "exclude=node9",
            "--set",
            "cluster.env.WANDB_MODE=offline",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace(str(tmp_path / "out"), "OUT").replace(sys.executable, "PYTHON")
    assert text == GOLDEN.read_text()
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_a_four_trial_array_then_nothing_to_submit(
    cluster: None, tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    args = [
        "--set",
        "grid.learning_rate=[1e-3,3e-3]",
        "--set",
        "analysis.baseline=none",
        "--out",
        str(tmp_path),
    ]
    out = ftvar(
        "launch",
        str(study_file),
        "--executor",
        "slurm",
        "--partition",
        "gpu",
        "--array-parallelism",
        "2",
        "--cpus-per-task",
        "1",
        "--report-after",
        *args,
    )
    assert out.returncode == 0, out.stderr
    (array,) = array_ids(out.stdout)
    assert "submitted array job" in out.stdout and ": 4 task(s)" in out.stdout
    watch = ftvar("status", str(study_file), "--watch", "--interval", "1", *args)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    wait_for_completed(array, 4, 60)  # records land a moment before the tasks end
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    gpus, tasks = set(), set()
    for trial in expand(study):
        rec = record.read_record(paths.record(trial.trial_id))
        env = rec["environment"]
        assert rec["status"] == "ok" and env["slurm_array_job_id"] == array
        assert re.fullmatch(r"\d", env["cuda_visible_devices"] or "")  # one GPU per task
        gpus.add(env["cuda_visible_devices"])
        tasks.add(env["slurm_array_task_id"])
    assert tasks == {"0", "1", "2", "3"}
    scripts = [p.read_text() for p in paths.submitit.glob("**/*_submission.sh")]
    script = next(text for text in scripts if "--array" in text)  # the other one is the report job
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --gpus-per-task=1" in script
    again = ftvar("launch", str(study_file), "--executor", "slurm", "--partition", "gpu", *args)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len([e for e in launches(paths) if e["executor"] == "slurm"]) == 1
    wait_for(lambda: (paths.report / "report.html").exists(), 120, "the --report-after job's report")


def test_scancel_then_relaunch_and_requeue_resumes(
    cluster: None, tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    args = [*LONG, "--set", "analysis.baseline=none", "--out", str(tmp_path)]
    out = ftvar(
        "launch", str(study_file), "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1", *args
    )
    assert out.returncode == 0, out.stderr
    (array,) = array_ids(out.stdout)
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    cancelled, requeued = expand(study)
    for i in (0, 1):
        wait_for(
            lambda i=i: "epoch 1/6 done" in log_of(paths, f"{array}_{i}"), 240, f"task {i} to train an epoch"
        )
    subprocess.run(["scancel", f"{array}_0"], check=True)
    subprocess.run(["scontrol", "requeue", f"{array}_1"], check=True)
    wait_for(lambda: sacct_states([array]).get(f"{array}_0") == "CANCELLED", 60, "sacct to show the cancel")
    status = ftvar("status", str(study_file), *args)
    assert status.returncode == 1
    assert "CANCELLED" in status.stdout and cancelled.trial_id in status.stdout
    relaunch = ftvar(
        "launch", str(study_file), "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1", *args
    )
    assert relaunch.returncode == 0, relaunch.stderr
    assert ": 1 task(s)" in relaunch.stdout  # only the cancelled trial; the requeued one is still active
    assert launches(paths)[-1]["trials"] == [cancelled.trial_id]
    watch = ftvar("status", str(study_file), "--watch", "--interval", "2", *args)
    assert watch.returncode == 0, watch.stdout
    rec_c = record.read_record(paths.record(cancelled.trial_id))
    rec_r = record.read_record(paths.record(requeued.trial_id))
    assert rec_c["status"] == rec_r["status"] == "ok"
    assert rec_r["resume"]["requeues"] >= 1 and rec_r["resume"]["resumed_from_step"] > 0
    assert rec_c["resume"]["resumed_from_step"] > 0  # the cancel saved a checkpoint the relaunch resumed from
    assert not any(paths.ckpt.iterdir())  # checkpoints deleted once the records were written


@pytest.mark.container
def test_tasks_run_inside_a_podman_image(
    cluster: None, tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """`--container podman:IMAGE`: each array task runs in the image; records are written from inside it."""
    image = os.environ.get("FTVAR_TEST_IMAGE")
    if not image or not shutil.which("podman"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI builds the image (containers/build-image.sh) and sets FTVAR_TEST_IMAGE")
        pytest.skip("set FTVAR_TEST_IMAGE to an image built by containers/build-image.sh (needs podman)")
    study_file = write_study()
    args = ["--set", "analysis.baseline=none", "--out", str(tmp_path)]
    out = ftvar(
        "launch",
        str(study_file),
        "--executor",
        "slurm",
        "--partition",
        "gpu",
        "--gpus-per-task",
        "0",
        "--container",
        f"podman:{image}",
        *args,
    )
    assert out.returncode == 0, out.stderr
    watch = ftvar("status", str(study_file), "--watch", "--interval", "1", *args)
    assert watch.returncode == 0, watch.stdout
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    for trial in expand(study):
        env = record.read_record(paths.record(trial.trial_id))["environment"]
        assert env["container_image"] == f"podman:{image}"
        assert env["host"] != socket.gethostname()  # the container's own host name
        assert env["slurm_array_task_id"] in ("0", "1")


def test_a_study_larger_than_max_array_size_is_split(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from ftvar.run import launch, slurm
    from ftvar.store import folder

    assert slurm.max_array_size() == 1001  # the dev cluster's MaxArraySize, read from `scontrol show config`
    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    study = load_study("smoke", SMALL)
    paths = StudyPaths.of(tmp_path, study.name)
    cluster_options = slurm.merge_options(study.cluster, {"partition": "gpu", "cpus_per_task": 1})
    todo, _ = folder.pending(study, paths)
    launch.prepare_study(study, paths, Console(quiet=True))
    arrays = slurm.run_slurm(study, paths, todo, cluster_options, False, Console(quiet=True))
    assert len(arrays) == 2
    # two trials and a baseline per init seed (a tiny model's head is new), two per array
    assert [len(e["trials"]) for e in launches(paths)] == [2, 2]  # type: ignore[arg-type]
    sets = [arg for item in SMALL for arg in ("--set", item)]
    watch = ftvar("status", "smoke", "--watch", "--interval", "1", "--out", str(tmp_path), *sets)
    assert watch.returncode == 0, watch.stdout


def test_a_stacked_array_trains_each_tasks_trials_as_one_stack(
    cluster: None, tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """--trials-per-task 2 --pack stack: the launch orders the trials so that each task's two share a batch
    size, and each task trains them as one stack; every trial still writes its own record."""
    study_file = write_study()
    args = ["--set", "grid.batch_size=[32,64]", "--set", "analysis.baseline=none", "--out", str(tmp_path)]
    out = ftvar(
        "launch", str(study_file), "--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1",
        "--trials-per-task", "2", "--pack", "stack", *args,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert ": 2 task(s) (2 trials per task, stacked)" in out.stdout
    (array,) = array_ids(out.stdout)
    wait_for_completed(array, 2, 120)
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    by_task: dict[str, set[int]] = {}
    for trial in expand(study):
        rec = record.read_record(paths.record(trial.trial_id))
        assert rec["status"] == "ok" and rec["engine"]["stacked_with"] == 2
        by_task.setdefault(rec["environment"]["slurm_array_task_id"], set()).add(rec["params"]["batch_size"])
    assert sorted(by_task) == ["0", "1"] and all(len(sizes) == 1 for sizes in by_task.values())
    (entry,) = [e for e in launches(paths) if e["executor"] == "slurm"]
    assert entry["trials_per_task"] == 2
