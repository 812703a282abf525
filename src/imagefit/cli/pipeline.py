"""``imagefit pipeline FILE``: generate fractals -> pretrain -> fine-tune twice -> compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imagefit.cli.common import LimitOption, console, with_limit
from imagefit.cli.sweep import exit_if_failed


def pipeline(
    file: Annotated[Path, typer.Argument(help="Pipeline YAML (fractal, pretrain, finetune).")],
    limit_batches: LimitOption = None,
    overrides: Annotated[
        list[str],
        typer.Option(
            "--set",
            "-s",
            help="key=value for both training steps; prefix fractal., pretrain. or finetune. for one section.",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Pretrain on generated fractals, then fine-tune from scratch and from those weights."""
    from imagefit.pipeline import load_pipeline, run_pipeline

    spec = load_pipeline(file, with_limit(overrides, limit_batches))  # checked before torch loads
    from imagefit.sweep.table import fmt

    console.print(f"pipeline {spec.name} into {spec.out}")
    result = run_pipeline(spec)
    table = Table(title=f"{spec.name}: fine-tuned test accuracy (mean ± std over seeds)")
    for column in ("variant", "seeds", "test accuracy", "best val accuracy"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, row in result.comparison["variants"].items():
        cells = [
            fmt(row[k]["mean"]) + ("" if row[k]["std"] is None else f" ± {fmt(row[k]['std'])}")
            for k in ("test_accuracy", "best_val_accuracy")
        ]
        table.add_row(name, str(len(row["seeds"])), *cells)
    console.print(table)
    console.print(f"pretrained - scratch: {fmt(result.comparison['pretrained_minus_scratch'])}")
    console.print(f"pretraining run: {result.comparison['pretrain_run']}")
    for name, path in result.finetune.files.items():
        console.print(f"{name}: {path}")
    console.print(f"summary: {result.out / 'pipeline.json'}")
    exit_if_failed(result.comparison["failed"])


def register(app: typer.Typer) -> None:
    app.command()(pipeline)
