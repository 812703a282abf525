"""The model names a config may use, known at load time without importing timm each time.

Importing timm takes seconds, too long for checking a config before anything else happens. Its
architecture and pretrained-weight names are read once per installed timm version (the version
comes from the package metadata, which is cheap) into ``timm-models-<version>.json`` in the user
cache folder (``$IMAGEFIT_CACHE`` or ``~/.cache/imagefit``); every later check reads that file in
milliseconds. imagefit's own names are listed here because their registries live in layers that
import torch; a test proves the lists equal the registries.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from imagefit.fileio import write_json

log = logging.getLogger(__name__)

OWN_MODELS = ("simple_cnn",)  # imagefit.models.registry.MODELS
BASELINES = ("hog_svm",)  # model.name values a sweep runs as a classical baseline, not fit()
HUB_PREFIX = "hub:"


@functools.cache
def _catalog_cached(path: Path, version: str) -> tuple[frozenset[str], frozenset[str]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("timm") == version:
            return frozenset(doc["models"]), frozenset(doc["pretrained"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # absent or damaged: rebuild it
    import timm
    from timm.models import _registry

    # timm.is_model also accepts deprecated names (kept as aliases); create_model builds them.
    models = sorted(set(timm.list_models()) | set(getattr(_registry, "_deprecated_models", {})))
    pretrained = sorted(timm.list_pretrained())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"timm": version, "models": models, "pretrained": pretrained})
    except OSError as exc:  # a read-only home only costs the next load the timm import
        log.debug("could not cache timm's model names in %s: %s", path, exc)
    return frozenset(models), frozenset(pretrained)


def cache_dir() -> Path:
    return Path(os.environ.get("IMAGEFIT_CACHE", Path.home() / ".cache" / "imagefit"))


def timm_catalog() -> tuple[frozenset[str], frozenset[str]] | None:
    """(architecture names, pretrained ``arch.tag`` names) of the installed timm, or None
    when timm is not installed."""
    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    return _catalog_cached(cache_dir() / f"timm-models-{version}.json", version)


def own_models() -> list[str]:
    """imagefit's models and baselines, plus any registered at run time by a program that
    imported the registry (looked up without importing it: it imports torch)."""
    registry = sys.modules.get("imagefit.models.registry")
    extra = list(getattr(registry, "MODELS", {})) if registry else []
    return sorted({*OWN_MODELS, *BASELINES, *extra})


def _live_timm_knows(name: str) -> bool:
    """A model registered into timm by the running program, after the cache was written."""
    timm = sys.modules.get("timm")
    return timm is not None and bool(timm.is_model(name))


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown {what} '{name}'{hint} (imagefit's own: {', '.join(own_models())}; "
        "or any timm architecture: `imagefit models`)"
    )


def check_model_name(name: str) -> str:
    """``name`` if it is an imagefit model or a timm architecture (``arch`` or ``arch.tag``);
    else a ValueError naming close matches."""
    if name in own_models():
        return name
    catalog = timm_catalog()
    arch = name.split(".", 1)[0]
    if catalog is None or arch in catalog[0] or _live_timm_knows(arch):
        return name
    return _raise(_unknown("model", name, own_models() + sorted(catalog[0])))


def check_hub_init(init: str, model_name: str | None) -> str:
    """``hub:<arch[.tag]>``: a timm architecture, a known pretrained tag when one is given, and
    the architecture of ``model_name``."""
    name = init.removeprefix(HUB_PREFIX)
    arch = name.split(".", 1)[0]
    catalog = timm_catalog()
    if catalog is not None and arch not in catalog[0] and not _live_timm_knows(arch):
        _raise(_unknown("hub model", name, sorted(catalog[0])))
    if catalog is not None and "." in name and name not in catalog[1]:
        tags = sorted(p for p in catalog[1] if p.startswith(f"{arch}."))
        shown = ", ".join(tags[:8]) + (" ..." if len(tags) > 8 else "")
        _raise(f"timm has no pretrained weights '{name}' (known for {arch}: {shown or 'none'})")
    if model_name in BASELINES:
        return init  # a classical baseline trains no network and ignores model.init
    if model_name in own_models():
        _raise(f"model '{model_name}' has no hub weights; use scratch or a weights file")
    if model_name is not None and arch != model_name.split(".", 1)[0]:
        _raise(f"'{init}' is not a '{model_name}' architecture (set model.name: {arch})")
    return init


def _raise(message: str) -> str:
    raise ValueError(message)
