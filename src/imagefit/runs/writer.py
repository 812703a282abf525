"""Writing a run folder: creating it (``config.yaml`` first) and its JSON/CSV records.

``config.yaml`` is written first, before any data is read, so even a run that fails at once
leaves a record of what was asked. Every file is written atomically (:mod:`imagefit.fileio`).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imagefit.config import Config, absolute_paths, dump_config
from imagefit.fileio import (
    FileWriteError,
    atomic_open,
    atomic_write,
    describe_os_error,
    make_dirs,
    write_json,
)
from imagefit.runs.layout import RunLayout
from imagefit.runs.records import HISTORY_COLUMNS, Metrics, Summary


def create_run_dir(cfg: Config) -> Path:
    """Make a new, unique run folder and write ``config.yaml`` into it.

    A taken name gets a suffix (``name-2``), which is written back to ``cfg.output.name``; the
    data paths become absolute (:func:`imagefit.config.absolute_paths`), in ``cfg`` too."""
    absolute_paths(cfg)
    base = Path(cfg.output.dir)
    name = cfg.output.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{suffix}"
    make_dirs(base, "the output folder")
    try:
        run_dir.mkdir()
    except OSError as exc:
        raise FileWriteError(
            f"{run_dir}: could not create the run folder: {describe_os_error(exc)}"
        ) from None
    if run_dir.name != name:
        cfg.output.name = run_dir.name
    atomic_write(RunLayout(run_dir).config, dump_config(cfg))
    return run_dir


def write_history(run_dir: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``history.json`` and ``history.csv`` (seed 000's columns first, then any others)."""
    layout = RunLayout(run_dir)
    write_json(layout.history, list(history))
    extra = [k for row in history for k in row if k not in HISTORY_COLUMNS]
    columns = HISTORY_COLUMNS + list(dict.fromkeys(extra))
    with atomic_open(layout.history_csv, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> None:
    """``metrics.json``: one split's metrics, in :class:`Metrics`' key order."""
    write_json(RunLayout(run_dir).metrics, Metrics.from_dict(metrics).to_dict())


def write_summary(run_dir: Path, summary: Summary) -> None:
    write_json(RunLayout(run_dir).summary, summary.to_dict())


def write_environment(run_dir: Path, environment: Mapping[str, Any]) -> None:
    write_json(RunLayout(run_dir).environment, dict(environment))


def write_skipped(run_dir: Path, skipped: Mapping[str, str]) -> None:
    """``skipped.json``: the files ``data.on_bad: skip`` left out, with why."""
    write_json(RunLayout(run_dir).skipped, dict(skipped))
