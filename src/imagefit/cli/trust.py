"""Commands that check whether results can be trusted: calibrate, explain, diff, data audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import console, metric_table


def calibrate(
    run: Annotated[Path, typer.Argument(help="Run folder (with a validation split).")],
) -> None:
    """Fit a temperature on the validation split; report ECE and NLL before and after.

    Stores the temperature in best.pt (predict and ONNX export use it), adds ece, nll,
    ece_calibrated, nll_calibrated and temperature to metrics.json, and writes
    RUN/calibration.json and RUN/plots/reliability.png.
    """
    from imagefit.evaluate.calibration import calibrate_run

    result = calibrate_run(run)
    split = "test" if "test" in result else "val"
    shown = result[split]
    rows = [
        ("temperature", result["temperature"]),
        (f"ECE ({split}, 15 bins)", f"{shown['ece']:.4f} -> {shown['ece_calibrated']:.4f}"),
        (f"NLL ({split})", f"{shown['nll']:.4f} -> {shown['nll_calibrated']:.4f}"),
    ]
    console.print(metric_table(f"calibration of {run}", rows))
    console.print(f"reliability diagram: {run / 'plots' / 'reliability.png'}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command()(calibrate)
