"""Tracking sinks: where a run reports besides its run folder (MLflow, TensorBoard, ...).

A sink is looked up by its config switch in ``SINKS``; a failing sink is logged and dropped,
never allowed to stop training (the run folder is the record that must stay complete).
A :class:`Tracker` is what ``fit`` sees as a :class:`~imagefit.train.hooks.RunObserver`; the
caller ends it with ``log_final`` after the post-run steps and ``close`` (see
:mod:`imagefit.workflow`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from imagefit.config import Config

log = logging.getLogger(__name__)


class Sink(Protocol):
    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def log_final(
        self, metrics: dict[str, Any], summary: dict[str, Any], run_dir: Path
    ) -> None: ...

    def close(self) -> None: ...


# name -> (is it switched on in this config?, factory(config, run_dir) -> Sink)
SINKS: dict[str, tuple[Callable[[Config], bool], Callable[[Config, Path], Sink]]] = {}

SinkFactory = TypeVar("SinkFactory", bound=Callable[[Config, Path], Sink])


def final_prefix(metrics: Mapping[str, Any]) -> str:
    """The name prefix of a run's final metrics: ``test_``, or ``val_reported_`` for a run
    with no test split (apart from the per-epoch ``val_*`` curves, and never called test)."""
    split = metrics.get("split") or "test"
    return "test_" if split == "test" else f"{split}_reported_"


def register_sink(
    name: str, enabled: Callable[[Config], bool]
) -> Callable[[SinkFactory], SinkFactory]:
    def wrap(factory: SinkFactory) -> SinkFactory:
        if name in SINKS:
            raise ValueError(f"tracking sink {name!r} is registered twice")
        SINKS[name] = (enabled, factory)
        return factory

    return wrap


class Tracker:
    """Fan-out to the enabled sinks; each call is shielded from the others' failures.

    Opens its sinks at ``start`` (or at once, given a config and a run folder): a new run's
    folder is only named when ``fit`` has made it."""

    def __init__(self, cfg: Config | None = None, run_dir: Path | None = None):
        self.sinks: dict[str, Sink] = {}
        if cfg is not None and run_dir is not None:
            self.start(cfg, run_dir)

    def start(self, cfg: Config, run_dir: Path) -> None:
        for name, (enabled, factory) in SINKS.items():
            if enabled(cfg):
                self._guard(name, partial(self._open, name, factory, cfg, run_dir))

    def _open(
        self, name: str, factory: Callable[[Config, Path], Sink], cfg: Config, run_dir: Path
    ) -> None:
        self.sinks[name] = factory(cfg, run_dir)

    def _guard(self, name: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a tracking outage must not kill training
            log.warning("tracking sink '%s' failed and is switched off for this run: %s", name, exc)
            self.sinks.pop(name, None)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for name, sink in list(self.sinks.items()):
            self._guard(name, partial(sink.log_epoch, row))

    def log_final(self, metrics: dict[str, Any], summary: dict[str, Any], run_dir: Path) -> None:
        for name, sink in list(self.sinks.items()):
            self._guard(name, partial(sink.log_final, metrics, summary, run_dir))

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            self._guard(name, sink.close)
