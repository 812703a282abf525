"""What ``fit`` tells the outside while it trains, without knowing who listens.

Trackers (MLflow, TensorBoard) and a sweep's pruner plug in here; ``train`` never imports
them (see :mod:`imagefit.layers`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from imagefit.config import Config

# Called after each epoch's history row is saved; may raise, e.g. to prune a sweep trial.
EpochHook = Callable[[dict[str, Any]], None]


class RunObserver(Protocol):
    """Follows a run from the process that writes its folder (rank 0 under torchrun).

    ``start`` comes once the folder holds its records (a resumed run included), ``log_epoch``
    with each epoch's history row. An observer that must never stop training (a tracker)
    catches its own errors.
    """

    def start(self, cfg: Config, run_dir: Path) -> None: ...

    def log_epoch(self, row: dict[str, Any]) -> None: ...
