"""``imagefit data fractal-search | ofdb | fractaldb``: formula-driven datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import console

Size = Annotated[int, typer.Option("--size", min=8, help="Image side, px (official: 362).")]
Points = Annotated[int, typer.Option("--points", min=2, help="Chaos-game points per image.")]
Format = Annotated[str, typer.Option("--format", help="png (official) or ppm.")]
Draw = Annotated[
    str,
    typer.Option(
        "--draw",
        help="patch_gray | point_gray | patch_color | point_color (aliases: gray, point, color).",
    ),
]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of the patch masks.")]
KeepAspect = Annotated[
    bool,
    typer.Option("--keep-aspect", help="One scale for x and y (official: each axis stretched)."),
]
BurnIn = Annotated[
    int, typer.Option("--burn-in", min=0, help="Drop the first N points (official: 0).")
]
NoVflip = Annotated[bool, typer.Option("--no-vflip", help="Skip the official top-to-bottom flip.")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Processes [all cores].")]
Out = Annotated[Path, typer.Option("--out", help="Output folder, OUT/<category>/<image>.")]
Params = Annotated[
    Path, typer.Argument(help="Folder of category CSVs (imagefit data fractal-search).")
]


def register(app: typer.Typer) -> None:
    app.command("fractal-search")(fractal_search)
    app.command("ofdb")(ofdb)
    app.command("fractaldb")(fractaldb)


def _refuse_filled(out: Path, pattern: str) -> None:
    from imagefit.errors import DataError

    if out.is_dir() and any(out.glob(pattern)):
        raise DataError(f"{out} already holds {pattern} files; choose a new or empty folder")


def fractal_search(
    categories: Annotated[int, typer.Option("--categories", min=1, help="Categories to find.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for 00000.csv, 00001.csv, ...")],
    fill_rate: Annotated[
        float, typer.Option("--fill-rate", help="Accept at this filling rate.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 1,
    compat: Annotated[
        str,
        typer.Option(
            "--compat", help="fast (parallel) or official (the official CSVs, bit for bit)."
        ),
    ] = "fast",
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Threads of the fast search [all cores].")
    ] = None,
) -> None:
    """Search IFS categories (one category = one fractal class) and write them as CSV files."""
    from imagefit.datasets.fractal.dataset import search_categories, write_params

    _refuse_filled(out, "*.csv")
    found = search_categories(categories, fill_rate, seed, compat, workers=workers)
    paths = write_params(found, out)
    console.print(
        f"{out}: {len(paths)} categories ({compat} search, seed {seed}, fill rate {fill_rate})"
    )


def ofdb(
    params: Params,
    out: Out,
    size: Size = 362,
    points: Points = 200_000,
    fmt: Format = "png",
    draw: Draw = "patch_gray",
    seed: Seed = 0,
    weight_row: Annotated[
        str, typer.Option("--weight-row", help="official (a x 0.2, row 0 of weights_0.4) or ones.")
    ] = "official",
    keep_aspect: KeepAspect = False,
    burn_in: BurnIn = 0,
    no_vflip: NoVflip = False,
    workers: Workers = None,
) -> None:
    """2D-OFDB: one image per category, OUT/NNNNN/NNNNN_00_count_0_flip0.png (or .ppm)."""
    from imagefit.datasets.fractal.dataset import OFDB_OFFICIAL_WEIGHT_ROW, write_ofdb
    from imagefit.errors import DataError

    rows = {"official": OFDB_OFFICIAL_WEIGHT_ROW, "ones": None}
    if weight_row not in rows:
        raise DataError(f"--weight-row {weight_row!r}: choose official or ones")
    _refuse_filled(out, f"*/*.{fmt}")
    count = write_ofdb(
        params,
        out,
        size,
        points,
        fmt,
        draw,
        workers,
        seed=seed,
        weight_row=rows[weight_row],
        keep_aspect=keep_aspect,
        burn_in=burn_in,
        vflip=not no_vflip,
    )
    console.print(f"{out}: {count} 2D-OFDB images ({size} px, {draw}, {fmt})")


def fractaldb(
    params: Params,
    out: Out,
    weights: Annotated[
        str,
        typer.Option("--weights", help="Weight CSV, or an official one by name: 0.0125 ... 0.5."),
    ] = "0.4",
    instances: Annotated[
        int, typer.Option("--instances", min=1, help="Patch re-renders per weight row.")
    ] = 10,
    flips: Annotated[int, typer.Option("--flips", min=1, max=4, help="Flips saved per image.")] = 4,
    size: Size = 362,
    points: Points = 200_000,
    fmt: Format = "png",
    draw: Draw = "patch_gray",
    seed: Seed = 0,
    keep_aspect: KeepAspect = False,
    burn_in: BurnIn = 0,
    no_vflip: NoVflip = False,
    workers: Workers = None,
) -> None:
    """FractalDB: per category, weight rows x instances x flips images (official: 25 x 10 x 4)."""
    from imagefit.datasets.fractal.dataset import write_fractaldb

    _refuse_filled(out, f"*/*.{fmt}")
    count = write_fractaldb(
        params,
        out,
        weights,
        instances,
        flips,
        size,
        points,
        fmt,
        draw,
        workers,
        seed=seed,
        keep_aspect=keep_aspect,
        burn_in=burn_in,
        vflip=not no_vflip,
    )
    console.print(f"{out}: {count} FractalDB images ({size} px, {draw}, {fmt})")
