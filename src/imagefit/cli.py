"""The ``imagefit`` command: parses arguments, calls one library function, prints the result.

Nothing here holds logic the library lacks; errors a user can cause arrive as ImagefitError
and are printed as one clear line with a non-zero exit code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from imagefit.errors import ImagefitError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, fine-tune, compare, evaluate and ship image classifiers.")  # fmt: skip
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare datasets.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
console = Console()

SetOption = Annotated[list[str], typer.Option("--set", "-s", help="Override: key.sub=value (repeatable).")]
LimitOption = Annotated[Optional[int], typer.Option("--limit-batches", help="Cap batches per epoch and evaluation.")]  # noqa: UP007


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
           quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:  # fmt: skip
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname).1s %(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _print_result(result: Any) -> None:
    table = Table(title=f"run {result.run_dir.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    s, m = result.summary, result.metrics or {}
    rows = [("best epoch", s["best_epoch"]), ("best val accuracy", s["best_val_accuracy"]),
            ("test accuracy", m.get("accuracy")), ("test top-5 accuracy", m.get("top5_accuracy")),
            ("test F1 macro", m.get("f1_macro")), ("test loss", m.get("loss")),
            ("parameters (trainable)", f"{s['params_total']:,} ({s['params_trainable']:,})"),
            ("train images/s", s["train_images_per_s"]), ("wall time s", s["wall_time_s"])]  # fmt: skip
    for name, value in rows:
        table.add_row(name, _fmt(value))
    console.print(table)
    console.print(f"run folder: {result.run_dir}")


def _config_overrides(overrides: list[str], limit_batches: int | None) -> list[str]:
    return overrides + ([f"train.limit_batches={limit_batches}"] if limit_batches else [])


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where data and runs go.")] = Path("imagefit-demo"),
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    limit_batches: LimitOption = None,
) -> None:
    """Train SimpleCNN on scikit-learn's digits (offline) and test it."""
    from imagefit.demo import run_demo

    _print_result(run_demo(workdir, _config_overrides(overrides, limit_batches)))


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config.")] = None,  # noqa: UP007
    overrides: SetOption = [],  # noqa: B006
    limit_batches: LimitOption = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this run folder.")] = None,  # noqa: UP007
) -> None:
    """Train from CONFIG into a new run folder, or --resume RUN_DIR."""
    from imagefit.config import load_config
    from imagefit.train.fit import fit

    if resume is not None:
        if config is not None or overrides:
            raise ImagefitError("--resume continues a run with its own config; drop CONFIG and --set")
        result = fit(resume=resume)
    else:
        if config is None:
            raise ImagefitError("give a CONFIG file (or --resume RUN_DIR)")
        result = fit(load_config(config, _config_overrides(overrides, limit_batches)))
    _print_result(result)


@app.command("eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="Run folder or checkpoint.")],
    split: Annotated[str, typer.Option("--split", help="test or val (or train).")] = "test",
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset root (if moved).")] = None,  # noqa: UP007
    limit_batches: LimitOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print all metrics as JSON.")] = False,
) -> None:
    """Evaluate a trained model on a split of its dataset."""
    from imagefit.evaluate.evaluator import evaluate_checkpoint

    metrics = evaluate_checkpoint(target, split, data, limit_batches=limit_batches)
    if as_json:
        console.print_json(json.dumps(metrics))
        return
    table = Table(title=f"{metrics['checkpoint']} on {split} ({metrics['num_samples']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "loss"):
        table.add_row(key, _fmt(metrics[key]))
    console.print(table)
    console.print(metrics["classification_report"])


@config_app.command("show")
def config_show(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config (defaults if absent).")] = None,  # noqa: UP007
    overrides: SetOption = [],  # noqa: B006
) -> None:
    """Print the resolved config (defaults <- file <- --set)."""
    from imagefit.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, overrides)), nl=False)


@data_app.command("split")
def data_split(
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


@data_app.command("digits")
def data_digits(out: Annotated[Path, typer.Argument(help="Output folder.")]) -> None:
    """Write scikit-learn's digits as an ImageFolder of PNG files."""
    from imagefit.data.digits import write_digits

    console.print(f"wrote {write_digits(out)}")


@app.command()
def models() -> None:
    """List imagefit's own models (any timm architecture name works too)."""
    from imagefit.models.registry import list_models

    for name in list_models():
        typer.echo(name)
    typer.echo("... and every timm architecture (timm.list_models())")


def main() -> None:
    try:
        app()
    except Interrupted as exc:
        console.print(f"[yellow]interrupted:[/] {exc}")
        sys.exit(Interrupted.exit_code)
    except ImagefitError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
