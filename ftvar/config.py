"""Study files: TOML → typed, validated dataclasses, with `--set KEY=VALUE` overrides.

A study is named by a path to a TOML file or by a built-in name (`smoke`, `paper`). Relative paths inside a
file are resolved against the file's folder; relative paths given with `--set` against the working directory.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ftvar.errors import StudyError
from ftvar.studyhash import study_hash
from ftvar.typed import build

BUILTIN_STUDIES = ("smoke", "paper")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
FORMATS = ("tsv", "csv", "jsonl", "parquet")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
CODINGS = ("log", "raw")
BASELINES = ("pretrained", "none")
ENGINES = ("plain",)
DEVICES = ("auto", "cpu", "cuda")
# keys whose string values are file system paths (resolved against the study file's folder or the cwd)
PATH_KEYS = ("data.train", "data.eval", "model.name_or_path", "model.tokenizer")


@dataclass(frozen=True)
class TinyModel:
    dim: int = 64  # hidden size
    layers: int = 2  # transformer blocks
    heads: int = 2  # attention heads (must divide dim)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "distilbert-base-uncased-finetuned-sst-2-english"  # Hub id or local folder
    tokenizer: str | None = None  # None: same as the model; "train": WordPiece trained on the train texts
    tiny: TinyModel | None = None  # random-init DistilBERT of this size; name_or_path is then unused
    vocab_size: int = 4000  # vocabulary of a trained tokenizer (tokenizer = "train")


@dataclass(frozen=True)
class Synthetic:
    train: int = 2000  # rows generated for the train split
    eval: int = 500  # rows generated for the eval split
    label_noise: float = 0.08  # share of labels flipped at random
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    hub: str | None = "glue/sst2"  # Hub dataset "name/config" (or "org/name/config")
    hub_config: str | None = None  # when set, `hub` is the dataset id as a whole and this its config
    train_split: str = "train"
    eval_split: str = "validation"
    train: str | None = None  # local file instead of the Hub
    eval: str | None = None
    synthetic: Synthetic | None = None  # ftvar's own generated sentiment data instead of files
    format: str | None = None  # tsv | csv | jsonl | parquet; default: from the file suffix
    header: bool = True  # false: columns are addressed by 0-based index
    text_column: str | int = "sentence"
    label_column: str | int = "label"
    max_length: int = 128
    train_limit: int = 0  # 0 = all rows; n = a seeded random subsample of n rows
    eval_limit: int = 0
    data_seed: int = 0

    @property
    def source(self) -> Literal["hub", "files", "synthetic"]:
        if self.synthetic is not None:
            return "synthetic"
        return "files" if self.train is not None else "hub"

    def hub_id_and_config(self) -> tuple[str, str | None]:
        """Split `hub` into (dataset id, config): "glue/sst2" → ("glue", "sst2")."""
        if self.hub is None:
            raise StudyError("data.hub is not set")
        if self.hub_config is not None:
            return self.hub, self.hub_config or None
        if "/" not in self.hub:
            return self.hub, None
        name, config = self.hub.rsplit("/", 1)
        return name, config

    def file_format(self, path: str) -> str:
        if self.format is not None:
            return self.format
        suffix = Path(path).suffix.lower().lstrip(".")
        suffix = {"json": "jsonl", "pq": "parquet", "txt": "tsv"}.get(suffix, suffix)
        if suffix not in FORMATS:
            raise StudyError(
                f"cannot tell the format of {path!r} from its suffix; "
                f"set data.format to one of {', '.join(FORMATS)}"
            )
        return suffix


@dataclass(frozen=True)
class GridConfig:
    learning_rate: list[float] = field(default_factory=lambda: [1e-5, 2e-5, 5e-5, 1e-4])
    batch_size: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    epochs: list[int] = field(default_factory=lambda: [1, 2, 3])
    seed: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass(frozen=True)
class TrainConfig:
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32
    eval_batch_size: int = 256
    max_grad_norm: float = 1.0  # 0 disables clipping
    engine: str = "plain"
    device: str = "auto"  # auto: cuda when available
    checkpoint_minutes: float = 5.0  # save training state every N minutes (0: only on signals); not hashed


@dataclass(frozen=True)
class AnalysisConfig:
    degree: int = 2
    coding: str = "log"  # log: log10(lr), log2(batch size); raw: as given
    baseline: str = "pretrained"  # evaluate the un-fine-tuned model once, as trial "baseline"
    reference: dict[str, float] | None = None  # paired reference configuration; default: grid medians


@dataclass(frozen=True)
class ClusterConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60  # minutes per task
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None  # e.g. "16G"
    constraint: str | None = None
    array_parallelism: int | None = None
    container: str | None = None  # apptainer:PATH.sif | docker:IMAGE | podman:IMAGE
    slurm_args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    max_requeues: int = 3  # times a task that reaches its time limit is requeued (from its checkpoint)


@dataclass(frozen=True)
class Study:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: str = ""  # where the study came from: a file path or "builtin:NAME"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    @functools.cached_property
    def hash(self) -> str:
        """12 hex digits over the model, the data contents and the training settings (ftvar.studyhash)."""
        train = dataclasses.asdict(self.train)
        train.pop("checkpoint_minutes")  # how often to checkpoint does not change a result
        return study_hash(dataclasses.asdict(self.model), dataclasses.asdict(self.data), train)


# -------------------------------------------------------------------------------------------- validation


def _check_positive(values: list[float] | list[int], key: str, allow_zero: bool = False) -> None:
    if not values:
        raise StudyError(f"{key} is empty: give at least one value")
    for v in values:
        if v < 0 or (v == 0 and not allow_zero):
            raise StudyError(f"{key} must be {'≥' if allow_zero else '>'} 0, got {v}")
    if len(set(values)) != len(values):
        raise StudyError(f"{key} has repeated values: {values}")


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise StudyError(f"{key} = {value!r} is not valid; choose one of: {', '.join(choices)}")


def validate(study: Study) -> None:
    """Semantic checks beyond types. Raises StudyError with an actionable message."""
    if not NAME_RE.match(study.name) or study.name in (".", ".."):
        raise StudyError(
            f"study name {study.name!r} may only use letters, digits, '_', '.', '-' (no '/' or '..')"
        )
    g = study.grid
    _check_positive(g.learning_rate, "grid.learning_rate")
    _check_positive(g.batch_size, "grid.batch_size")
    _check_positive(g.epochs, "grid.epochs")
    _check_positive(g.seed, "grid.seed", allow_zero=True)
    t = study.train
    _check_choice(t.precision, PRECISIONS, "train.precision")
    _check_choice(t.scheduler, SCHEDULERS, "train.scheduler")
    _check_choice(t.engine, ENGINES, "train.engine")
    _check_choice(t.device, DEVICES, "train.device")
    if not 0 <= t.warmup_ratio < 1:
        raise StudyError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.weight_decay < 0 or t.max_grad_norm < 0 or t.eval_batch_size <= 0:
        raise StudyError("train.weight_decay and train.max_grad_norm must be ≥ 0, train.eval_batch_size > 0")
    if not 0 <= t.checkpoint_minutes < float("inf"):
        raise StudyError(
            f"train.checkpoint_minutes must be ≥ 0 (0: signals only), got {t.checkpoint_minutes}"
        )
    a = study.analysis
    _check_choice(a.coding, CODINGS, "analysis.coding")
    _check_choice(a.baseline, BASELINES, "analysis.baseline")
    if not 1 <= a.degree <= 3:
        raise StudyError(f"analysis.degree must be 1, 2 or 3, got {a.degree}")
    if a.reference is not None:
        bad = sorted(set(a.reference) - {"learning_rate", "batch_size", "epochs"})
        if bad:
            raise StudyError(
                f"unknown key analysis.reference.{bad[0]}; valid: learning_rate, batch_size, epochs"
            )
    _validate_model(study.model)
    _validate_data(study.data)
    c = study.cluster
    if c.container is not None and c.container.split(":", 1)[0] not in ("apptainer", "docker", "podman"):
        raise StudyError(
            f"cluster.container {c.container!r} must be apptainer:PATH.sif, docker:IMAGE or podman:IMAGE"
        )


def _validate_model(m: ModelConfig) -> None:
    if m.tiny is not None:
        if min(m.tiny.dim, m.tiny.layers, m.tiny.heads) <= 0 or m.tiny.dim % m.tiny.heads:
            raise StudyError("model.tiny needs dim, layers, heads > 0 and dim divisible by heads")
        if m.tokenizer is None:
            raise StudyError('model.tiny needs model.tokenizer: "train" or a tokenizer path or Hub id')
    elif is_local_path(m.name_or_path) and not Path(m.name_or_path).is_dir():
        raise StudyError(f"model folder {m.name_or_path} does not exist")
    if m.tokenizer not in (None, "train") and is_local_path(m.tokenizer) and not Path(m.tokenizer).exists():
        raise StudyError(f"tokenizer {m.tokenizer} does not exist")
    if m.vocab_size < 100:
        raise StudyError(f"model.vocab_size must be ≥ 100, got {m.vocab_size}")


def _validate_data(d: DataConfig) -> None:
    if d.synthetic is None and d.train is None and d.hub is None:
        raise StudyError(
            "[data] needs a source: hub = 'name/config', train = 'path' (+ eval), or synthetic = {...}"
        )
    if d.train is not None or d.synthetic is not None:
        if d.synthetic is not None and d.train is not None:
            raise StudyError("[data] has both synthetic and train files: keep one")
        if d.synthetic is not None and (d.synthetic.train < 10 or d.synthetic.eval < 10):
            raise StudyError("data.synthetic needs train and eval ≥ 10 rows")
        if d.train is not None:
            if d.eval is None:
                raise StudyError("data.train is set but data.eval is not: give an eval file")
            for key, path in (("data.train", d.train), ("data.eval", d.eval)):
                if not Path(path).is_file():
                    raise StudyError(f"{key}: file {path} does not exist")
                d.file_format(path)
    if d.format is not None:
        _check_choice(d.format, FORMATS, "data.format")
    for key in ("text_column", "label_column"):
        col = getattr(d, key)
        if d.header and isinstance(col, int) and d.source == "files":
            raise StudyError(f"data.{key} is an index ({col}) but data.header = true: use the column name")
        if not d.header and not isinstance(col, int):
            raise StudyError(f"data.{key} must be a 0-based index when data.header = false, got {col!r}")
    if d.max_length < 8 or d.train_limit < 0 or d.eval_limit < 0:
        raise StudyError("data.max_length must be ≥ 8 and data.train_limit/eval_limit ≥ 0")


def is_local_path(value: str) -> bool:
    """A Hub id is "name" or "org/name"; anything else, or an existing folder, is a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or Path(value).exists()


# ------------------------------------------------------------------------------------------------ loading


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=VALUE` → ("a.b", value); VALUE is read as a TOML value, else as a plain string."""
    if "=" not in item:
        raise StudyError(f"--set {item!r} must look like KEY=VALUE, e.g. grid.seed=[0,1]")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", key):
        raise StudyError(f"--set key {key!r} must be dotted names, e.g. data.train")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise StudyError(f"--set {key}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def _resolve_paths(data: dict[str, Any], base: Path, keys: tuple[str, ...] = PATH_KEYS) -> None:
    for key in keys:
        section, name = key.split(".")
        value = data.get(section, {}).get(name)
        if not isinstance(value, str) or value == "train":
            continue
        if key in ("model.name_or_path", "model.tokenizer") and not value.startswith((".", "/", "~")):
            candidate = base / value
            if not (value.count("/") > 1 or candidate.exists()):
                continue  # a Hub id
        data[section][name] = str((base / Path(value).expanduser()).resolve())


def read_study_source(spec: str, cwd: Path) -> tuple[dict[str, Any], Path, str]:
    """Raw TOML of a built-in or a file, the folder relative paths are resolved against, and the source."""
    if spec in BUILTIN_STUDIES:
        text = resources.files("ftvar.studies").joinpath(f"{spec}.toml").read_text()
        return tomllib.loads(text), cwd, f"builtin:{spec}"
    path = Path(spec).expanduser()
    if not path.suffix and not path.exists():
        raise StudyError(f"unknown built-in study {spec!r}; built-in studies: {', '.join(BUILTIN_STUDIES)}")
    if not path.is_file():
        raise StudyError(f"study file {spec} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"study file {spec} is not valid TOML: {exc}") from None
    return data, path.resolve().parent, str(path.resolve())


def load_study(spec: str, overrides: list[str] | tuple[str, ...] = (), cwd: Path | None = None) -> Study:
    """Read, override, type-check and validate a study."""
    cwd = cwd or Path.cwd()
    data, base, source = read_study_source(spec, cwd)
    data = copy.deepcopy(data)
    _resolve_paths(data, base)
    for item in overrides:
        key, value = parse_override(item)
        patch: dict[str, Any] = {}
        _set_dotted(patch, key, value)
        if key in PATH_KEYS:
            _resolve_paths(patch, cwd, (key,))
        _set_dotted(data, key, _get_dotted(patch, key))
    if "name" not in data:
        raise StudyError(f'study {spec} has no name: add name = "..." at the top')
    study: Study = build(Study, data, "")
    study = dataclasses.replace(study, source=source)
    validate(study)
    return study


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node
