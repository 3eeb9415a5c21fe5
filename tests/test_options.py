"""Options that reach the sbatch script or a container command line (issue 8, items 1, 9, 11, 12, 14),
checked without a cluster: one `ftvar: error:` line for a bad value, quoted values, the image's HF_HOME,
a signal lead time that fits the time limit, and no secret in a record or a task's pickle."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ftvar.errors import FtvarError
from ftvar.run import slurm
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from tests.helpers import ftvar, one_error_line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "0"], "--time must be ≥ 1, got 0"),
        (["--time", "-5"], "--time must be ≥ 1, got -5"),
        (["--array-parallelism", "-1"], "--array-parallelism must be ≥ 1, got -1"),
        (["--array-parallelism", "0"], "--array-parallelism must be ≥ 1, got 0"),
        (["--cpus-per-task", "0"], "--cpus-per-task must be ≥ 1, got 0"),
        (["--gpus-per-task", "-1"], "--gpus-per-task must be ≥ 0, got -1"),
        (["--max-requeues", "-1"], "--max-requeues must be ≥ 0, got -1"),
        (["--partition", "gpu\n#SBATCH --wrap=x"], "--partition 'gpu\\n#SBATCH --wrap=x' must be"),
        (["--slurm-arg", "exclude=node1\nrm -rf ~"], "the value must not hold control characters"),
        (["--slurm-arg", "bad key=1"], "the key must be an sbatch option name"),
        (["--container", "kube:x"], "use apptainer:PATH.sif, docker:IMAGE or podman:IMAGE"),
        (["--container", "podman:"], "use apptainer:PATH.sif, docker:IMAGE or podman:IMAGE"),
        (["--set", "cluster.env.HF_TOKEN=hf_x"], "cluster.env must not hold secrets (HF_TOKEN)"),
        (["--set", "cluster.env.WANDB_API_KEY=k"], "cluster.env must not hold secrets (WANDB_API_KEY)"),
        (
            ["--set", 'cluster.env={"X=1; touch CANARY; Y" = "v"}'],
            "cluster.env: 'X=1; touch CANARY; Y' is not an environment variable name",
        ),
        (["--set", 'cluster.env={"1X" = "v"}'], "'1X' is not an environment variable name"),
        (["--set", "cluster.time=0"], "--time must be ≥ 1, got 0"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "launch"])
def test_bad_slurm_options_are_one_line_exit_2_nothing_written(
    tmp_path: Path, args: list[str], message: str, dry_run: bool
) -> None:
    """Validated by ftvar, not by typer (whose boxed usage message was not ftvar's line), before sbatch is
    even looked for: the same answer with and without a cluster."""
    canary = tmp_path / "pwned"
    args = [a.replace("CANARY", str(canary)) for a in args]
    message = message.replace("CANARY", str(canary))
    out = ftvar(
        "launch",
        "smoke",
        "--executor",
        "slurm",
        *args,
        *(["--dry-run"] if dry_run else []),
        "--out",
        str(tmp_path / "o"),
    )
    assert message in one_error_line(out)
    assert not (tmp_path / "o").exists()
    assert not canary.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-parallel", "0"], "--max-parallel must be ≥ 1, got 0"),
        (["--partition", "gpu"], "--partition is a SLURM option, but this launch runs --executor local"),
        (["--container", "podman:x"], "--container is a SLURM option, but this launch runs --executor local"),
    ],
)
def test_local_launch_options(tmp_path: Path, args: list[str], message: str) -> None:
    line = one_error_line(
        ftvar("launch", "smoke", "--executor", "local", *args, "--out", str(tmp_path / "o"))
    )
    assert message in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval must be ≥ 0.5 seconds, got 0.0"),
        (["--lines", "-1"], "--lines must be ≥ 0"),
    ],
)
def test_status_options(tmp_path: Path, args: list[str], message: str) -> None:
    assert message in one_error_line(ftvar("status", "smoke", *args, "--out", str(tmp_path)))


# --------------------------------------------------------------------------------- quoting and HF_HOME


def dry_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = ftvar(
        "launch", "smoke", "--executor", "slurm", "--dry-run", "--out", str(tmp_path / "o"), *args, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_env_values_are_quoted_in_the_sbatch_script(tmp_path: Path) -> None:
    """Issue 8, item 12: a value with quotes, `;`, `$(…)` and spaces reaches the task as that exact string and
    runs nothing."""
    canary = tmp_path / "pwned"
    value = f'it\'s; touch {canary}; $(touch {canary}) `touch {canary}` "x" a  b'
    script = dry_run(tmp_path, "--set", f"cluster.env.MY_VALUE={json.dumps(value)}")
    setup = script.split("# setup\n", 1)[1].split("\n\n", 1)[0]
    assert f"export MY_VALUE={shlex.quote(value)}" in setup.splitlines()
    shell = subprocess.run(
        ["bash", "-c", setup + '\nprintf %s "$MY_VALUE"'], capture_output=True, text=True, check=True
    )
    assert shell.stdout == value
    assert not canary.exists()


def test_docker_and_podman_tasks_use_the_images_hf_home(tmp_path: Path) -> None:
    """Issue 8, item 11: the login node's HF_HOME is the bind mount's source, never the task's HF_HOME
    (the image's /cache/hf, where the cache is mounted)."""
    hf = tmp_path / "login-node-hf"
    hf.mkdir()
    for engine in ("podman", "docker"):
        script = dry_run(
            tmp_path,
            "--container",
            f"{engine}:localhost/ftvar:test",
            "--set",
            "cluster.env.WANDB_MODE=off",
            env={"HF_HOME": str(hf)},
        )
        command = next(line for line in script.splitlines() if line.startswith("srun "))
        words = shlex.split(command)
        assert f"{hf}:/cache/hf" in words  # the host cache, mounted at the image's HF_HOME
        flags = [words[i + 1] for i, w in enumerate(words) if w == "-e"]
        assert "HF_HOME=/cache/hf" in flags and "HF_HOME" not in flags
        assert "WANDB_MODE" in flags  # passed by name: its value comes from the quoted export
        assert f"export HF_HOME={hf}" in script  # the host side still knows where its cache is
    sif = tmp_path / "ftvar.sif"
    sif.write_text("")
    script = dry_run(tmp_path, "--container", f"apptainer:{sif}", env={"HF_HOME": str(hf)})
    command = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--env HF_HOME=/cache/hf" in command and f"{hf}:/cache/hf" in command


# ------------------------------------------------------------------------------------- time limits (1)


@pytest.mark.parametrize(
    ("minutes", "delay"), [(1, 1), (2, 30), (3, 60), (10, 60), (30, 90), (60, 180), (120, 300), (1440, 300)]
)
def test_the_usr2_lead_time_fits_the_time_limit(minutes: int, delay: int) -> None:
    """5 % of the limit, 60 s to 5 min, and never so early that a task trains less than half its limit
    (slurmctld may send the signal up to 30 s before the lead time)."""
    assert slurm.signal_delay_s(minutes) == delay
    assert delay + 30 <= minutes * 60 / 2 or delay == 1


def test_the_sbatch_script_carries_the_lead_time_and_the_requeue_count(tmp_path: Path) -> None:
    assert "#SBATCH --signal=USR2@1\n" in dry_run(tmp_path, "--time", "1")
    assert "#SBATCH --signal=USR2@180\n" in dry_run(tmp_path, "--time", "60")
    study = load_study("smoke")
    c = slurm.merge_options(study.cluster, {"max_requeues": 1})
    assert slurm.make_executor(c, study, StudyPaths.of(tmp_path, "smoke")).max_num_timeout == 1


# ------------------------------------------------------------------------------------------ secrets (14)


def test_run_trial_keeps_cluster_env_values_out_of_the_record(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study_file = write_study()
    secret = "team-falcon-private-4711"
    out = ftvar(
        "run-trial",
        str(study_file),
        "--trial",
        "baseline",
        "--set",
        "grid.seed=[0]",  # one init seed: one baseline, `baseline`
        "--set",
        f"cluster.env.WANDB_ENTITY={secret}",
        "--set",
        "cluster.env.HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123",  # run-trial writes no sbatch script
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and b"hf_abcdefghij" not in data, path
    rec = json.loads((tmp_path / "o" / "tiny" / "records" / "baseline.json").read_text())
    assert rec["study"]["config"]["cluster"]["env"] == {
        "WANDB_ENTITY": "<redacted>",
        "HF_TOKEN": "<redacted>",
    }


def test_tasks_get_the_study_without_env_values() -> None:
    study = load_study("smoke", ["cluster.env.WANDB_ENTITY=private"])
    sent = slurm.task_study(study)
    assert sent.cluster.env == {"WANDB_ENTITY": "<redacted>"} and study.cluster.env == {
        "WANDB_ENTITY": "private"
    }
    assert sent.hash == study.hash and "hash" in sent.__dict__
    assert slurm.task_study(load_study("smoke")).cluster.env == {}


def test_merge_options_rejects_what_would_break_the_script() -> None:
    base = load_study("smoke").cluster
    for cli, pattern in (
        ({"env": {"A B": "1"}}, "not an environment variable name"),
        ({"env": {"OK": "line1\nline2"}}, "control characters"),
        ({"mem": ""}, "must be a non-empty value"),
    ):
        with pytest.raises(FtvarError, match=re.escape(pattern)):
            slurm.merge_options(base, cli)


def test_the_test_only_submission_is_split_like_the_real_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study larger than MaxArraySize is checked as the arrays it will be split into, not as one array
    that sbatch would refuse."""
    seen: list[str] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(str(kwargs.get("input")))
        return subprocess.CompletedProcess(cmd, 0, "", "sbatch: Job 1 to start at now")

    monkeypatch.setattr(slurm, "partitions", lambda: ["gpu"])
    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    study = load_study("smoke")
    c = slurm.merge_options(study.cluster, {"partition": "gpu"})
    slurm.check_cluster(c, study, StudyPaths.of(tmp_path, "smoke"), 9)
    assert "#SBATCH --array=0-1%" in seen[0]  # 2 tasks, not 9
    with pytest.raises(FtvarError, match="no such partition on this cluster; partitions: gpu"):
        slurm.check_cluster(
            slurm.merge_options(study.cluster, {"partition": "cpu"}),
            study,
            StudyPaths.of(tmp_path, "smoke"),
            9,
        )
    assert not (tmp_path / "smoke").exists()


def test_a_controller_that_does_not_answer_is_said_so_not_blamed_on_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21, item 5: with slurmctld down, sbatch --test-only fails too: that is the controller, not the
    options."""
    down = (
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"
    )

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", down)

    monkeypatch.setattr(slurm, "partitions", lambda: None)  # sinfo fails as well
    monkeypatch.setattr(slurm, "max_array_size", lambda: 1001)
    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    study = load_study("smoke")
    c = slurm.merge_options(study.cluster, {"partition": "gpu"})
    with pytest.raises(FtvarError) as caught:
        slurm.check_cluster(c, study, StudyPaths.of(tmp_path, "smoke"), 9)
    assert str(caught.value) == (
        "the SLURM controller does not answer (sbatch --test-only: Batch job submission failed: Unable to "
        "contact slurm controller (connect failure)); nothing was submitted. Is slurmctld up (`scontrol "
        "ping`, `sinfo`)? Launch again once it is"
    )


def test_a_dry_run_shows_each_array_as_it_would_be_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21, item 4: more tasks than MaxArraySize print one script per array, each with its own --array
    (never one that sbatch refuses); with --array-parallelism each array after the first waits for the one
    before, so that the limit holds for the whole launch."""
    from rich.console import Console

    from ftvar.run.launch import launch_study

    monkeypatch.setattr(slurm, "max_array_size", lambda: 4)
    study = load_study("smoke")  # 8 trials and a baseline: arrays of 4, 4 and 1 task(s)
    for throttle in (None, 1):
        cli = {"partition": "gpu", "array_parallelism": throttle}
        assert launch_study(study, tmp_path, "slurm", None, cli, True, False, Console(quiet=True)) == 0
        scripts = capsys.readouterr().out.split("# ---- array ")[1:]
        assert [s.split(":")[0] for s in scripts] == ["1 of 3", "2 of 3", "3 of 3"]
        limit = "%4" if throttle is None else "%1"  # submitit caps it at the array size by default
        assert f"#SBATCH --array=0-3{limit}\n" in scripts[0] and f"#SBATCH --array=0-3{limit}\n" in scripts[1]
        assert "#SBATCH --array" not in scripts[2]  # one task: a plain job
        waits = ["--dependency" in s for s in scripts]
        assert waits == ([False] * 3 if throttle is None else [False, True, True])
        if throttle:
            assert "#SBATCH --dependency=afterany:JOBID_OF_ARRAY_2\n" in scripts[2]
    assert not (tmp_path / "smoke").exists()
