"""Sweeps: many runs from one YAML file (a grid, named variants or an Optuna search), compared.

``load_sweep(path)`` parses and validates the file; ``run_sweep(spec)`` runs every trial into
``spec.out/runs/<trial>`` and writes ``all_results.json``, ``results.md``, ``results.csv``,
``plots/`` and ``report.html`` in ``spec.out``.
"""

from typing import Any

from imagefit.sweep.spec import SweepSpec, Trial, load_sweep

__all__ = ["SweepResult", "SweepSpec", "Trial", "load_sweep", "run_sweep"]


def __getattr__(name: str) -> Any:
    # The runner imports torch; reading and checking a sweep file must not wait for it.
    if name in ("SweepResult", "run_sweep"):
        from imagefit.sweep import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'imagefit.sweep' has no attribute {name!r}")
