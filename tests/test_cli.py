"""The command line as users meet it: real subprocesses, exit codes, one-line errors, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ftvar import __version__
from tests.helpers import ftvar


def test_version_and_help() -> None:
    assert ftvar("--version").stdout.strip() == f"ftvar {__version__}"
    for command in ("plan", "run-trial", "launch", "prefetch", "status", "collect", "report"):
        out = ftvar(command, "--help")
        assert out.returncode == 0
        assert "Example" in out.stdout and "--set" in out.stdout


def test_plan_lists_trials_as_json(tmp_path: Path) -> None:
    out = ftvar("plan", "paper", "--json", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    # 144 trials, and a baseline per init seed: whether the model's head was trained cannot be told without
    # the model in the (here empty) Hugging Face cache
    assert plan["study"] == "paper" and len(plan["trials"]) == 147
    baselines = plan["trials"][:3]
    assert [b["init_seed"] for b in baselines] == [0, 1, 2]
    assert all(b["trial_id"].startswith("baseline-") and b["learning_rate"] is None for b in baselines)
    assert plan["design"].startswith("design: full grid, 48 point(s) × 3 seed setting(s) = 144 trials")
    assert all(t["status"] is None for t in plan["trials"])
    assert not (tmp_path / "paper").exists()  # plan writes nothing


def _bad_files(tmp_path: Path) -> Path:
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\tpos\nbad\tneg\n")
    (tmp_path / "eval.tsv").write_text("sentence\tlabel\nmeh\tneutral\n")
    study = tmp_path / "files.toml"
    study.write_text(
        'name = "files"\n[model]\ntokenizer = "train"\ntiny = {dim = 16, layers = 1, heads = 2}\n'
        '[data]\ntrain = "train.tsv"\neval = "eval.tsv"\n'
    )
    return study


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "missing.toml"], "study file missing.toml does not exist"),
        (["plan", "smok"], "unknown built-in study 'smok'; built-in studies: smoke, paper"),
        (["launch", "smoke", "--set", "grid.learning_rate=[0]"], "grid.learning_rate must be > 0"),
        (["launch", "smoke", "--set", "grid.batch_size=[-8]"], "grid.batch_size must be > 0"),
        (["launch", "smoke", "--set", "grid.seed=[]"], "grid.seed is empty"),
        (["launch", "smoke", "--set", "name=../x"], "study name '../x' may only use"),
        (["launch", "smoke", "--set", "name=a/b"], "study name 'a/b' may only use"),
        (
            ["launch", "smoke", "--set", "train.lr=1"],
            "unknown key train.lr; valid keys in [train]: weight_decay",
        ),
        (["launch", "paper", "--set", "model.name_or_path=./no-such-model"], "model folder"),
        (
            ["launch", "smoke", "--executor", "kube"],
            "unknown executor 'kube'; choose one of: auto, local, debug",
        ),
        (
            ["launch", "FILES", "--executor", "local"],
            "the eval split has labels the train split lacks: neutral",
        ),
        (
            [
                "launch",
                "FILES",
                "--set",
                "data.eval=train.tsv",
                "--set",
                "data.test=eval.tsv",
                "--executor",
                "local",
            ],
            "the test split has labels the train split lacks: neutral",
        ),
        (
            [
                "launch",
                "FILES",
                "--set",
                "data.eval=train.tsv",
                "--set",
                "data.test_fraction=0.1",
                "--executor",
                "local",
            ],
            "data.test_fraction = 0.1 of 2 eval rows leaves no test row",
        ),
        (
            ["launch", "FILES", "--set", "data.label_column=y", "--executor", "local"],
            "data.label_column = 'y' is not a column of the train split; columns: sentence, label",
        ),
        (["launch", "paper", "--executor", "local"], "run `ftvar prefetch paper` on a machine with internet"),
        (["run-trial", "smoke", "--trial", "nope"], "has no trial 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    files = _bad_files(tmp_path)
    args = [str(files) if a == "FILES" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = ftvar(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftvar: error: "), out.stderr
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even the out folder


def test_usage_errors_exit_2() -> None:
    out = ftvar("launch")
    assert out.returncode == 2
    assert "Missing argument" in out.stderr


def test_run_trial_writes_one_record(tmp_path: Path, write_study: Callable[..., Path]) -> None:
    study = write_study()
    one_seed = ("--set", "grid.seed=[0]")  # one init seed: one baseline, `baseline`
    out = ftvar("run-trial", str(study), "--trial", "baseline", *one_seed, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    records = list((tmp_path / "out" / "tiny" / "records").glob("*.json"))
    assert [p.name for p in records] == ["baseline.json"]
    assert json.loads(records[0].read_text())["status"] == "ok"


def test_collect_strict_exits_1_and_report_without_records_exits_2(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    study = write_study()
    out = tmp_path / "out"
    baseline = ftvar(
        "run-trial", str(study), "--trial", "baseline", "--set", "grid.seed=[0]", "--out", str(out)
    )
    assert baseline.returncode == 0, baseline.stderr
    (out / "tiny" / "records" / "0123456789.json").write_text('{"schema_version": 1, "trial_id": "01')
    loose = ftvar("collect", str(study), "--out", str(out))
    assert loose.returncode == 0 and "0123456789.json" in loose.stderr
    strict = ftvar("collect", str(study), "--strict", "--out", str(out))
    assert strict.returncode == 1
    assert strict.stderr.startswith("ftvar: error: ") and len(strict.stderr.strip().splitlines()) == 1
    empty = ftvar("report", str(study), "--out", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and empty.stderr.startswith("ftvar: error: ")


def test_prefetch_of_an_offline_study_needs_nothing() -> None:
    out = ftvar("prefetch", "smoke")
    assert out.returncode == 0
    assert "needs nothing from the Hub" in out.stdout


def test_slurm_executor_without_sbatch_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no sbatch
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftvar",
            "launch",
            "smoke",
            "--executor",
            "slurm",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert out.returncode == 2
    assert "needs sbatch on PATH" in out.stderr
    assert not (tmp_path / "o").exists()
