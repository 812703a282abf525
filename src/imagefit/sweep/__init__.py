"""Sweeps: many runs from one YAML file (a grid, named variants or an Optuna search), compared.

``load_sweep(path)`` parses and validates the file; ``run_sweep(spec)`` runs every trial into
``spec.out/runs/<trial>`` and writes ``all_results.json``, ``results.md``, ``results.csv``,
``plots/`` and ``report.html`` in ``spec.out``.
"""

from imagefit.sweep.runner import SweepResult, run_sweep
from imagefit.sweep.spec import SweepSpec, Trial, load_sweep

__all__ = ["SweepResult", "SweepSpec", "Trial", "load_sweep", "run_sweep"]
