"""Shared pieces of the CLI: the console, common options, result tables."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    """The terminal's width on a terminal; piped or redirected, no width at all.

    Rich assumes 80 columns when output is not a terminal and then cuts words and file names
    in tables; a file or a pipe has room for every character, so tables keep their content.
    """
    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


console = _console()

SetOption = Annotated[
    list[str], typer.Option("--set", "-s", help="Override: key.sub=value (repeatable).")
]
TtaOption = Annotated[
    str,
    typer.Option(
        "--tta",
        help="Test-time augmentation: none, flip, or flip+crops (flip and 4 corner zooms).",
    ),
]
LimitOption = Annotated[
    int | None, typer.Option("--limit-batches", help="Cap batches per epoch and evaluation.")
]

AllowUntrainedOption = Annotated[
    bool,
    typer.Option(
        "--allow-untrained",
        help="Use a run with no finished epoch anyway (warned; the output is labelled).",
    ),
]
UNTRAINED_BANNER = (
    "warning: UNTRAINED MODEL: the run has no finished epoch; these are not a model's results"
)


def main_process() -> bool:
    """False on the ranks other than 0 of a torchrun launch: they neither log info nor print."""
    return int(os.environ.get("RANK", "0")) == 0


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def metric_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, fmt(value))
    return table


def print_result(result: Any) -> None:
    """The short table every training command ends with."""
    s, m = result.summary, result.metrics or {}
    split = m.get("split", "test")  # "val" when the dataset has no test split
    rows = [
        ("best epoch", s.best_epoch),
        ("best val accuracy", s.best_val_accuracy),
        ("reported on", s.extra.get("reported_on") if split != "test" else None),
        (f"{split} accuracy", m.get("accuracy")),
        (f"{split} top-5 accuracy", m.get("top5_accuracy")),
        (f"{split} F1 macro", m.get("f1_macro")),
        (f"{split} loss", m.get("loss")),
        ("parameters (trainable)", f"{s.params_total:,} ({s.params_trainable:,})"),
        ("train images/s", s.train_images_per_s),
        ("wall time s", s.wall_time_s),
    ]
    shown = [(name, value) for name, value in rows if value is not None]  # e.g. no val split
    console.print(metric_table(f"run {result.run_dir.name}", shown))
    console.print(f"run folder: {result.run_dir}")


def with_limit(overrides: list[str], limit_batches: int | None) -> list[str]:
    return overrides + ([f"train.limit_batches={limit_batches}"] if limit_batches else [])
