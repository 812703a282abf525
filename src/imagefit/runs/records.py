"""The typed records of a run folder: a history row, the test metrics and the summary.

Each converts to and from the plain dict its JSON file holds, with the keys (and their order)
of the first versions, so older run folders read back unchanged. ``from_dict`` takes what is
there: a missing key is None, an unknown one is kept in ``extra`` and written back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from imagefit.config import Config

R = TypeVar("R", bound="_Record")


@dataclass
class _Record:
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**{k: v for k, v in values.items() if k != "extra"}, **self.extra}


@dataclass
class HistoryRow(_Record):
    """One epoch of ``history.json`` / ``history.csv``; ``val_*`` are None without a val split.

    A multi-label run adds ``val_map`` (in ``extra``), so single-label files keep their columns."""

    epoch: int | None = None  # 1-based
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_top5_accuracy: float | None = None
    val_f1_macro: float | None = None
    lr: float | None = None
    phase: str | None = None  # freeze | partial | full
    time_s: float | None = None


# What a split's metrics are called where a person reads them: with no test split a run
# reports on val, which also picked the best epoch, so its numbers flatter the model.
SPLIT_LABELS = {"val": "val (also used for model selection: optimistic)"}


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


# seed 000's columns first, in honest names (its "test" columns were validation).
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


@dataclass
class Metrics(_Record):
    """``metrics.json``: one split's metrics (``evaluate.metrics.compute_metrics`` + the split)."""

    split: str | None = None
    num_samples: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    top5_accuracy: float | None = None
    f1_macro: float | None = None
    f1_weighted: float | None = None
    precision_macro: float | None = None
    recall_macro: float | None = None
    per_class: dict[str, list[Any]] | None = None
    confusion_matrix: list[list[int]] | None = None
    classes: list[str] | None = None
    classification_report: str | None = None


@dataclass
class Summary(_Record):
    """``summary.json``: what a finished run comes to, in one flat record (sweep tables read it)."""

    name: str | None = None
    model: str | None = None
    init: Any = None  # the provenance of the initial weights (models.weights)
    params_total: int | None = None
    params_trainable: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    monitor: str | None = None
    best_monitor: float | None = None
    best_val_accuracy: float | None = None
    test_accuracy: float | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    train_images_per_s: float | None = None
    early_stopped: bool | None = None
    skipped_files: int | None = None
    status: str | None = None
    # the pixels it trained and evaluated on: mean, std, crop_pct, interpolation, store_size,
    # and `why` (per key: config, the timm pretrained config, or a default)
    preprocessing: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("preprocessing") is None:  # summaries from before it was recorded read back
            out.pop("preprocessing", None)  # as they were written
        return out

    @classmethod
    def finished(
        cls,
        *,
        name: str,
        model: str,
        init: Any,
        params: tuple[int, int],
        history: Sequence[Mapping[str, Any]],
        monitor: str | None,
        best_epoch: int | None,
        best_monitor: float | None,
        metrics: Mapping[str, Any] | None,
        wall_time_s: float,
        train_time_s: float,
        train_images: int,
        early_stopped: bool,
        skipped_files: int,
        preprocessing: dict[str, Any] | None = None,
    ) -> Summary:
        """The summary of a run that ended normally: the one place that derives its numbers."""
        total, trainable = params
        return cls(
            name=name,
            model=model,
            init=init,
            params_total=total,
            params_trainable=trainable,
            epochs_run=len(history),
            best_epoch=best_epoch,
            monitor=monitor,
            best_monitor=best_monitor,
            best_val_accuracy=next(
                (r.get("val_accuracy") for r in history if r.get("epoch") == best_epoch), None
            ),
            test_accuracy=metrics.get("accuracy")
            if metrics and metrics.get("split", "test") == "test"
            else None,
            wall_time_s=wall_time_s,
            train_time_s=train_time_s,
            train_images_per_s=train_images / train_time_s if train_time_s else None,
            early_stopped=early_stopped,
            skipped_files=skipped_files,
            status="finished",
            preprocessing=preprocessing,
            # With no test split the final metrics are on val: the summary says so as a person
            # should read it (split_label). Only then: a run tested on test keeps the keys of
            # the first versions.
            extra={
                "reported_on": split_label(metrics["split"]),
                "reported_accuracy": metrics.get("accuracy"),
            }
            if metrics and metrics.get("split", "test") != "test"
            else {},
        )


@dataclass
class RunResult:
    """What a finished run returns: its folder and the records written there."""

    run_dir: Path
    history: list[dict[str, Any]]
    # metrics of the best checkpoint on the reported split: test, else val (its "split" says
    # which); None with neither
    metrics: dict[str, Any] | None
    summary: Summary
    config: Config | None = None
    main_process: bool = True  # False on the ranks of a distributed run that write no files
