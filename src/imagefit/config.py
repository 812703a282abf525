"""One typed config tree: YAML in, dotted ``--set`` overrides, validated, YAML out.

Every default lives here and nowhere else. Unknown keys and wrong types fail loudly with the
dotted key name, because a typo in an experiment config silently ignored costs a whole run.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imagefit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEED_LIMIT = 2**63  # numpy's SeedSequence takes no negative seed, torch none of 2**64 or more


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
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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
    name: str = "resnet18"
    init: str = "scratch"  # scratch | path to imagefit checkpoint or weights file | hub:<name>
    drop_rate: float = Field(0.0, ge=0, lt=1)


class FinetuneConfig(Section):
    strategy: Literal["full", "freeze", "partial"] = "full"
    partial_stages: int = Field(2, ge=1)  # `partial`: train the last N stages + head
    freeze_epochs: int = Field(0, ge=0)  # two-stage: head only for K epochs, then `strategy`
    unfreeze_lr_factor: float = Field(0.1, gt=0)  # lr multiplier once unfrozen
    layer_decay: float | None = Field(None, gt=0, le=1)  # layer-wise lr decay (timm)


class OptimConfig(Section):
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    # auto: fused kernels where the optimizer and device have them (CUDA, CPU), else foreach
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto"


class ScheduleConfig(Section):
    name: str = "cosine"
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
    # balanced: weight the training loss by n / (classes * count[class]) of the train split
    class_weights: Literal["none", "balanced"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    monitor: str = "val_accuracy"  # selects best.pt, drives early stopping and plateau
    patience: int | None = Field(None, ge=1)  # early stopping; None turns it off
    min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)  # also keep epoch_NNN.pt every N epochs; 0 = never
    deterministic: bool = False
    limit_batches: int | None = Field(None, ge=1)  # cap batches per epoch and per evaluation
    threads: int | None = Field(None, ge=1)

    @field_validator("amp", mode="before")
    @classmethod
    def _off_is_a_word(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads `amp: off` as False

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, value: str) -> str:
        if not value.startswith(("val_", "train_")):
            raise ValueError("must name a history column such as val_accuracy or val_loss")
        return value


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

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe: tuples become lists)."""
        return self.model_dump(mode="json")


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``1e-3``, ``true``, ``[1, 2]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_text_field(parts: list[str]) -> bool:
    """True when ``parts`` names a text field: ``str``, ``str | None`` or a Literal of words."""
    model: Any = Config
    for part in parts:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        model = fields[part].annotation
    if get_origin(model) is Literal:
        return all(isinstance(choice, str) for choice in get_args(model))
    return model is str or (get_origin(model) in (Union, UnionType) and str in get_args(model))


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``key.sub=value`` to a nested dict in place.

    A text field takes the text as written when YAML would read a number or a boolean:
    ``output.name=2024`` names a run "2024" and ``train.amp=off`` is "off", not False
    (``null`` still means None).
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{assignment}' is not of the form key.sub=value")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    value = parse_value(raw)
    if isinstance(value, bool | int | float) and _is_text_field(parts):
        value = raw.strip()
    node[parts[-1]] = value


def config_from_dict(tree: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


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


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(config), encoding="utf-8")
