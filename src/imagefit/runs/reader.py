"""The one reader of a run folder, finished or not: plots, reports, sweep tables, trackers,
evaluation and prediction all read runs through here.

Reading never fails on a missing or damaged record: what is absent stays empty and is named in
``RunRecord.missing`` (a plot or a table shows what exists).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagefit.errors import ImagefitError, UntrainedRunError
from imagefit.runs.layout import RunLayout
from imagefit.runs.records import Summary

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """What a run folder holds; ``missing`` names the files that were absent or unreadable."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)
    missing: list[str] = field(default_factory=list)
    # config.yaml keys edited since the run last trained {key: [ran, edited]} (the report's)
    config_edits: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.summary.name or self.path.name)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.metrics.get("classes") or []]

    @property
    def finished(self) -> bool:
        return self.summary.status == "finished"

    @property
    def finished_epochs(self) -> int | None:
        """Epochs the run completed: its history, else its summary; 0 for a run with a
        training checkpoint and neither (stopped before its first epoch ended); None when it
        cannot tell (a baseline such as HOG + SVM has results and no epochs; a folder with
        no checkpoint and no records shows only what is missing)."""
        if self.history:
            return len(self.history)
        if self.summary.epochs_run is not None:
            return int(self.summary.epochs_run)
        return 0 if RunLayout(self.path).last.is_file() and not self.metrics else None

    @property
    def trained(self) -> bool:
        return is_trained(self.finished_epochs)


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    """Parsed content of ``path``, or None (with a warning) when it is there but unreadable."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:
        log.warning("%s: unreadable (%s)", path, error)
        return None


def _history_csv(text: str) -> list[dict[str, Any]]:
    """Rows of ``history.csv`` with numbers parsed (empty cells become None)."""

    def value(cell: str) -> Any:
        if cell == "":
            return None
        try:
            return float(cell)
        except ValueError:
            return cell

    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _first(candidates: list[tuple[Path, Callable[[str], Any]]], kind: type) -> Any:
    for path, parse in candidates:
        data = _read(path, parse) if path.is_file() else None
        if isinstance(data, kind):
            return data
    return None


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """``config.yaml`` as a plain dict (None when absent or unreadable)."""
    return _first([(RunLayout(run_dir).config, yaml.safe_load)], dict)


def read_history(run_dir: Path) -> list[dict[str, Any]] | None:
    """``history.json``, else ``history.csv`` (None when neither reads)."""
    layout = RunLayout(run_dir)
    return _first([(layout.history, json.loads), (layout.history_csv, _history_csv)], list)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` as written (:class:`~imagefit.runs.records.Metrics` keys)."""
    return _first([(RunLayout(run_dir).metrics, json.loads)], dict)


def read_summary(run_dir: Path) -> Summary | None:
    data = _first([(RunLayout(run_dir).summary, json.loads)], dict)
    return None if data is None else Summary.from_dict(data)


def trained_config(run_dir: Path) -> dict[str, Any] | None:
    """The config the run last trained with: the one in ``last.pt`` (else ``best.pt``), which
    differs from ``config.yaml`` when that was edited and not yet applied by a resume."""
    from imagefit.runs.checkpoint import load_checkpoint

    layout = RunLayout(run_dir)
    for path in (layout.last, layout.best):
        if path.is_file():
            try:  # mmap: the tensors stay on disk, only the small entries are read
                config = load_checkpoint(path, mmap=True).get("config")
            except ImagefitError as error:
                log.warning("%s", error)
                return None
            return config if isinstance(config, dict) else None
    return None


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``config.yaml``, ``history.json`` (else ``history.csv``), ``metrics.json`` and
    ``summary.json`` from ``run_dir``; whatever is missing is left empty and listed."""
    layout = RunLayout(Path(run_dir))
    record = RunRecord(path=layout.root)
    for name, reader, attribute in (
        (layout.config.name, read_config, "config"),
        (layout.history.name, read_history, "history"),
        (layout.metrics.name, read_metrics, "metrics"),
        (layout.summary.name, read_summary, "summary"),
    ):
        value = reader(layout.root)
        if value is None:
            record.missing.append(name)
        else:
            setattr(record, attribute, value)
    return record


def checkpoint_epochs(state: Mapping[str, Any]) -> int | None:
    """Finished epochs behind a checkpoint's weights: ``meta.epoch`` (weights-only files) or
    the training state's ``epoch``; None when the file does not say (another tool's file)."""
    meta = state.get("meta")
    for value in (
        (meta or {}).get("epoch") if isinstance(meta, Mapping) else None,
        state.get("epoch"),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def is_trained(epochs: int | None) -> bool:
    """The one rule: weights with no finished epoch are not a trained model. A count that is
    unknown (None: a checkpoint from elsewhere, an older export) is taken as trained."""
    return epochs is None or epochs > 0


def require_trained(source: str | Path, epochs: int | None, allow_untrained: bool = False) -> bool:
    """Whether ``source`` (a run folder, checkpoint or exported model) is trained.

    Untrained, it raises :class:`UntrainedRunError` naming the run and how to continue it;
    with ``allow_untrained`` it warns and returns False, for the caller to label its output.
    """
    if is_trained(epochs):
        return True
    path = Path(source)
    run = path if path.is_dir() else path.parent
    message = (
        f"{source}: run {run.name} has no finished epoch (its weights are the initial ones); "
        f"continue it with `imagefit train --resume {run}`"
    )
    if not allow_untrained:
        raise UntrainedRunError(message + ", or pass --allow-untrained to use it anyway")
    log.warning("UNTRAINED MODEL: %s; its outputs are labelled untrained", message)
    return False
