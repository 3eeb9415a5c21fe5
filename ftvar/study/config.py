"""Study files: TOML → typed, validated dataclasses, with `--set KEY=VALUE` overrides.

A study is named by a path to a TOML file or by a built-in name (`smoke`, `paper`). Relative paths inside a
file are resolved against the file's folder; relative paths given with `--set` against the working directory.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ftvar.errors import StudyError
from ftvar.study.axes import CODINGS as AXIS_CODINGS
from ftvar.study.axes import SEED_AXES, Axis, Coding, default_coding, label, short, show_value
from ftvar.study.design import DesignConfig, Point, Range, Spec, points, validate_design
from ftvar.study.study_hash import study_hash
from ftvar.study.typed import build

BUILTIN_STUDIES = ("smoke", "paper", "rte", "mrpc", "cola")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_NAME = 100  # a study's name names its folder (file names stop at 255 bytes), its temp files and its jobs
FORMATS = ("tsv", "csv", "jsonl", "parquet")
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
# presets; [analysis.coding] may also be a table: axis → log10 | log2 | raw | categorical
CODINGS = ("log", "raw")
BASELINES = ("pretrained", "none")
ENGINES = ("auto", "plain", "fast", "trainer")  # auto: fast on a CUDA GPU, plain on a CPU
DEVICES = ("auto", "cpu", "cuda")
SEED_MODELS = ("auto", "blocks", "mixed")
PRIMARY_METRICS = ("accuracy", "f1", "mcc")  # analysis.metric: what the report leads with
# Hub tasks (id, config) whose own metric is not accuracy: the primary metric unless analysis.metric is set
TASK_METRICS: dict[tuple[str, str | None], str] = {("glue", "cola"): "mcc", ("nyu-mll/glue", "cola"): "mcc"}
# keys whose string values are file system paths (resolved against the study file's folder or the cwd)
PATH_KEYS = ("data.train", "data.eval", "data.test", "model.name_or_path", "model.tokenizer")
# [data] keys of the held-out test split: in the study hash only when set (a study without one keeps its hash)
TEST_KEYS = ("test", "test_split", "test_fraction")


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
    text_column: str | int | tuple[str, ...] | tuple[int, ...] = "sentence"  # a pair: two columns
    label_column: str | int = "label"
    max_length: int = 128
    train_limit: int = 0  # 0 = all rows; n = a seeded random subsample of n rows
    eval_limit: int = 0
    data_seed: int = 0
    # a held-out test split for the final number (at most one): a local file in data.train's format, a Hub
    # split, or this share of the eval rows (0 < f < 1), drawn with data_seed after eval_limit
    test: str | None = None
    test_split: str | None = None
    test_fraction: float | None = None

    @property
    def has_test(self) -> bool:
        return self.test is not None or self.test_split is not None or self.test_fraction is not None

    def __post_init__(self) -> None:
        """A one-column list is that column (so that `["sentence"]` and `"sentence"` are one study)."""
        if isinstance(self.text_column, tuple) and len(self.text_column) == 1:
            object.__setattr__(self, "text_column", self.text_column[0])

    @property
    def text_columns(self) -> tuple[str | int, ...]:
        """The text column, or the two columns of a sentence pair, in order."""
        return self.text_column if isinstance(self.text_column, tuple) else (self.text_column,)

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
class TrainConfig:
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; tf32: fp32 with TF32 matmuls (GPU)
    eval_batch_size: int = 256
    max_grad_norm: float = 1.0  # 0 disables clipping
    engine: str = "auto"  # auto: fast on a CUDA GPU, plain elsewhere | plain | fast | trainer
    device: str = "auto"  # auto: cuda when available
    checkpoint_minutes: float = 5.0  # save training state every N minutes (0: only on signals); not hashed
    # the learning curve: evaluate every N steps (an integer) or every fraction of an epoch (a float: 1.0 once
    # an epoch, 0.25 four times); 0: only at the end. Evaluating changes no result: not hashed
    eval_every: int | float = 1.0
    # the known remedies of failed fine-tuning runs (hashed only when they differ from these defaults)
    reinit_layers: int = 0  # re-initialise the top k encoder layers (and the pooler) from the init seed
    layer_decay: float = 1.0  # layer-wise learning-rate decay: a layer's lr × decay^(its depth from the top)
    bias_correction: bool = True  # Adam's bias correction (false: BERT's original optimizer)


@dataclass(frozen=True)
class AnalysisConfig:
    degree: int = 2
    coding: str | dict[str, str] = "log"  # log: log10(lr), log2(batch size); raw; or a table per axis
    baseline: str = "pretrained"  # evaluate the un-fine-tuned model (per init seed when its head is new)
    compare_paper: bool | None = None  # None: only for the paper's model and task
    bootstrap: int = 1000  # bootstrap resamples (of seeds) for the variance shares and the best configuration
    seed_model: str = "auto"  # auto | blocks (seeds as fixed blocks) | mixed (random seed intercepts)
    factor_interactions: bool = False  # factor × numeric-axis interactions in the fits
    expected_max_by: str | None = None  # the expected-max curves' axis; default: batch size, else a factor
    metric: str | None = None  # accuracy | f1 | mcc: what the report leads with; default: by the data
    near_degenerate: float = 0.95  # flag runs predicting one class for at least this share of the eval rows


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
    trials_per_task: int | None = None  # trials packed into one array task, run concurrently on its GPU
    pack: str = "lanes"  # how a task runs its trials: lanes (threads) | stack (one batched model)
    slurm_args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    max_requeues: int = 3  # times a task that reaches its time limit is requeued (from its checkpoint)


# how a packed task runs its trials: lanes (threads, a trial each) or stack (one batched model, train/stack)
PACK_MODES = ("lanes", "stack")

# the [grid] keys of the paper's axes, their value types and the values a study without them uses
PAPER_AXES: dict[str, type] = {"learning_rate": float, "batch_size": int, "epochs": int}
PAPER_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-5, 2e-5, 5e-5, 1e-4),
    "batch_size": (8, 16, 32, 64),
    "epochs": (1, 2, 3),
}
SEED_KEYS = ("seed", *SEED_AXES)  # `seed` is the shorthand that sets init_seed and order_seed together
# grid.replicate: run each trial again, same settings and seeds, as distinct trials (the hardware's noise)
REPLICATE = "replicate"
DEFAULT_SEEDS = (0, 1, 2)
# what enters the study hash: today's fields, so that a study's hash (and its trial ids) never changes when
# a setting that does not change results is added. A setting that is an axis leaves the hash (the trial ids
# cover it).
HASHED_MODEL = ("name_or_path", "tokenizer", "tiny", "vocab_size")
HASHED_TRAIN = (
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "precision",
    "eval_batch_size",
    "max_grad_norm",
    "engine",
    "device",
)
# the remedies of failed runs (issue 23): they change results, but enter the study hash only when they differ
# from their defaults, so that every study without them keeps its hash and its trial ids
REMEDIES = ("reinit_layers", "layer_decay", "bias_correction")
# the models (config.json's model_type) whose encoder layers ftvar.train.remedies knows how to find, for
# re-initialising layers and layer-wise learning rates; MiniLM-style models are BERTs
LAYERED_MODELS = ("bert", "distilbert", "roberta")
# sweepable settings beside the paper's axes: every [train] setting that changes results, and these
OTHER_SWEEPABLE: dict[str, type] = {
    **{f"train.{name}": type(getattr(TrainConfig(), name)) for name in (*HASHED_TRAIN, *REMEDIES)},
    "data.max_length": int,
    "data.train_limit": int,
    "model.name_or_path": str,
}
SWEEPABLE: dict[str, type] = {**PAPER_AXES, **OTHER_SWEEPABLE}


@dataclass(frozen=True)
class Grid:
    """The [grid] table, normalised.

    `axes` are the hyperparameter axes in order — learning rate, batch size, epochs, then the others as the
    file lists them — each a tuple of values or a `Range` (for designs that sample). The seeds stand apart:
    with the `seed` shorthand (`paired`) the i-th seed sets both `init_seed` and `order_seed`; given as two
    axes, every init seed is crossed with every order seed.
    """

    axes: tuple[tuple[str, Spec], ...] = tuple(PAPER_DEFAULTS.items())
    init_seed: tuple[int, ...] = DEFAULT_SEEDS
    order_seed: tuple[int, ...] = DEFAULT_SEEDS
    paired: bool = True
    replicate: tuple[int, ...] = (0,)  # replicate 0 is the trial itself; others repeat it exactly

    def spec(self, name: str) -> Spec | None:
        return dict(self.axes).get(name)

    def values(self, name: str) -> tuple[Any, ...]:
        """An axis' list of values (a range's ends for a range)."""
        spec = self.spec(name)
        if isinstance(spec, Range):
            return (spec.min, spec.max)
        return spec or ()

    @property
    def learning_rate(self) -> list[float]:
        return list(self.values("learning_rate"))

    @property
    def batch_size(self) -> list[int]:
        return list(self.values("batch_size"))

    @property
    def epochs(self) -> list[int]:
        return list(self.values("epochs"))

    def seed_pairs(self, repeat: int = 0) -> list[tuple[int, int]]:
        """(init_seed, order_seed) of every trial at a design point; a ccd centre repeat r > 0 gets seeds of
        its own, shifted by r × (the largest seed + 1)."""
        si, so = repeat * (max(self.init_seed) + 1), repeat * (max(self.order_seed) + 1)
        if self.paired:
            return [(i + si, o + so) for i, o in zip(self.init_seed, self.order_seed, strict=True)]
        return [(i + si, o + so) for i in self.init_seed for o in self.order_seed]

    def to_table(self) -> dict[str, Any]:
        """The grid as a study file would write it."""
        out: dict[str, Any] = {
            name: dataclasses.asdict(spec) if isinstance(spec, Range) else list(spec)
            for name, spec in self.axes
        }
        if self.paired:
            out["seed"] = list(self.init_seed)
        else:
            out.update(init_seed=list(self.init_seed), order_seed=list(self.order_seed))
        if self.replicate != (0,):
            out[REPLICATE] = list(self.replicate)
        return out

    @classmethod
    def of(cls, table: dict[str, Any]) -> Grid:
        """A grid from a [grid] table (as parsed TOML)."""
        return parse_grid(table)


@dataclass(frozen=True)
class Study:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grid: Grid = field(default_factory=Grid)
    design: DesignConfig = field(default_factory=DesignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: str = ""  # where the study came from: a file path or "builtin:NAME"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        out["grid"] = self.grid.to_table()
        return out

    @functools.cached_property
    def hash(self) -> str:
        """12 hex digits over the model, the data contents and the training settings (ftvar.study.study_hash),
        without the settings that are axes. The engine is left out (hashed as "plain", the only engine there
        was): engines differ in speed, not in what they fit; each record names the engine that ran it."""
        axes = {name for name, _ in self.grid.axes}
        model = {k: getattr(self.model, k) for k in HASHED_MODEL if f"model.{k}" not in axes}
        if model.get("tiny") is not None:
            model["tiny"] = dataclasses.asdict(self.model.tiny)  # type: ignore[arg-type]
        data = _hashed_data(self.data, axes)
        train = {k: getattr(self.train, k) for k in HASHED_TRAIN if f"train.{k}" not in axes}
        default = TrainConfig()
        for k in REMEDIES:  # only where they differ from the defaults: older studies keep their hashes
            if f"train.{k}" not in axes and getattr(self.train, k) != getattr(default, k):
                train[k] = getattr(self.train, k)
        if "engine" in train:
            train["engine"] = "plain"
        return study_hash(model, data, train)

    @functools.cached_property
    def data_hash(self) -> str:
        """What a tokenized cache depends on beside the axes: the data (file contents) and a trained
        tokenizer's vocabulary size — not the model or the training settings (ftvar.study.trial.data_key)."""
        axes = {name for name, _ in self.grid.axes}
        data = _hashed_data(self.data, axes)
        return study_hash({"vocab_size": self.model.vocab_size}, data, {}, training=None)

    @functools.cached_property
    def points(self) -> tuple[Point, ...]:
        """The design points (one value per hyperparameter axis), before the seeds cross them."""
        integer = {name for name, _ in self.grid.axes if SWEEPABLE.get(name) is int}
        return tuple(points(dict(self.grid.axes), self.design, integer))

    @functools.cached_property
    def axes(self) -> tuple[Axis, ...]:
        """The axes as the analysis sees them: the hyperparameter axes, then init_seed and order_seed."""
        out = []
        for name, _ in self.grid.axes:
            values = _distinct(p.as_dict()[name] for p in self.points)
            coding = self.coding(name, values)
            kind: Literal["numeric", "categorical"] = "categorical" if coding == "categorical" else "numeric"
            out.append(Axis(name, label(name), short(name), kind, coding, values))
        pairs = [pair for p in self.points for pair in self.grid.seed_pairs(p.repeat)]
        for i, name in enumerate(SEED_AXES):
            out.append(Axis(name, label(name), name, "seed", "categorical", _distinct(x[i] for x in pairs)))
        return tuple(out)

    @property
    def metric(self) -> str:
        """The study's primary metric, which the report leads with: analysis.metric, else the task's own
        (MCC for GLUE CoLA from the Hub), else accuracy."""
        if self.analysis.metric is not None:
            return self.analysis.metric
        if self.data.source == "hub" and self.data.hub is not None:
            return TASK_METRICS.get(self.data.hub_id_and_config(), "accuracy")
        return "accuracy"

    def coding(self, name: str, values: tuple[Any, ...]) -> Coding:
        """How the analysis codes an axis: [analysis.coding] where it names the axis, else the preset's."""
        c = self.analysis.coding
        if isinstance(c, dict):
            if name in c:
                return c[name]  # type: ignore[return-value]  # validated against AXIS_CODINGS
            return default_coding(name, values, "log")
        return default_coding(name, values, c)


def _hashed_data(data: DataConfig, axes: set[str]) -> dict[str, Any]:
    """The [data] table as the hashes see it: without the settings that are axes, and without the test split's
    keys while they are unset (so that adding them left every existing study's hash as it was)."""
    return {
        k: v
        for k, v in dataclasses.asdict(data).items()
        if f"data.{k}" not in axes and not (k in TEST_KEYS and v is None)
    }


def _distinct(values: Any) -> tuple[Any, ...]:
    """Distinct values in first-seen order; numbers sorted."""
    seen = list(dict.fromkeys(values))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return tuple(sorted(seen))
    return tuple(seen)


# ------------------------------------------------------------------------------------------------- the grid


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested tables → dotted names (`train = {warmup_ratio = [...]}` → "train.warmup_ratio"); a table whose
    keys are a range's ({min, max, scale, round}) is a value, not a level of names."""
    out = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) <= {"min", "max", "scale", "round"}:
            out += _flatten(value, f"{name}.")
        else:
            out.append((name, value))
    return out


def _coerce_value(name: str, value: Any, typ: type) -> Any:
    if isinstance(value, dict):
        raise StudyError(f"grid.{name} mixes a range and a list of values: give one or the other")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise StudyError(f"grid.{name} takes true/false values, got {value!r}")
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, typ) and not isinstance(value, bool):
        return value
    kind = {float: "numbers", int: "integers", str: "strings"}[typ]
    raise StudyError(f"grid.{name} takes {kind}, got {value!r}")


def _parse_spec(name: str, value: Any, typ: type) -> Spec:
    if isinstance(value, dict):
        if typ in (str, bool):
            raise StudyError(f"grid.{name} takes a list of values, not a range")
        missing = [k for k in ("min", "max") if k not in value]
        if missing:
            raise StudyError(f"grid.{name} is a range without {missing[0]}: write {{ min = …, max = … }}")
        try:
            r: Range = build(Range, value, f"grid.{name}")
        except StudyError as exc:
            raise StudyError(f"{exc} (a range is {{ min, max, scale = 'linear'|'log', round }})") from None
        return r
    items = value if isinstance(value, list) else [value]
    if not items:
        raise StudyError(f"grid.{name} is empty: give at least one value")
    kinds = {type(v) for v in items if not isinstance(v, dict)}
    if typ is str and kinds - {str}:
        raise StudyError(f"grid.{name} has values of mixed types ({items!r}): give strings only")
    if typ is int and any(isinstance(v, bool) for v in items):
        raise StudyError(f"grid.{name} takes integers, got {items!r}")
    values = tuple(_coerce_value(name, v, typ) for v in items)
    if len(set(values)) != len(values):
        raise StudyError(f"grid.{name} has repeated values: {list(values)}")
    return values


def _parse_seeds(name: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise StudyError(f"grid.{name} is empty: give at least one value")
    for v in items:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise StudyError(f"grid.{name} takes integers ≥ 0, got {v!r}")
    if len(set(items)) != len(items):
        raise StudyError(f"grid.{name} has repeated values: {items}")
    return tuple(items)


def parse_grid(table: Any) -> Grid:
    """A [grid] table → Grid. Unknown or non-sweepable names are errors that list the valid ones."""
    if not isinstance(table, dict):
        raise StudyError(f"[grid] must be a table, got {table!r}")
    specs: dict[str, Spec] = {}
    seeds: dict[str, tuple[int, ...]] = {}
    for name, value in _flatten(table):
        if name in specs or name in seeds:
            raise StudyError(f"grid.{name} is given twice: keep one list or one range")
        if name in SEED_KEYS or name == REPLICATE:
            seeds[name] = _parse_seeds(name, value)
        elif name in SWEEPABLE:
            specs[name] = _parse_spec(name, value, SWEEPABLE[name])
        else:
            valid = [*PAPER_AXES, *SEED_KEYS, REPLICATE, *OTHER_SWEEPABLE]
            raise StudyError(f"unknown key grid.{name}; valid keys in [grid]: {', '.join(valid)}")
    if "seed" in seeds and ("init_seed" in seeds or "order_seed" in seeds):
        raise StudyError(
            "grid.seed sets both init_seed and order_seed: give either seed, or init_seed and order_seed"
        )
    axes = {name: specs.pop(name, default) for name, default in PAPER_DEFAULTS.items()}
    axes.update(specs)
    replicate = tuple(sorted(seeds.pop(REPLICATE, (0,))))
    if "init_seed" in seeds or "order_seed" in seeds:
        init, order = seeds.get("init_seed", (0,)), seeds.get("order_seed", (0,))
        return Grid(tuple(axes.items()), init, order, paired=False, replicate=replicate)
    seed = seeds.get("seed", DEFAULT_SEEDS)
    return Grid(tuple(axes.items()), seed, seed, paired=True, replicate=replicate)


def _n_params(study: Study) -> int:
    """Parameters of the analysis' default fit over the design's axes: the polynomial of analysis.degree over
    the numeric axes that vary, and a level effect per extra level of each varying categorical axis."""
    numeric, levels = 0, 0
    for name, spec in study.grid.axes:
        if not isinstance(spec, Range) and len(spec) < 2:
            continue
        if study.coding(name, spec if not isinstance(spec, Range) else (spec.min,)) == "categorical":
            levels += len(spec) - 1 if not isinstance(spec, Range) else 1
        else:
            numeric += 1
    return math.comb(numeric + study.analysis.degree, study.analysis.degree) + levels


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
    if len(study.name) > MAX_NAME:
        raise StudyError(
            f"study name {study.name[:20]}… is {len(study.name)} characters long: at most {MAX_NAME} (it "
            "names the study's folder, its files and its SLURM jobs)"
        )
    _validate_train(study.train)
    _validate_model(study.model)
    _validate_data(study.data)
    _validate_analysis(study)
    validate_design(dict(study.grid.axes), study.design, _n_params(study))
    _validate_axes(study)
    _validate_layered(study)
    c = study.cluster
    if c.container is not None and c.container.split(":", 1)[0] not in ("apptainer", "docker", "podman"):
        raise StudyError(
            f"cluster.container {c.container!r} must be apptainer:PATH.sif, docker:IMAGE or podman:IMAGE"
        )
    if c.trials_per_task is not None and c.trials_per_task < 1:
        raise StudyError(f"cluster.trials_per_task must be ≥ 1, got {c.trials_per_task}")
    _check_choice(c.pack, PACK_MODES, "cluster.pack")


def _validate_train(t: TrainConfig) -> None:
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
    if not 0 <= t.eval_every < float("inf"):
        raise StudyError(
            "train.eval_every must be ≥ 0: an integer number of steps, a fraction of an epoch as a float "
            f"(1.0: once an epoch), or 0 (only at the end); got {t.eval_every}"
        )
    if t.reinit_layers < 0:
        raise StudyError(f"train.reinit_layers must be ≥ 0 (0: none re-initialised), got {t.reinit_layers}")
    if not 0 < t.layer_decay <= 1:
        raise StudyError(f"train.layer_decay must be in (0, 1] (1: no decay), got {t.layer_decay}")


def _validate_analysis(study: Study) -> None:
    a = study.analysis
    names = [name for name, _ in study.grid.axes]
    if isinstance(a.coding, dict):
        for name, coding in a.coding.items():
            if name not in names:
                raise StudyError(
                    f"analysis.coding names {name!r}, which is not an axis of this study; axes: "
                    + ", ".join(names)
                )
            _check_choice(coding, AXIS_CODINGS, f"analysis.coding.{name}")
            values = study.grid.values(name)
            if coding in ("log10", "log2") and not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values
            ):
                raise StudyError(f"analysis.coding.{name} = {coding!r} needs values > 0, got {list(values)}")
    else:
        _check_choice(a.coding, CODINGS, "analysis.coding")
    _check_choice(a.baseline, BASELINES, "analysis.baseline")
    _check_choice(a.seed_model, SEED_MODELS, "analysis.seed_model")
    if not 1 <= a.degree <= 3:
        raise StudyError(f"analysis.degree must be 1, 2 or 3, got {a.degree}")
    if a.bootstrap < 0:
        raise StudyError(f"analysis.bootstrap must be ≥ 0 (0 turns the bootstrap off), got {a.bootstrap}")
    if a.metric is not None:
        _check_choice(a.metric, PRIMARY_METRICS, "analysis.metric")
    if not 0.5 < a.near_degenerate <= 1:
        raise StudyError(
            f"analysis.near_degenerate = {a.near_degenerate:g}: give the share of eval rows predicted as one "
            "class from which a run is flagged near-degenerate, above 0.5 and at most 1 (default 0.95)"
        )
    if a.expected_max_by is not None and a.expected_max_by not in names:
        raise StudyError(
            f"analysis.expected_max_by = {a.expected_max_by!r} is not an axis of this study; axes: "
            + ", ".join(names)
        )


def _validate_axes(study: Study) -> None:
    """Every value an axis takes in the design must be a valid value of its setting."""
    for name, _ in study.grid.axes:
        values = _distinct(p.as_dict()[name] for p in study.points)
        key = f"grid.{name}"
        if name in PAPER_AXES:
            _check_positive(list(values), key)
            continue
        section, setting = name.split(".", 1)
        for value in values:
            try:
                if section == "train":
                    _validate_train(dataclasses.replace(study.train, **{setting: value}))
                elif section == "data":
                    _validate_data(dataclasses.replace(study.data, **{setting: value}))
                else:
                    if study.model.tiny is not None:
                        raise StudyError(
                            "model.tiny builds a random-init model and ignores model.name_or_path: "
                            "a model axis needs model folders or Hub ids without model.tiny"
                        )
                    _validate_model(dataclasses.replace(study.model, **{setting: value}))
            except StudyError as exc:
                raise StudyError(f"{key} = {value!r}: {exc}") from None


def _axis_or_fixed(study: Study, section: str, name: str) -> tuple[Any, ...]:
    """The values a setting takes in the study: its axis' values, else its fixed value."""
    key = f"{section}.{name}"
    if key in dict(study.grid.axes):
        return _distinct(p.as_dict()[key] for p in study.points)
    return (getattr(getattr(study, section), name),)


def model_config(name_or_path: str) -> dict[str, Any] | None:
    """A model's config.json (a local folder's, or a Hub model's in the local Hugging Face cache), or None
    when it cannot be read here."""
    path = Path(name_or_path) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json")
        except Exception:  # an id the hub library rejects, or no hub library: not known here
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _validate_layered(study: Study) -> None:
    """train.reinit_layers and train.layer_decay need a model whose layers ftvar knows how to find, and no
    more layers re-initialised than it has; checked here where the model's config.json can be read (a local
    folder, the Hub cache, a tiny model), else when the trial builds the model."""
    reinit = max(int(v) for v in _axis_or_fixed(study, "train", "reinit_layers"))
    decay = any(float(v) != 1.0 for v in _axis_or_fixed(study, "train", "layer_decay"))
    if not reinit and not decay:
        return
    setting = "train.reinit_layers" if reinit else "train.layer_decay"
    for model in _axis_or_fixed(study, "model", "name_or_path"):
        if study.model.tiny is not None:
            model, kind, layers = "model.tiny", "distilbert", study.model.tiny.layers
        else:
            config = model_config(str(model))
            if config is None:
                continue
            kind = str(config.get("model_type", ""))
            found = config.get("num_hidden_layers", config.get("n_layers"))
            layers = found if isinstance(found, int) else 0
        if kind not in LAYERED_MODELS:
            raise StudyError(
                f"{setting} does not know how to find the encoder layers of a {kind or 'unknown'!r} model "
                f"({show_value(model)}); it knows: {', '.join(LAYERED_MODELS)} (MiniLM-style models are bert)"
            )
        if layers and reinit > layers:
            raise StudyError(
                f"train.reinit_layers = {reinit}, but {show_value(model)} has only {layers} encoder layers"
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
    if isinstance(d.text_column, tuple) and len(d.text_column) != 2:
        raise StudyError(
            f"data.text_column takes one column or a sentence pair of two, got {len(d.text_column)}: "
            f"{list(d.text_column)}"
        )
    if len(set(d.text_columns)) < len(d.text_columns):
        raise StudyError(f"data.text_column names one column twice: {list(d.text_columns)}")
    if d.label_column in d.text_columns:
        raise StudyError(f"data.label_column {d.label_column!r} is also a text column: keep them apart")
    for key, col in [*(("text_column", c) for c in d.text_columns), ("label_column", d.label_column)]:
        if d.header and isinstance(col, int) and d.source == "files":
            raise StudyError(f"data.{key} is an index ({col}) but data.header = true: use the column name")
        if not d.header and not isinstance(col, int):
            raise StudyError(f"data.{key} must be a 0-based index when data.header = false, got {col!r}")
    if d.max_length < 8 or d.train_limit < 0 or d.eval_limit < 0:
        raise StudyError("data.max_length must be ≥ 8 and data.train_limit/eval_limit ≥ 0")
    _validate_test(d)


def _validate_test(d: DataConfig) -> None:
    """The held-out test split: data.test (a file), data.test_split (a Hub split) or data.test_fraction."""
    given = [f"data.{k}" for k in TEST_KEYS if getattr(d, k) is not None]
    if len(given) > 1:
        raise StudyError(
            f"{' and '.join(given)} are both set: give one test split (a file, a Hub split or a fraction)"
        )
    if d.test is not None:
        if d.source != "files":
            raise StudyError(
                "data.test is a file beside data.train and data.eval: "
                + (
                    "use data.test_split for a Hub split"
                    if d.source == "hub"
                    else "use data.test_fraction with synthetic data"
                )
            )
        if not Path(d.test).is_file():
            raise StudyError(f"data.test: file {d.test} does not exist")
        d.file_format(d.test)
        if Path(d.test).resolve() in (Path(d.eval or "").resolve(), Path(d.train or "").resolve()):
            raise StudyError("data.test is the eval or train file itself: a test split must be held out")
    if d.test_split is not None:
        if d.source != "hub":
            raise StudyError(
                "data.test_split names a Hub split: with local files give data.test, else data.test_fraction"
            )
        if d.test_split in (d.train_split, d.eval_split):
            raise StudyError(
                f"data.test_split = {d.test_split!r} is the train or eval split: a test split is held out"
            )
    if d.test_fraction is not None and not 0 < d.test_fraction < 1:
        raise StudyError(
            f"data.test_fraction = {d.test_fraction:g}: give a share of the eval rows strictly between 0 and "
            "1 (e.g. 0.5), or leave it out for no test split"
        )


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
        text = resources.files("ftvar.study.builtins").joinpath(f"{spec}.toml").read_text()
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
    if isinstance(data.get("grid"), dict):
        _resolve_model_axis(data["grid"], base)
    for item in overrides:
        key, value = parse_override(item)
        patch: dict[str, Any] = {}
        _set_dotted(patch, key, value)
        if key in PATH_KEYS:
            _resolve_paths(patch, cwd, (key,))
        if key.startswith("grid.") and isinstance(patch.get("grid"), dict):
            _resolve_model_axis(patch["grid"], cwd)
            _override_axis(data, key)
        _set_dotted(data, key, _get_dotted(patch, key))
    if "name" not in data:
        raise StudyError(f'study {spec} has no name: add name = "..." at the top')
    if isinstance(data.get("analysis"), dict) and "reference" in data["analysis"]:
        raise StudyError(
            "analysis.reference is gone: the paired fit it chose a reference for is replaced by the fit that "
            "blocks on the seeds (it compares configurations within seeds); delete the key"
        )
    grid_table = data.pop("grid", {})
    if isinstance(data.get("analysis"), dict) and isinstance(data["analysis"].get("coding"), dict):
        data["analysis"]["coding"] = dict(_flatten(data["analysis"]["coding"]))
    study: Study = build(Study, data, "")
    grid = parse_grid(grid_table)
    _check_fixed_and_axis(data, grid)
    study = dataclasses.replace(study, grid=grid, source=source)
    validate(study)
    return study


def _resolve_model_axis(grid: dict[str, Any], base: Path) -> None:
    """Model folders in a model axis resolve like model.name_or_path (Hub ids stay as they are)."""
    for holder, key in ((grid, "model.name_or_path"), (grid.get("model"), "name_or_path")):
        if not isinstance(holder, dict) or key not in holder:
            continue
        values = holder[key] if isinstance(holder[key], list) else [holder[key]]
        resolved = []
        for value in values:
            if isinstance(value, str):
                patch = {"model": {"name_or_path": value}}
                _resolve_paths(patch, base, ("model.name_or_path",))
                value = patch["model"]["name_or_path"]
            resolved.append(value)
        holder[key] = resolved


def _override_axis(data: dict[str, Any], key: str) -> None:
    """An override wins over the file: a seed axis replaces the other seed form, and an axis replaces the
    same setting's fixed value."""
    grid = data.get("grid")
    name = key.removeprefix("grid.")
    if isinstance(grid, dict):
        if name in ("init_seed", "order_seed") and "seed" in grid:
            seed = grid.pop("seed")
            other = "order_seed" if name == "init_seed" else "init_seed"
            grid.setdefault(other, seed)
        elif name == "seed":
            grid.pop("init_seed", None)
            grid.pop("order_seed", None)
    section, _, setting = name.partition(".")
    if section in ("train", "data", "model") and isinstance(data.get(section), dict):
        data[section].pop(setting, None)


def _check_fixed_and_axis(data: dict[str, Any], grid: Grid) -> None:
    for name, _ in grid.axes:
        section, _, setting = name.partition(".")
        if setting and isinstance(data.get(section), dict) and setting in data[section]:
            raise StudyError(
                f"{name} is both an axis ([grid]) and a fixed value ([{section}] {setting} = "
                f"{data[section][setting]!r}): keep one"
            )


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node
