"""``imagefit tune-batch``: the largest batch that fits, as a table like seed 002's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imagefit.cli.common import SetOption, console

GIB = 2**30


def tune_batch(
    config: Annotated[Path, typer.Argument(help="YAML config (model, image size, precision).")],
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    max_batch: Annotated[
        int | None,
        typer.Option("--max-batch", help="Largest batch to try (default 4096 on GPU, 512 on CPU)."),
    ] = None,
    headroom: Annotated[
        float, typer.Option("--headroom", help="Fraction of memory to leave free.")
    ] = 0.1,
    num_classes: Annotated[
        int | None,
        typer.Option("--num-classes", help="Head size (default: class folders of data.root)."),
    ] = None,
) -> None:
    """Find the largest training batch of CONFIG that fits the device memory (real steps)."""
    from imagefit.config import load_config

    cfg = load_config(config, overrides)
    from imagefit.train.tune_batch import tune_batch as run_tune

    result = run_tune(cfg, max_batch, headroom, num_classes)
    title = (
        f"{cfg.model.name} at {cfg.data.image_size} px, amp={cfg.train.amp}, "
        f"channels_last={cfg.train.channels_last} on {result.device}"
    )
    table = Table(title=title)
    for name in ("batch", f"peak {result.memory} GiB", "fits", "step s", "images/s", "note"):
        table.add_column(name, justify="left" if name in ("fits", "note") else "right")
    for p in sorted(result.probes, key=lambda p: p.batch):
        table.add_row(
            str(p.batch),
            f"{p.peak_bytes / GIB:.2f}" if p.peak_bytes else "-",
            "yes" if p.fits else "no",
            f"{p.step_s:.3f}" if p.step_s else "-",
            f"{p.batch / p.step_s:.0f}" if p.step_s else "-",
            p.note,
        )
    console.print(table)
    console.print(
        f"{result.memory}: {result.total_bytes / GIB:.1f} GiB, limit {result.limit_bytes / GIB:.1f} GiB "
        f"({headroom:.0%} left free)"
    )
    if result.memory == "host RAM":
        console.print(
            "on a CPU the memory is host RAM; batches past --max-batch "
            f"({result.max_batch}) are not tried"
        )
    console.print(
        f"largest batch that fits: [bold]{result.largest}[/bold] "
        f"(train.batch_size={result.largest}; per process under torchrun)"
    )


def register(app: typer.Typer) -> None:
    app.command("tune-batch")(tune_batch)
