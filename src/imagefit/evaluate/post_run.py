"""The checks a finished run gets before a person trusts it, as one post-run step.

``trust_steps(run_dir)``: the test split's per-image predictions (``test_predictions.npz``,
what ``imagefit diff`` and sweep comparisons pair), temperature scaling on the validation
split (``calibration.json``, ``plots/reliability.png``, the temperature in ``best.pt``) and the
gallery of confident mistakes (``gallery/``). Each step that fails is logged and skipped: the
trained run is the result, and every step can be rerun on its own (``imagefit calibrate``,
``imagefit explain RUN --mistakes``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _predictions(run_dir: Path) -> Any:
    from imagefit.evaluate.predictions import save_test_predictions

    return str(save_test_predictions(run_dir))


def _calibration(run_dir: Path) -> Any:
    from imagefit.evaluate.calibration import calibrate_run

    return calibrate_run(run_dir)["temperature"]


def _gallery(run_dir: Path) -> Any:
    from imagefit.evaluate.explain import mistakes_gallery

    return mistakes_gallery(run_dir)["mistakes_total"]


STEPS: dict[str, Callable[[Path], Any]] = {
    "test_predictions": _predictions,
    "calibration": _calibration,  # after the predictions: it reuses them
    "gallery": _gallery,
}


def trust_steps(run_dir: str | Path, steps: tuple[str, ...] = tuple(STEPS)) -> dict[str, Any]:
    """Run ``steps`` on a finished run; returns step -> result, or None where a step failed."""
    results: dict[str, Any] = {}
    for name in steps:
        try:
            results[name] = STEPS[name](Path(run_dir))
        except Exception as exc:  # noqa: BLE001 - a failed check must not fail a finished run
            log.warning("%s: %s step failed (%s: %s)", run_dir, name, type(exc).__name__, exc)
            results[name] = None
    return results
