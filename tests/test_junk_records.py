"""The report never crashes on any record content (issue 8, item 4): junk and edge-case records give a report
(with the junk skipped and listed) or one `ftvar: error:` line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from records_factory import make_record, make_study, synth_study, write

from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study
from ftvar.study.trial import expand

GRID = {"lr": [1e-5, 2e-5, 5e-5], "bs": [8, 16], "ep": [1, 2], "seeds": [0, 1]}
STUDY_TOML = """
name = "synth"
[grid]
learning_rate = [1e-5, 2e-5, 5e-5]
batch_size = [8, 16]
epochs = [1, 2]
seed = [0, 1]
"""


def truth(lr: float, bs: float, ep: float) -> float:
    return 0.8 + 0.02 * (lr + 4.5) - 0.01 * (bs - 3.5) + 0.01 * ep


def report(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    study_file = tmp_path / "synth.toml"
    study_file.write_text(STUDY_TOML)
    return subprocess.run(
        [sys.executable, "-m", "ftvar", "report", str(study_file), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    assert out.returncode in (0, 2), (out.returncode, out.stderr[-3000:])
    if out.returncode == 2:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ftvar: error: "), out.stderr


def study() -> Study:
    return make_study(**GRID)


def good(tmp_path: Path) -> Path:
    """A whole grid of ok records plus the baseline; returns the records folder."""
    s = study()
    synth_study(tmp_path / "out", s, truth, noise=0.01)
    return StudyPaths.of(tmp_path / "out", s.name).records


def edit(records: Path, index: int, change: Callable[[dict[str, Any]], None]) -> Path:
    """Change one grid trial's record in place (written without any check)."""
    tid = expand(study())[index].trial_id
    path = records / f"{tid}.json"
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec, allow_nan=True))
    return path


def test_the_study_file_is_the_factorys_study(tmp_path: Path) -> None:
    from ftvar.study.config import load_study

    (tmp_path / "synth.toml").write_text(STUDY_TOML)
    assert load_study(str(tmp_path / "synth.toml")).hash == study().hash


def test_junk_among_good_records_is_skipped_and_listed(tmp_path: Path) -> None:
    records = good(tmp_path)
    edit(records, 1, lambda r: r["metrics"].update(accuracy=float("nan")))
    edit(records, 2, lambda r: r["metrics"].update(eval_loss=float("inf")))
    edit(records, 3, lambda r: r["metrics"].update(f1=float("-inf")))
    edit(records, 4, lambda r: r["metrics"].update(accuracy="0.9"))  # a string where a number belongs
    edit(records, 5, lambda r: r.pop("metrics"))
    edit(records, 6, lambda r: r.update(status=None))
    edit(records, 7, lambda r: r["params"].update(seed=2**80))
    edit(records, 8, lambda r: r["params"].update(batch_size=8.5))
    edit(records, 9, lambda r: r.update(finished_at="yesterday"))
    edit(records, 10, lambda r: r["timings"].update(train=-1))
    (records / "0000000001.json").write_text("")
    (records / "0000000002.json").write_bytes(os.urandom(512))
    (records / "0000000003.json").write_text("[1, 2, 3]")
    (records / "0000000004.json").write_text("[" * 100_000 + "]" * 100_000)
    (records / "0000000005.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"schema_version": 1}).encode())
    (records / "0000000006.json").write_bytes(b'{"trial_id": "\xff\xfe"}')
    (records / "0000000007.json").mkdir()
    (records / "0000000008.json").symlink_to(tmp_path / "nowhere")
    (records / "0000000009.json").write_text("null")
    (records / "000000000a.json").write_text('{"schema_version": 1, "trial_id": 5}')
    (records / ".000000000b.json.x1.part").write_text("{")
    t0 = expand(study())[12]
    twin = make_record(
        study(),
        learning_rate=t0.learning_rate,
        batch_size=t0.batch_size,
        epochs=t0.epochs,
        seed=t0.seed,
        tid="abcdefabcd",
    )
    write(records, twin)
    out = report(tmp_path)
    assert_no_traceback(out)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "synth" / "report" / "report.json").read_text())
    skipped = {Path(s["path"]).name for s in data["collect"]["skipped"]}
    assert len(skipped) == 10 + 10  # ten broken grid records, ten junk files (not the .part file)
    # every record of the study (the grid and a baseline per init seed) but the ten broken ones, and the twin,
    # which is kept but not in the grid
    assert data["collect"]["statuses"] == {"ok": len(expand(study())) - 10 + 1}


@pytest.mark.parametrize(
    "scenario",
    [
        "all_failed",
        "one_ok_trial",
        "only_baseline",
        "identical_metrics",
        "extreme_finite",
        "losses_at_the_bound",
        "tiny_metrics",
        "no_baseline_one_seed",
        "empty_folder",
        "records_is_a_file",
        "all_junk",
        "half_failed",
        "only_out_of_grid",
    ],
)
def test_edge_cases_give_a_report_or_one_line(tmp_path: Path, scenario: str) -> None:
    s = study()
    records = StudyPaths.of(tmp_path / "out", s.name).records
    if scenario == "empty_folder":
        records.mkdir(parents=True)
    elif scenario == "records_is_a_file":
        records.parent.mkdir(parents=True)
        records.write_text("not a folder")
    elif scenario == "all_junk":
        records.mkdir(parents=True)
        for i in range(5):
            (records / f"000000000{i}.json").write_text(
                '{"schema_version": 1, "trial_id": "x", "metrics": NaN}'
            )
    else:
        records = good(tmp_path)
        for i, trial in enumerate(expand(s)):
            path = records / f"{trial.trial_id}.json"
            rec = json.loads(path.read_text())
            if scenario == "all_failed" or (scenario == "half_failed" and i % 2):
                rec.update(status="failed", error="RuntimeError: boom", metrics=dict.fromkeys(rec["metrics"]))
            elif (scenario == "one_ok_trial" and i > 1) or (scenario == "only_baseline" and i > 0):
                path.unlink()
                continue
            elif scenario == "identical_metrics":
                rec["metrics"].update(accuracy=0.5, f1=0.5, eval_loss=0.69)
            elif scenario == "extreme_finite":
                rec["metrics"].update(
                    eval_loss=1e308 if i % 4 == 1 else 0.0, train_loss=-1e308 if i % 4 == 2 else 0.1
                )
            elif scenario == "losses_at_the_bound":
                rec["metrics"].update(eval_loss=1e9 if i % 3 == 0 else 0.0, accuracy=float(i % 2))
            elif scenario == "tiny_metrics":
                rec["metrics"].update(accuracy=5e-324, f1=0.0, eval_loss=5e-324)
            elif scenario == "no_baseline_one_seed" and (trial.is_baseline or trial.seed == 1):
                path.unlink()
                continue
            elif scenario == "only_out_of_grid" and not trial.is_baseline:
                path.unlink()
                other = make_record(s, learning_rate=3e-3, batch_size=64, epochs=9, seed=i)
                write(records, other)
                continue
            path.write_text(json.dumps(rec))
    out = report(tmp_path)
    assert_no_traceback(out)
    if scenario in (
        "all_failed",
        "only_baseline",
        "empty_folder",
        "records_is_a_file",
        "all_junk",
        "only_out_of_grid",
    ):
        assert out.returncode == 2  # nothing to fit: one line that says so
    if scenario in ("extreme_finite", "losses_at_the_bound", "identical_metrics", "half_failed"):
        assert out.returncode == 0, out.stderr[-3000:]
    if out.returncode == 0:
        text = (tmp_path / "out" / "synth" / "report" / "report.json").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))
    if scenario == "identical_metrics":  # nothing to recommend: the report says so instead of naming a tie
        md = (tmp_path / "out" / "synth" / "report" / "report.md").read_text()
        lead = md.split("## What matters", 1)[1].split("\n## ", 1)[0]
        assert "**accuracy**: every trial scored 0.5: nothing separates the configurations" in lead
        assert "**accuracy**: run " not in md


def test_junk_in_the_study_folder_never_gives_a_traceback(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    """Not only records: launches.jsonl, attempts.json and the checkpoint sidecar may be damaged too (a full
    disk, a hand edit); plan, status, collect, launch and report still answer (found by bench/faults.py:
    deep nesting used to crash every launch)."""
    from ftvar.study.config import load_study

    study_file = write_study()
    out = tmp_path / "o"
    study = load_study(str(study_file))
    paths = StudyPaths.of(out, study.name)
    tid = expand(study)[1].trial_id
    paths.records.mkdir(parents=True)
    (paths.records / "0000000001.json").write_text("[" * 100_000)
    (paths.records / f"{tid}.json").write_text(
        '{"schema_version": 1, "trial_id": "' + tid + '", "status": "ok"}'
    )
    (paths.records / "0000000002.json").write_text('{"study": {"hash": ["not", "a", "string"]}}')
    paths.launches.write_bytes(
        os.urandom(64)
        + b"\n"
        + b"[" * 50_000
        + b"\n"
        + b'{"executor": "slurm", "array_id": [1], "trials": "x", "hash": 5}\n'
        + b'{"executor": "slurm", "trials": ["a"]}\n'
    )
    folder = paths.ckpt / tid
    folder.mkdir(parents=True)
    (folder / "attempts.json").write_text(
        json.dumps(
            [1, "x", {"state": "running", "step": "x", "host": 3}, {"state": "weird", "started_at": "no"}]
        )
    )
    (folder / "state.json").write_text("{")
    (folder / "state.pt").write_bytes(b"junk")
    for args in (
        ["plan", str(study_file)],
        ["plan", str(study_file), "--json"],
        ["status", str(study_file)],
        ["collect", str(study_file)],
        ["launch", str(study_file), "--executor", "slurm", "--dry-run"],
        ["launch", str(study_file), "--executor", "debug"],
        ["report", str(study_file)],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ftvar", *args, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert "Traceback" not in result.stderr, (args, result.stderr[-3000:])
        assert result.returncode in (0, 1, 2), (args, result.returncode, result.stderr[-2000:])
    rec = json.loads(paths.record(tid).read_text())  # the junk record was rerun: it did not count as ok
    assert rec["status"] == "ok"
    assert [a["state"] for a in rec["attempts"]] == ["lost", "lost", "ok"]  # the damaged history, cleaned
    assert rec["attempts"][0]["step"] is None and rec["attempts"][1]["started_at"] is None


def test_a_report_says_how_many_trials_have_no_ok_record_and_that_baselines_alone_fit_nothing(
    tmp_path: Path,
) -> None:
    """Issue 21, item 5: with baselines only, the error says they are baselines (not "no ok records" next to
    "2 ok"); a report made while trials are missing says how many, in report.md and report.json."""
    from ftvar.errors import FtvarError
    from ftvar.report.build import build_report
    from ftvar.store.collect import collect

    s = study()
    records = good(tmp_path)
    trials = expand(s)
    gone = [t for t in trials if not t.is_baseline][:4]
    for t in gone:
        (records / f"{t.trial_id}.json").unlink()
    collected = collect(s, tmp_path / "out")  # report.md's "Study and design" and report.json say the same
    assert sorted(collected.missing) == sorted(t.trial_id for t in gone)
    assert collected.n_expected == len(trials)
    assert f"; 4 of the study's {len(trials)} trials have no ok record yet" in collected.summary()

    for t in trials:
        if not t.is_baseline:
            (records / f"{t.trial_id}.json").unlink(missing_ok=True)
    n_base = sum(t.is_baseline for t in trials)
    with pytest.raises(FtvarError) as caught:
        build_report(s, tmp_path / "out")
    assert str(caught.value).startswith(
        f"study synth: no fine-tuned trial has an ok record yet (the {n_base} ok record(s) are baselines, "
        "the model before fine-tuning, which no fit uses)"
    )
