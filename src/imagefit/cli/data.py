"""``imagefit data ...``: prepare datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imagefit.cli.common import SetOption, console, metric_table
from imagefit.runs.layout import SPLIT

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
    console.print(
        f"{out}: {counts} images in {len(manifest.classes)} classes; manifest {out / SPLIT}"
    )


@app.command("shards")
def shards(
    source: Annotated[
        str, typer.Argument(help="ImageFolder root, or a split manifest (JSON; its split is kept).")
    ],
    out: Annotated[Path, typer.Argument(help="New folder for the tar shards and index.json.")],
    shard_size: Annotated[
        str, typer.Option("--shard-size", help="Largest shard, e.g. 500MB, 1GB, 2GiB.")
    ] = "1GB",
    max_count: Annotated[int, typer.Option("--max-count", min=1, help="Most images per shard.")] = (
        100_000
    ),
    config: Annotated[
        Path | None, typer.Option("--config", help="Take data.* (fractions, seed) from it.")
    ] = None,
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """WebDataset tar shards of each split (OUT/<split>-NNNNNN.tar) plus OUT/index.json.

    The split is the one training makes of SOURCE (data.val_fraction, data.test_fraction,
    data.split_seed from --config/--set); train from them with --set data.shards=OUT.
    """
    from imagefit.config import load_config
    from imagefit.data.loaders import load_manifest
    from imagefit.data.shards import parse_size, write_shards

    size = parse_size(shard_size)
    key = "data.split_manifest" if source.endswith(".json") else "data.root"
    cfg = load_config(config, [*overrides, f"{key}={source}"])
    manifest = load_manifest(cfg)
    d = cfg.data
    index = write_shards(
        manifest, out, size, max_count, min_size=d.min_size, skip_bad=d.on_bad == "skip"
    )
    for name, split in index["splits"].items():
        console.print(f"{name}: {split['count']} images in {len(split['shards'])} shards")
    console.print(f"index: {out / 'index.json'}")


@app.command("digits")
def digits(out: Annotated[Path, typer.Argument(help="Output folder.")]) -> None:
    """Write scikit-learn's digits as an ImageFolder of PNG files."""
    from imagefit.datasets.digits import write_digits

    console.print(f"wrote {write_digits(out)}")


MinSize = Annotated[int, typer.Option("--min-size", min=1, help="Smallest side allowed, px.")]
ReportDir = Annotated[Path | None, typer.Option("--out", help="Report folder [./verify-ROOT].")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, help="Decoding threads.")]


@app.command("verify")
def verify(
    root: Annotated[Path, typer.Argument(help="root/<class>/ or root/{train,val,test}/<class>/.")],
    min_size: MinSize = 1,
    out: ReportDir = None,
    workers: Workers = None,
    near_dup_threshold: Annotated[
        int,
        typer.Option(
            "--near-dup-threshold",
            min=-1,
            max=64,
            help="Hamming distance of perceptual hashes for near-duplicates (-1: off).",
        ),
    ] = 8,
) -> None:
    """Find bad images, duplicates and near-duplicates across classes and splits, imbalance.

    Writes OUT/verify.json and OUT/bad_files.txt (for --set data.skip_list=...); exits 1 when
    it finds errors.
    """
    from imagefit.datasets.verify import verify_dataset
    from imagefit.errors import DataError

    out = out or Path(f"verify-{root.resolve().name}")
    if out.resolve().is_relative_to(root.resolve()):
        raise DataError(f"--out {out} is inside the dataset {root}: it would read as a class")
    threshold = None if near_dup_threshold < 0 else near_dup_threshold
    report = verify_dataset(root, min_size=min_size, workers=workers, near_dup_threshold=threshold)
    _print_report(report)
    json_path, skip_path = (path.resolve() for path in report.write(out))
    console.print(f"report: {json_path}")
    console.print(
        f"skip list: {skip_path} ({len(report.skip_paths())} files; train with "
        f"--set data.skip_list={skip_path})"
    )
    if not report.ok:
        console.print(f"[red]{report.errors} errors[/red]")
        raise typer.Exit(code=1)
    console.print("[green]no errors[/green]")


def _print_report(report) -> None:
    counts = Table(
        title=f"{report.root} ({report.layout} layout): files per class (bad ones included)"
    )
    counts.add_column("class")
    for split in report.counts:
        counts.add_column(split, justify="right")
    for name in report.classes:
        counts.add_row(name, *(str(report.counts[split][name]) for split in report.counts))
    console.print(counts)
    rows = [("images scanned", report.scanned), ("imbalance (max/min)", report.imbalance_ratio)]
    rows += [(f"bad: {kind}", n) for kind, n in report.bad_by_kind().items()]
    rows += [(f"duplicates: {kind}", n) for kind, n in report.duplicates_by_kind().items() if n]
    near = report.near_duplicates_by_kind().items()
    rows += [(f"near-duplicate pairs: {kind}", n) for kind, n in near if n]
    rows += [("structural problems", len(report.problems)), ("errors", report.errors)]
    console.print(metric_table("verify", rows))
    for line in report.problems:
        console.print(f"[red]problem[/red] {line}")
    for item in report.bad[:SHOWN]:
        console.print(f"[red]bad[/red] {item.message}")
    for group in [g for g in report.duplicates if g.is_error][:SHOWN]:
        files = ", ".join(f"{f.split}/{f.label}/{f.path.name}" for f in group.files)
        console.print(f"[red]duplicate ({', '.join(group.kinds)})[/red] {files}")
    for pair in [n for n in report.near_duplicates if n.kinds != ["same_class"]][:SHOWN]:
        files = ", ".join(f"{f.split}/{f.label}/{f.path.name}" for f in (pair.first, pair.second))
        console.print(
            f"[yellow]near-duplicate ({', '.join(pair.kinds)}; distance "
            f"{pair.phash_distance}/{pair.dhash_distance})[/yellow] {files}"
        )
    hidden = len(report.bad) + len(report.duplicates) - 2 * SHOWN
    if hidden > 0:
        console.print("... and more in verify.json")
    for line in report.warnings():
        console.print(f"[yellow]warning[/yellow] {line}")


SHOWN = 10  # bad files and duplicate groups printed; verify.json has all


@app.command("cifar10")
def cifar10(
    root: Annotated[
        Path, typer.Option("--root", help="Where the archive and batches live.")
    ] = Path("data"),
    fmt: Annotated[str, typer.Option("--format", help="python or binary.")] = "python",
    download: Annotated[
        bool, typer.Option("--download", help="Download (checksum-verified) if absent.")
    ] = False,
    to_folder: Annotated[
        Path | None, typer.Option("--to-folder", help="Write an ImageFolder of PNGs here.")
    ] = None,
) -> None:
    """Find, verify and extract CIFAR-10 (downloading with --download); convert to PNG folders."""
    from imagefit.datasets.cifar import cifar10_to_folder, ensure_cifar10

    batches = ensure_cifar10(root, fmt, download_missing=download)
    console.print(f"CIFAR-10 batches: {batches}")
    if to_folder is not None:
        console.print(f"ImageFolder: {cifar10_to_folder(batches, to_folder)}")
