"""The ``imagefit`` command: parses arguments, calls one library function, prints the result.

Each command group lives in its own module and registers here. Nothing here holds logic the
library lacks; errors a user can cause arrive as ImagefitError and are printed as one clear
line with a non-zero exit code.
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import Annotated

import typer

from imagefit.cli import data, export, fractal, pipeline, run, serve, sweep, trust, tune
from imagefit.cli.common import main_process
from imagefit.errors import ImagefitError, Interrupted
from imagefit.fileio import describe_os_error

FILE_SYSTEM_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, fine-tune, compare, evaluate and ship image classifiers.",
)


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if not main_process():
        level = max(level, logging.WARNING)  # under torchrun, rank 0 speaks for the run
    logging.basicConfig(
        level=level,
        format="%(levelname).1s %(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


run.register(app)
app.add_typer(run.config_app, name="config")
app.add_typer(data.app, name="data")
fractal.register(data.app)  # data fractal-search, ofdb, fractaldb
sweep.register(app)  # sweep, report, baseline
export.register(app)  # export, predict
tune.register(app)  # tune-batch
pipeline.register(app)  # pipeline
serve.register(app)  # serve
trust.register(app, data.app)  # calibrate, explain, diff, data audit


def main() -> None:
    try:
        app()
    except Interrupted as exc:
        typer.echo(f"interrupted: {exc}", err=True)
        sys.exit(Interrupted.exit_code)
    except ImagefitError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        # A write the library did not wrap yet: the file system's refusal is the user's to fix
        # (a read-only or full disk, a permission), so it gets one line too, not a traceback.
        if exc.errno not in FILE_SYSTEM_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{describe_os_error(exc)}", err=True)
        sys.exit(2)
