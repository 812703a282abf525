"""``Registry``: named factories (models, augmentation ops, tracking sinks) looked up by name.

Registering a name twice is a programming error and raises at import time, instead of the
later registration silently winning. Iteration follows registration order; where that order
matters (augmentation ops), the registering module fills the registry in one explicit list.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from imagefit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> entry table; ``kind`` names the entries in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry ``name``; an unknown name is a ConfigError naming ``key`` and the choices."""
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, self._entries, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f"{key}={name!r}" if key else f"{self.kind} {name!r}"
        raise ConfigError(f"{where} is unknown; choose one of {', '.join(self._entries)}{hint}")

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
