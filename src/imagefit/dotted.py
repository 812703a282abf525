"""Nested dicts addressed by dotted keys: ``get(tree, "optim.lr")``, ``set_key``, ``flatten``.

The one place that walks ``a.b.c`` through a config tree; configs, sweeps, pipelines, reports
and trackers all use it, so a key means the same everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from imagefit.errors import ConfigError

_MISSING = object()


def split(key: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "b", "c"]``; an empty part is an error naming the key."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"'{key}' is not a dotted key such as optim.lr")
    return parts


def get(tree: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """``tree[a][b]`` for ``key`` "a.b"; ``default`` (or a ConfigError) when absent."""
    node: Any = tree
    for part in split(key):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise ConfigError(f"'{key}' is not set")
            return default
        node = node[part]
    return node


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``key`` "a.b", creating sections (a copy of ``value``)."""
    parts = split(key)
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{key}': '{part}' holds a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"name": x}}`` -> ``{"model.name": x}``; lists and empty sections stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
