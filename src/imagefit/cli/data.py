"""``imagefit data ...``: prepare datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import console

app = typer.Typer(no_args_is_help=True, help="Prepare datasets.")


@app.command("split")
def split(
    root: Annotated[Path, typer.Argument(help="ImageFolder root/<class>/<image>.")],
    out: Annotated[Path, typer.Argument(help="New folder for train/val/test copies.")],
    val: Annotated[float, typer.Option("--val")] = 0.15,
    test: Annotated[float, typer.Option("--test")] = 0.15,
    seed: Annotated[int, typer.Option("--seed")] = 42,
) -> None:
    """Stratified, seeded split into OUT/{train,val,test}/<class>/ plus OUT/split.json."""
    from imagefit.data.splits import resolve_splits, write_split_folders

    manifest = resolve_splits(root, val, test, seed)
    write_split_folders(manifest, out)
    counts = {name: len(items) for name, items in manifest.splits.items()}
    console.print(f"{out}: {counts} images in {len(manifest.classes)} classes; manifest {out / 'split.json'}")


@app.command("digits")
def digits(out: Annotated[Path, typer.Argument(help="Output folder.")]) -> None:
    """Write scikit-learn's digits as an ImageFolder of PNG files."""
    from imagefit.data.digits import write_digits

    console.print(f"wrote {write_digits(out)}")
