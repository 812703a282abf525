"""Early stopping and best-checkpoint selection on one monitored history column."""

from __future__ import annotations

from typing import Any


def monitor_mode(metric: str) -> str:
    """Losses are minimised, everything else (accuracies, F1) maximised."""
    return "min" if metric.endswith("loss") else "max"


class EarlyStopping:
    """Tracks the best value of ``metric``; ``should_stop`` after ``patience`` epochs without
    an improvement larger than ``min_delta`` (never, when patience is None)."""

    def __init__(self, metric: str, patience: int | None, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.mode = monitor_mode(metric)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        if self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
