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


def lr_find(
    config: Annotated[Path, typer.Argument(help="YAML config (data, model, optimizer).")],
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    start: Annotated[float, typer.Option("--start", help="First lr of the ramp.")] = 1e-7,
    end: Annotated[float, typer.Option("--end", help="Last lr of the ramp.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Batches (one lr each), at most.")] = 100,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for lr_find.json/.png (default OUTPUT_DIR/lr_find)."),
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="Write the suggestion into CONFIG as optim.lr.")
    ] = False,
) -> None:
    """Learning-rate range test on CONFIG's data and model: suggests optim.lr."""
    from imagefit.config import load_config, write_overrides

    cfg = load_config(config, overrides)
    from imagefit.workflow import lr_find as run_lr_find

    result, record, plot = run_lr_find(cfg, start, end, steps, out)
    console.print(
        f"{len(result.lrs)} steps, lr {start:g} to {result.lrs[-1]:g}; stopped: {result.stopped}"
    )
    console.print(f"curve: {record}\nplot: {plot}")
    if result.suggestion is None:
        raise typer.Exit(1)
    assignment = f"optim.lr={result.suggestion:.3g}"
    if write:
        write_overrides(config, [assignment])
        console.print(f"suggested lr {result.suggestion:.3g}: written to {config} ({assignment})")
    else:
        console.print(f"suggested lr {result.suggestion:.3g}: --set {assignment}")


def register(app: typer.Typer) -> None:
    app.command("tune-batch")(tune_batch)
    app.command("lr-find")(lr_find)
