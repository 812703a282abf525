"""TensorBoard sink (``track.tensorboard: true``): event files under ``RUN/tensorboard/``.

Scalars per epoch (the history columns, ``step = epoch``), the test metrics at the last epoch,
and the resolved config as text. ``tensorboard --logdir runs`` then compares runs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagefit.config import Config, dump_config
from imagefit.runs.layout import RunLayout
from imagefit.track.base import final_prefix, register_sink
from imagefit.track.mlflow_sink import TrackingError


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoardSink:
    """A SummaryWriter on ``run_dir/tensorboard`` (a resumed run appends a new event file)."""

    def __init__(self, cfg: Config, run_dir: Path):
        try:  # imports tensorboard: only when a run asks for it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackingError(
                f"track.tensorboard needs the tensorboard package ({exc}): pip install tensorboard"
            ) from None

        self.writer = SummaryWriter(log_dir=str(RunLayout(run_dir).tensorboard))
        self.last_epoch = 0
        # Indented four spaces: TensorBoard renders text as Markdown, this keeps the YAML verbatim.
        config = "\n".join(f"    {line}" for line in dump_config(cfg).splitlines())
        self.writer.add_text("config", config, global_step=0)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.last_epoch = int(row["epoch"])
        for key, value in _numbers(row).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=self.last_epoch)
        self.writer.flush()  # visible while training, not only at the end

    def log_final(self, metrics: dict[str, Any], summary: dict[str, Any], run_dir: Path) -> None:
        step = int(summary.get("epochs_run") or self.last_epoch)
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(f"{final_prefix(metrics)}{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register_sink("tensorboard", lambda cfg: cfg.track.tensorboard)
def _make_sink(cfg: Config, run_dir: Path) -> TensorBoardSink:
    return TensorBoardSink(cfg, run_dir)
