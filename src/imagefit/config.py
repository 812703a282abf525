"""One typed config tree: YAML in, dotted ``--set`` overrides, validated, YAML out.

Every default lives here and nowhere else. Unknown keys and wrong types fail loudly with the
dotted key name, because a typo in an experiment config silently ignored costs a whole run.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from imagefit import dotted
from imagefit.errors import ConfigError
from imagefit.fileio import atomic_write
from imagefit.model_names import HUB_PREFIX, check_hub_init, check_model_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEED_LIMIT = 2**63  # numpy's SeedSequence takes no negative seed, torch none of 2**64 or more

# Closed sets whose registries live in layers that import torch; tests prove each equals its
# registry, so a typo fails when the file loads instead of after the data is decoded.
OptimizerName = Literal["adam", "adamw", "sgd"]  # train.optim.OPTIMIZERS
ScheduleName = Literal["none", "cosine", "step", "plateau"]  # train.optim.SHAPES
TtaName = Literal["none", "flip", "flip+crops"]  # evaluate.tta.VIEWS
# The per-epoch history columns (fit's history row) that best.pt, early stopping, plateau
# schedules and searches can follow.
HistoryMetric = Literal[
    "val_accuracy",
    "val_loss",
    "val_top5_accuracy",
    "val_f1_macro",
    "val_map",  # multi-label: mean average precision over the classes
    "train_accuracy",
    "train_loss",
]


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str | None = None  # ImageFolder root: <class>/<img> or {train,val,test}/<class>/<img>
    image_size: int = Field(224, ge=8)
    augment: bool = True  # master switch; details in the `augment` section
    # 0: no validation split (e.g. pretraining on one image per class); best.pt then follows
    # train.monitor, which must name a train_ column
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    split_manifest: str | None = None  # use an existing split.json instead of splitting
    # a label file (.csv, .jsonl or .parquet) instead of class folders: one row per image, its
    # path (relative to data.root, or absolute inside it) and its label; a split column, when
    # the file has one, fixes the split (train/val/test), else the rows are split as a folder
    labels: str | None = None
    path_column: str = "path"  # data.labels: the column of image paths
    label_column: str = "label"  # data.labels: the column of class names
    split_column: str = "split"  # data.labels: the optional column naming each row's split
    # single: one class per image (softmax); multilabel: any number of classes per image
    # (sigmoid per class, thresholds tuned on val); needs data.labels
    task: Literal["single", "multilabel"] = "single"
    label_sep: str = "|"  # multilabel: separates an image's labels (checked when data is built)
    min_size: int = Field(1, ge=1)  # images smaller than this (either side) are bad input
    on_bad: Literal["error", "skip"] = "error"
    skip_list: str | None = None  # a file listing image paths to leave out (counted, logged)
    # links in the dataset: inside: follow those that stay inside data.root; follow: also those
    # that leave it; skip: none. A file is counted once whatever the links (imagefit.data.folder)
    links: Literal["inside", "follow", "skip"] = "inside"
    # auto: decode once into the image cache file; held in RAM when it fits memory_budget_mb,
    # else read from the memory-mapped file per batch, so RAM stays flat (files stream only if
    # the cache folder cannot be written); always: as auto, but an unwritable cache folder
    # decodes into RAM whatever the size; mmap: always read from the file per batch (never
    # held in RAM); never: stream from files, decoded every epoch by DataLoader workers
    cache: Literal["auto", "always", "mmap", "never"] = "auto"
    # pillow: the canonical pixels; torchvision: JPEGs decoded by torchvision.io and all images
    # resized by torch (2-4x faster; up to 1 level off Pillow on a few % of pixels)
    decoder: Literal["pillow", "torchvision"] = "pillow"
    cache_dir: str | None = None  # default: $IMAGEFIT_CACHE or ~/.cache/imagefit
    memory_budget_mb: int = Field(
        4096, ge=1
    )  # decoded data larger than this: read from the cache file per batch
    num_workers: int = Field(2, ge=0)
    # shuffle: each image once per epoch; balanced: draw the epoch (same length) with
    # replacement, each class equally likely, for imbalanced data
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    # Preprocessing. None: not set here, so chosen when the run starts
    # (imagefit.data.preprocessing): the timm pretrained config of the weights when they come
    # from timm (model.init hub:<name>, or a .safetensors/.pth/.bin weights file of a timm
    # architecture), else the defaults named below; summary.json's `preprocessing` block
    # records which applied and why. None rather than a default value, so that a config
    # written into a run folder and read back on resume still says "not set".
    mean: tuple[float, float, float] | None = None  # default: ImageNet's
    std: tuple[float, float, float] | None = None  # default: ImageNet's
    # evaluation: shorter side to int(image_size / crop_pct), then a centred image_size crop;
    # default 0.875 at image_size >= 96 (photos), 1.0 below (digits, CIFAR: nothing to spare)
    crop_pct: float | None = Field(None, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic"] | None = None  # antialiased; default bilinear
    # training store: each image whole, its longer side at store_size on a square canvas, so
    # the random-resized crop sees the full image; default image_size when crop_pct is 1, else
    # ceil(int(image_size / crop_pct) * 4 / 3) (a 4:3 photo keeps the evaluation resolution)
    store_size: int | None = Field(None, ge=8)
    # WebDataset tar shards (`imagefit data shards`) instead of files: a folder or any fsspec
    # URL holding their index.json, or a brace pattern of one split's shards
    # ("s3://bucket/train-{000000..000123}.tar"; the index must sit beside them)
    shards: str | None = None
    shuffle_buffer: int = Field(1000, ge=0)  # shards: samples each loader worker shuffles among
    # a Hugging Face dataset instead of files: a save_to_disk folder, a local parquet/script
    # folder, or a hub name (read through the `datasets` cache; HF_DATASETS_OFFLINE=1 works)
    hf: str | None = None
    # the dataset's split to use, split train/val/test by the fractions above; unset: its own
    # train/validation/test splits (a missing validation is carved from train)
    hf_split: str | None = None
    hf_image_column: str = "image"
    hf_label_column: str = "label"  # a ClassLabel column: its names are the classes

    # folder: images under data.root; fractal: formula-driven images rendered on the fly from
    # the category CSVs in data.fractal_params, new instances every epoch (pretraining that is
    # not limited by what was written to disk; imagefit.datasets.fractal.source)
    source: Literal["folder", "fractal"] = "folder"
    fractal_params: str | None = (
        None  # folder of N x 7 category CSVs (imagefit data fractal-search)
    )
    fractal_instances: int = Field(100, ge=1)  # images per category per epoch
    # per instance, a random row of this FractalDB weights file ("0.4", "0.1" or a CSV path)
    # scales the maps' a..f; "ofdb": 2D-OFDB's one row (a x 0.2); "ones": no fluctuation
    fractal_weights: str = "0.4"
    fractal_draw: Literal["patch_gray", "point_gray", "patch_color", "point_color"] = "patch_gray"
    fractal_flips: int = Field(4, ge=1, le=4)  # a random one of the first N FractalDB flips
    fractal_points: int = Field(20_000, ge=2)  # chaos-game iterations per image
    fractal_render_size: int | None = Field(None, ge=8)  # canvas px; default data.image_size

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        # Either one replaces data.root (which may stay set, e.g. from a base config).
        if self.shards and self.hf:
            raise ValueError("data.shards and data.hf name two datasets: set one")
        if (self.shards or self.hf) and self.decoder != "pillow":
            raise ValueError("data.decoder=torchvision decodes files; shards and hf use pillow")
        if (self.shards or self.hf) and (self.sampler != "shuffle" or self.skip_list):
            raise ValueError(
                "data.sampler=balanced and data.skip_list need files: not with shards or hf"
            )
        return self


class AugmentConfig(Section):
    """Training-time augmentation (only used when ``data.augment`` is true)."""

    scale: tuple[float, float] = (1.0, 1.0)  # random-resized-crop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = Field(0.125, ge=0, lt=1)  # max shift as a fraction of the side
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    randaugment: str | None = None  # timm spec such as "rand-m9-mstd0.5"
    random_erasing: float = Field(0.0, ge=0, le=1)
    mixup: float = Field(0.0, ge=0)  # mixup alpha; 0 turns it off
    cutmix: float = Field(0.0, ge=0)  # cutmix alpha; 0 turns it off


class ModelConfig(Section):
    name: str = "resnet18"  # imagefit's own models, or any timm architecture
    init: str = "scratch"  # scratch | path to imagefit checkpoint or weights file | hub:<name>
    drop_rate: float = Field(0.0, ge=0, lt=1)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("init")
    @classmethod
    def _known_hub_model(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(HUB_PREFIX):
            return check_hub_init(value, info.data.get("name"))
        return value  # a weights file may not exist yet (a pipeline's pretraining makes it)


class FinetuneConfig(Section):
    strategy: Literal["full", "freeze", "partial"] = "full"
    partial_stages: int = Field(2, ge=1)  # `partial`: train the last N stages + head
    freeze_epochs: int = Field(0, ge=0)  # two-stage: head only for K epochs, then `strategy`
    unfreeze_lr_factor: float = Field(0.1, gt=0)  # lr multiplier once unfrozen
    layer_decay: float | None = Field(None, gt=0, le=1)  # layer-wise lr decay (timm)


class OptimConfig(Section):
    name: OptimizerName = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    # auto: fused kernels where the optimizer and device have them (CUDA, CPU), else foreach
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto"


class ScheduleConfig(Section):
    name: ScheduleName = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of lr
    step_size: int = Field(10, ge=1)  # `step`
    gamma: float = Field(0.1, gt=0, le=1)  # `step`
    plateau_patience: int = Field(3, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)  # per process: torchrun with N processes trains on N x this
    eval_batch_size: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    device: str = "auto"  # auto (cuda -> mps -> cpu) | cpu | cuda | cuda:1 | mps
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (slow first steps, faster later ones)
    sync_bn: bool = False  # distributed: batch-norm statistics over the global batch
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # the multi-label loss: bce (binary cross-entropy per class) or asl (asymmetric loss, which
    # down-weights the many easy negatives); single-label training uses cross-entropy
    loss: Literal["bce", "asl"] = "bce"
    # balanced: weight the training loss by n / (classes * count[class]) of the train split
    class_weights: Literal["none", "balanced"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    # micro-batches per optimizer step: the effective batch is batch_size x this (x processes)
    grad_accum_steps: int = Field(1, ge=1)
    # exponential moving average of the weights (timm's ModelEmaV3, with its warmup over
    # optimizer steps); 0 = off. Validated each epoch beside the raw weights; best.pt holds
    # whichever train.monitor prefers
    ema_decay: float = Field(0.0, ge=0, lt=1)
    # test-time augmentation for the final test evaluation (metrics with and without it)
    tta: TtaName = "none"
    monitor: HistoryMetric = "val_accuracy"  # selects best.pt, drives early stopping, plateau
    patience: int | None = Field(None, ge=1)  # early stopping; None turns it off
    min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)  # also keep epoch_NNN.pt every N epochs; 0 = never
    deterministic: bool = False
    limit_batches: int | None = Field(None, ge=1)  # cap batches per epoch and per evaluation
    threads: int | None = Field(None, ge=1)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
            raise ValueError(f"'{value}' is not one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _off_is_a_word(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads `amp: off` as False


class TrackConfig(Section):
    """Where runs are logged besides the run folder (CSV/JSON there are always written)."""

    mlflow: bool = False
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else a local ./mlruns store
    mlflow_experiment: str = "imagefit"
    tensorboard: bool = False


class ExportConfig(Section):
    """Export after training (also available later as ``imagefit export``)."""

    onnx: bool = False
    opset: int = Field(17, ge=7)
    int8: bool = False


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = None  # default: <model>-<timestamp>


class Config(Section):
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    track: TrackConfig = TrackConfig()
    export: ExportConfig = ExportConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _multilabel_monitor(self) -> Config:
        if self.data.task == "multilabel" and "monitor" not in self.train.model_fields_set:
            self.train.monitor = "val_map"  # accuracy of a top-1 guess means nothing here
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe: tuples become lists)."""
        return self.model_dump(mode="json")


def check_task(cfg: Config) -> None:
    """Refuse settings that assume one class per image in a multi-label config.

    Checked when the data is built, not when the file loads: each key is valid on its own, and
    a config may be loaded and overridden step by step before it is used."""
    if cfg.data.task != "multilabel":
        return
    if not cfg.data.labels:
        raise ConfigError(
            "data.task=multilabel needs data.labels, a label file listing each image's "
            "labels (class folders give one class per image)"
        )
    if not cfg.data.label_sep.strip():
        raise ConfigError(
            f"data.label_sep={cfg.data.label_sep!r}: multi-label rows need a separator that is "
            "not empty or blank, such as '|'"
        )
    mixing = cfg.data.augment
    refused = {
        "augment.mixup": (mixing and cfg.augment.mixup > 0, "mixup mixes one class per image"),
        "augment.cutmix": (mixing and cfg.augment.cutmix > 0, "cutmix mixes one class per image"),
        "data.sampler": (cfg.data.sampler == "balanced", "classes are not exclusive"),
        "train.class_weights": (cfg.train.class_weights != "none", "classes are not exclusive"),
        "train.label_smoothing": (cfg.train.label_smoothing > 0, "it smooths a softmax"),
        # the per-class thresholds are tuned on val for the raw weights
        "train.ema_decay": (cfg.train.ema_decay > 0, "thresholds are tuned for the raw weights"),
        "train.tta": (cfg.train.tta != "none", "TTA averages softmax probabilities"),
    }
    for key, (wrong, why) in refused.items():
        if wrong:
            value = dotted.get(cfg.to_dict(), key)
            raise ConfigError(f"{key}={value} does not go with data.task=multilabel: {why}")


# --------------------------------------------------------------------------- errors

Model = TypeVar("Model", bound=BaseModel)


def _strip(annotation: Any) -> Any:
    """The type inside ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not NoneType]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _fields(annotation: Any) -> dict[str, Any] | None:
    """The fields of a pydantic model type, else None."""
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields
    return None


def annotation_at(model: Any, path: Sequence[str | int]) -> Any:
    """The declared type at ``path`` (field names, list positions, mapping keys) in ``model``;
    None where the path leaves the declared tree."""
    node = model
    for part in path:
        fields = _fields(node)
        inner = _strip(node)
        if fields is not None:
            if not isinstance(part, str) or part not in fields:
                return None
            node = fields[part].annotation
        elif get_origin(inner) is dict:
            node = get_args(inner)[1] if get_args(inner) else Any
        elif get_origin(inner) in (list, tuple) and isinstance(part, int):
            args = [a for a in get_args(inner) if a is not Ellipsis]
            node = args[min(part, len(args) - 1)] if args else Any
        else:
            return None
    return node


def render_key(path: Sequence[str | int]) -> str:
    """``("variants", 0, "set")`` -> ``variants[0].set``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unknown_key_message(key: str, section: str, choices: list[str]) -> str:
    """``unknown key 'train.epoch' (did you mean epochs?; train has: ...)``."""
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, choices, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown key '{key}' ({hint}{section or 'the top level'} has: {', '.join(choices)})"


def _declared_path(model: Any, path: list[str | int]) -> list[str | int]:
    """``path`` without pydantic's union-member tags (``params.optim.lr.float`` names the
    member of ``float | int | categorical`` it tried), so the key reads as the file has it."""
    if model is None:
        return path
    kept: list[str | int] = []
    for part in path:
        node = _strip(annotation_at(model, kept))
        members = get_args(node) if get_origin(node) in (Union, UnionType) else ()
        if isinstance(part, str) and members and all(_fields(m) is not None for m in members):
            continue
        kept.append(part)
    return kept


def describe_errors(error: ValidationError, source: str, model: Any = None) -> str:
    """One line per problem: ``SOURCE: dotted.key: what is wrong (got VALUE)``.

    ``model`` (the validated type) lets an unknown key list the keys its section has.
    """
    lines = []
    for item in error.errors():
        path = _declared_path(model, [p for p in item["loc"] if p != "[key]"])
        key = render_key(path)
        if item["type"] == "extra_forbidden":
            fields = _fields(annotation_at(model, path[:-1])) if model is not None else None
            if fields is not None:
                lines.append(
                    f"{source}: {unknown_key_message(key, render_key(path[:-1]), list(fields))}"
                )
            else:
                lines.append(f"{source}: unknown key '{key}'")
            continue
        if item["type"] == "missing":
            lines.append(f"{source}: {key}: required, not given")
            continue
        error_ = (item.get("ctx") or {}).get("error")
        message = str(error_) if item["type"] == "value_error" and error_ else item["msg"]
        value = item.get("input")
        named = repr(value) in message
        # a whole section's check speaks for itself: repeating the section would bury it
        shown = "" if named or isinstance(value, dict) else f" (got {_shown(value)})"
        lines.append(f"{source}: {key + ': ' if key else ''}{message}{shown}")
    return "\n".join(lines)


def validate(model: type[Model], tree: Any, source: str) -> Model:
    """``model`` validated from ``tree``; problems become one ConfigError, a line each."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source, model)) from None


# --------------------------------------------------------------------------- keys and --set


def key_problem(key: str, model: Any = None) -> str | None:
    """Why ``key`` does not name a value (not a section) of ``model`` (the run config by
    default), or None when it does."""
    model = Config if model is None else model
    parts = key.split(".")
    node: Any = model
    for depth, part in enumerate(parts):
        fields = _fields(node)
        if fields is None:
            return (
                f"'{key}' is not a config key ('{'.'.join(parts[:depth])}' is a value, "
                "not a section)"
            )
        if part not in fields:
            return unknown_key_message(key, ".".join(parts[:depth]), list(fields)).replace(
                "unknown key", "unknown config key", 1
            )
        node = fields[part].annotation
    if _fields(node) is not None:
        return f"'{key}' is a section; name one of its keys ({key}.<key>)"
    return None


def _config_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


# A dotted key naming one value of the run config (``optim.lr``), checked where it is read.
ConfigKey = Annotated[str, AfterValidator(_config_key)]


def _assignment_list(value: Any) -> Any:
    """A list of ``key=value`` strings (the ``--set`` form) as a mapping, typed alike."""
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        try:
            return dict(parse_override(item) for item in value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


# Config overrides in a file (a sweep's or pipeline's ``set:``): dotted key -> value, or a list
# of ``key=value`` strings read as ``--set`` reads them.
ConfigOverrides = Annotated[dict[ConfigKey, Any], BeforeValidator(_assignment_list)]

_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def _takes_text(annotation: Any) -> bool:
    """True for ``str``, ``str | None``, a Literal of words, or a union holding one of these."""
    annotation = _strip(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return all(isinstance(choice, str) for choice in get_args(annotation))
    if origin in (Union, UnionType):
        return any(_takes_text(a) for a in get_args(annotation) if a is not NoneType)
    return annotation is str


def parse_value(text: str, annotation: Any = None) -> Any:
    """An override's value, typed by the field it sets (``annotation``).

    Text fields keep a scalar as written (``data.root=2024`` is "2024", ``train.amp=off`` is
    "off"; quotes are removed, ``null`` is None); other fields read it as YAML would
    (``1e-3``, ``true``, ``[1, 2]``). Without an annotation, YAML decides.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    # A scalar YAML reads as a number, boolean or date is the text as written; a list or a
    # mapping stays one, so that validation refuses it for a text field.
    scalar = not isinstance(value, str | list | dict)
    if scalar and annotation is not None and _takes_text(annotation):
        return None if value is None and text.strip() in _YAML_NULLS else text.strip()
    number = _strip(annotation)
    if isinstance(value, str) and number in (int, float):
        try:  # YAML 1.1 reads 1e-3 (no dot) as text; a number field means the number
            return number(value)
        except ValueError:
            return value  # validation names the key and the value
    return value


def parse_override(assignment: str, model: Any = None) -> tuple[str, Any]:
    """``"key.sub=value"`` -> ``("key.sub", typed value)``, the value typed by ``model``'s
    field at ``key.sub`` (the run config by default). Used for every ``--set``."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{assignment}' is not of the form key.sub=value")
    annotation = annotation_at(Config if model is None else model, dotted.split(key))
    return key, parse_value(raw, annotation)


def apply_override(tree: dict[str, Any], assignment: str, model: Any = None) -> None:
    """Apply ``key.sub=value`` to the nested dict ``tree`` in place (see parse_override)."""
    key, value = parse_override(assignment, model)
    try:
        dotted.set_key(tree, key, value)
    except ConfigError as exc:
        raise ConfigError(f"override '{assignment}': {exc}") from None


# --------------------------------------------------------------------------- files


def config_from_dict(tree: dict[str, Any], source: str = "<dict>") -> Config:
    return validate(Config, tree, source)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    return tree


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- YAML file <- ``key.sub=value`` overrides, validated once at the end."""
    tree = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return config_from_dict(tree, source=str(path) if path else "overrides")


# The keys that name files outside the run folder. A run stores them absolute, so that a run
# resumed, evaluated or exported from another working folder (or after its own folder moved)
# reads the same files; the run's own files are found from its folder instead.
DATA_PATH_KEYS = ("data.root", "data.split_manifest", "data.skip_list", "data.cache_dir")


def absolute_paths(config: Config) -> None:
    """Make :data:`DATA_PATH_KEYS` and a file ``model.init`` absolute, in place."""
    for key in DATA_PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value:
            setattr(getattr(config, section), name, str(Path(value).expanduser().absolute()))
    init = config.model.init
    if init != "scratch" and not init.startswith("hub:"):
        config.model.init = str(Path(init).expanduser().absolute())


def write_overrides(path: str | Path, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key.sub=value`` overrides to the YAML file ``path`` itself (as ``--set`` would
    to a run) and write it back; the file keeps its own keys (defaults stay implicit), but
    not its comments. The result is validated before the file is replaced."""
    tree = read_yaml(path)
    for assignment in overrides:
        apply_override(tree, assignment)
    config = config_from_dict(tree, source=str(path))
    atomic_write(path, yaml.safe_dump(tree, sort_keys=False), what="the config")
    return config


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    atomic_write(path, dump_config(config), what="the config")
