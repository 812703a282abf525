"""What a model says about itself, validated before anything uses it.

A checkpoint's ``meta``, an exported ONNX file's ``imagefit.*`` metadata and the model a server
loads all describe the same things: architecture, class names, input size, normalisation and,
once calibrated, a temperature. Files come from anywhere, so every value is checked here, in
one place, before it sizes an allocation or labels a prediction: an ``image_size`` of 10**6
would otherwise allocate gigabytes, a ``std`` of 0 divide by zero, a class list shorter than
the output index past its end. A bad value is one :class:`MetadataError` line naming the file
and the key.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imagefit.errors import MetadataError

# Bounds of what any imagefit model can sensibly be: a 4096 px square input is already 200 MB
# of float32 per image; 8 px is the smallest input the config allows.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; anything past this is a damaged file
MAX_NAME = 1_000  # characters of an arch or class name
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # Pillow filters the decode path knows

Channel = Annotated[float, Field(allow_inf_nan=False)]


class ModelMeta(BaseModel):
    """The validated description of a trained model; other keys (``decoder``, ``init``,
    ``run_dir``, ``input``, ...) pass through unchecked, since nothing sizes or labels by them."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=False)

    arch: str = Field(min_length=1, max_length=MAX_NAME)
    classes: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME)]] = Field(
        min_length=1, max_length=MAX_CLASSES
    )
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    image_size: int = Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    # Normalisation of [0, 1] pixels: a mean outside [0, 1] or a std outside (0, 10] is no
    # normalisation anyone trained with.
    mean: list[Channel] = Field(min_length=3, max_length=3)
    std: list[Channel] = Field(min_length=3, max_length=3)
    # Calibration on a tiny or degenerate val split can fit a huge temperature: only > 0.
    temperature: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    crop_pct: float | None = Field(None, gt=0.0, le=1.0)
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None

    @field_validator("mean")
    @classmethod
    def _mean(cls, value: list[float]) -> list[float]:
        if not all(0.0 <= v <= 1.0 for v in value):
            raise ValueError(f"each value must be in [0, 1] (got {value})")
        return value

    @field_validator("std")
    @classmethod
    def _std(cls, value: list[float]) -> list[float]:
        if not all(0.0 < v <= 10.0 and math.isfinite(v) for v in value):
            raise ValueError(f"each value must be in (0, 10] (got {value})")
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        repeated = sorted(name for name, n in Counter(value).items() if n > 1)
        if repeated:
            raise ValueError(f"class names must be unique (repeated: {_shown(repeated)})")
        return value

    @model_validator(mode="after")
    def _count(self) -> ModelMeta:
        if self.num_classes != len(self.classes):
            raise ValueError(
                f"num_classes: {self.num_classes} does not match the {len(self.classes)} "
                "class names"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain dict like the checkpoint's (unset optional keys left out)."""
        return self.model_dump(exclude_none=True)


def _problem(error: dict[str, Any]) -> str:
    """``key: message (got value)``; our own checks name the key and value themselves."""
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    got = "" if error["type"] == "missing" else f" (got {_shown(error.get('input'))})"
    return f"{where}: {error['msg']}{got}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_meta(data: Any, source: str | Path, what: str = "metadata") -> dict[str, Any]:
    """``data`` checked as :class:`ModelMeta`, as a plain dict; else one MetadataError line:
    ``model.onnx: metadata image_size: Input should be less than or equal to 4096 (got 99999)``.
    """
    if not isinstance(data, dict):
        raise MetadataError(f"{source}: {what} is a {type(data).__name__}, not a mapping")
    try:
        return ModelMeta.model_validate(data).to_dict()
    except ValidationError as exc:
        problems = [_problem(dict(error)) for error in exc.errors(include_url=False)]
        raise MetadataError(f"{source}: {what} {'; '.join(problems[:3])}") from None


def check_output_width(meta: dict[str, Any], width: Any, source: str | Path) -> None:
    """The model's output width must equal the number of class names (a wider output would
    index past the list; a narrower one would never predict the last classes)."""
    if isinstance(width, int) and width != meta["num_classes"]:
        raise MetadataError(
            f"{source}: the model outputs {width} scores but its metadata names "
            f"{meta['num_classes']} classes"
        )
