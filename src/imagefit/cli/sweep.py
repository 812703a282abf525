"""Commands that compare runs: sweep, report, baseline hog-svm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from imagefit.cli.common import (
    AllowUntrainedOption,
    LimitOption,
    SetOption,
    console,
    print_result,
    with_limit,
)
from imagefit.errors import CheckpointError, ConfigError
from imagefit.fileio import FileWriteError
from imagefit.runs.layout import REPORT, RunLayout

# The terminal's columns (results.md and results.csv have all): accuracy, size, cost (issue 4).
COMPACT = (
    "best_val_accuracy",
    "test_accuracy",
    "test_f1_macro",
    "params_total",
    "params_trainable",
    "wall_time_s",
    "train_images_per_s",
)
baseline_app = typer.Typer(
    no_args_is_help=True, help="Classical baselines, run like a training run."
)


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for index, name in enumerate(header):
        # Fold, not truncate: trial names and swept values are the point of the table.
        table.add_column(name, justify="left" if index < 2 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def sweep(
    file: Annotated[
        Path, typer.Argument(help="Sweep YAML (base config + grid, variants or search).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep folder [the file's out, else sweeps/NAME].")
    ] = None,
    limit_batches: LimitOption = None,
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Optuna storage URL shared by workers [search.storage]."),
    ] = None,
) -> None:
    """Run every trial of a sweep (finished ones are skipped) and compare them.

    Several processes (on one machine or many, the sweep folder on a shared path) may run the
    same sweep at once: each takes the next trial nobody has taken.
    """
    from imagefit.sweep.spec import load_sweep

    # Every trial's config is checked before torch is imported or a folder is made.
    spec = load_sweep(file, with_limit(overrides, limit_batches), out)
    if storage is not None:
        if spec.search is None:
            raise ConfigError(f"--storage: {file} is a {spec.mode} sweep, not an Optuna search")
        spec.search.storage = storage
    from imagefit.sweep import run_sweep
    from imagefit.sweep.table import groups_table, runs_table

    count = spec.search.n_trials if spec.search else len(spec.trials)
    console.print(f"sweep {spec.name} ({spec.mode}): {count} trial(s) into {spec.out}")
    result = run_sweep(spec)
    # The terminal gets the headline columns; results.md and results.csv have them all.
    console.print(_table(f"sweep {spec.name}", *runs_table(result.records, COMPACT)))
    if result.groups:
        console.print(_table("mean ± std over seeds", *groups_table(result.groups, COMPACT)))
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
    exit_if_failed(result.failed)


def exit_if_failed(failed: list[dict[str, str]]) -> None:
    """Name each failed trial on stderr, last, and exit 1: a sweep with holes is no success."""
    if not failed:
        return
    lines = [f"{len(failed)} trial(s) failed:"] + [f"  {f['name']}: {f['error']}" for f in failed]
    typer.echo("\n".join(lines), err=True)
    raise typer.Exit(1)


def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run folders (one, or several to compare).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help=f"HTML file [RUN_DIR/{REPORT}, or {REPORT}].")
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    allow_untrained: AllowUntrainedOption = False,
) -> None:
    """Write one self-contained HTML report of one run, or comparing several."""
    from imagefit.evaluate.plots import plot_run
    from imagefit.evaluate.report import write_report

    missing = [str(d) for d in run_dirs if not d.is_dir()]
    if missing:
        raise CheckpointError(f"run folder not found: {', '.join(missing)}")
    target = out or (RunLayout(run_dirs[0]).report if len(run_dirs) == 1 else Path(REPORT))
    page = write_report(run_dirs, target, title, allow_untrained=allow_untrained)
    if len(run_dirs) == 1:
        try:
            plot_run(run_dirs[0])  # the run's own PNGs too, for anyone browsing the folder
        except FileWriteError as exc:
            if out is None:  # the page itself would go there too
                raise
            console.print(f"[yellow]run folder not written[/yellow]: {exc}")
    console.print(f"report: {page}")


@baseline_app.command("hog-svm")
def hog_svm(
    config: Annotated[Path, typer.Argument(help="YAML config (its data section and output).")],
    overrides: SetOption = [],  # noqa: B006
) -> None:
    """HOG features + linear SVM on the config's split, written as a run folder."""
    from imagefit.config import load_config

    cfg = load_config(config, overrides)
    from imagefit.sweep.baseline import run_hog_svm_baseline

    print_result(run_hog_svm_baseline(cfg))


def register(app: typer.Typer) -> None:
    app.command()(sweep)
    app.command()(report)
    app.add_typer(baseline_app, name="baseline")
