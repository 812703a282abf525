"""Registries: a duplicate name fails at once; unknown names list the choices; order is written."""

from __future__ import annotations

import pytest

from imagefit.data.augment import BATCH_OPS
from imagefit.errors import ConfigError
from imagefit.models.registry import MODELS
from imagefit.registry import Registry
from imagefit.track.base import register_sink


def test_a_duplicate_name_raises() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.add("a", 2)
    assert registry["a"] == 1


def test_model_and_sink_registries_refuse_duplicates() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        MODELS.register("simple_cnn")(lambda **_: None)
    with pytest.raises(ValueError, match="registered twice"):
        register_sink("mlflow", lambda cfg: False)(lambda cfg, run_dir: None)


def test_unknown_name_names_the_key_and_the_choices() -> None:
    registry: Registry[int] = Registry("optimizer")
    registry.add("adamw", 1)
    registry.add("sgd", 2)
    with pytest.raises(
        ConfigError,
        match=r"optim.name='adamx' is unknown; choose one of adamw, sgd; did you mean adamw",
    ):
        registry.get("adamx", key="optim.name")


def test_augmentation_order_is_explicit() -> None:
    assert BATCH_OPS.names() == ["affine", "randaugment", "random_erasing", "mixup"]
