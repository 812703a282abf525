"""``create_model(name, num_classes, init)``: imagefit's own models by name, else any timm model.

Architectures come from timm so that parameter names stay canonical and timm/torchvision
weight files load strictly; imagefit registers only what timm lacks (SimpleCNN).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import timm
from torch import nn

from imagefit.errors import ConfigError
from imagefit.models.simple_cnn import SimpleCNN
from imagefit.registry import Registry

ModelFactory = Callable[..., nn.Module]
# factory(num_classes=..., drop_rate=...) by name
MODELS: Registry[ModelFactory] = Registry("model")


@MODELS.register("simple_cnn")
def _simple_cnn(num_classes: int, drop_rate: float = 0.0, **_: object) -> nn.Module:
    return SimpleCNN(num_classes=num_classes, drop_rate=drop_rate)


def list_models() -> list[str]:
    """imagefit's own names; every name of ``timm.list_models()`` works too."""
    return sorted(MODELS.names())


def build_architecture(
    name: str, num_classes: int, drop_rate: float = 0.0, pretrained: bool = False
) -> nn.Module:
    """A freshly initialised (or hub-pretrained, for timm names) model with a new head."""
    if name in MODELS:
        if pretrained:
            raise ConfigError(
                f"model '{name}' has no hub weights; use model.init=scratch or a file"
            )
        return MODELS[name](num_classes=num_classes, drop_rate=drop_rate)
    base = timm.models.split_model_name_tag(name)[0]
    if not timm.is_model(base):
        known = list_models() + timm.list_models()
        close = difflib.get_close_matches(name, known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.name '{name}' is neither an imagefit model ({', '.join(list_models())}) "
            f"nor a timm architecture{hint}"
        )
    return timm.create_model(
        name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate
    )


def create_model(
    name: str, num_classes: int, init: str = "scratch", drop_rate: float = 0.0
) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head and initialise it from ``init``.

    ``init``: ``scratch``; ``hub:<timm name[.tag]>`` (downloads); or a path to an imagefit
    checkpoint or a timm/torchvision weights file (``.pt``/``.pth``/``.bin``/``.safetensors``).
    The provenance is recorded on the model as ``model.imagefit_init``.
    """
    from imagefit.models.weights import initialise  # weights imports this module

    return initialise(name, num_classes, init, drop_rate)
