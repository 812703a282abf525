"""``fit(config)``: one training run, from config to a complete run folder.

for epoch: train_one_epoch -> evaluate(val) -> log -> checkpoint -> early stop; then the test
split, once, with the best checkpoint. Every epoch ends with ``last.pt`` holding all state
(weights, optimizer, schedule, scaler, early stopping, RNG, history), and a signal mid-epoch
saves the position inside the epoch too, so ``fit(resume=run_dir)`` continues exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagefit.config import Config, config_from_dict
from imagefit.data.loaders import DataBundle, build_data, derive_seed
from imagefit.errors import CheckpointError, Interrupted
from imagefit.evaluate.metrics import compute_metrics
from imagefit.models.registry import create_model
from imagefit.models.transfer import apply_strategy, count_parameters
from imagefit.track.base import Tracker
from imagefit.train import rundir
from imagefit.train.checkpoint import load_checkpoint, save_checkpoint
from imagefit.train.loop import EpochProgress, Precision, evaluate, train_one_epoch
from imagefit.train.optim import LRSchedule, create_optimizer
from imagefit.train.runtime import amp_dtype, configure, rng_state, set_rng_state
from imagefit.train.signals import graceful_stop
from imagefit.train.stopping import EarlyStopping

log = logging.getLogger(__name__)

EpochHook = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None  # test metrics of the best checkpoint (None: no test split)
    summary: dict[str, Any]


@dataclass
class Run:
    """Everything a run holds while it trains."""

    cfg: Config
    run_dir: Path
    data: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    stopper: EarlyStopping
    precision: Precision
    criterion: nn.Module
    epoch: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0
    wall_before: float = 0.0  # wall time of earlier sessions of a resumed run
    started: float = field(default_factory=time.perf_counter)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def phase(self, epoch: int) -> str:
        """Two-stage transfer: head only for ``freeze_epochs``, then the configured strategy."""
        return "freeze" if epoch < self.cfg.finetune.freeze_epochs else self.cfg.finetune.strategy

    def meta(self) -> dict[str, Any]:
        """What travels with the weights: enough to rebuild and preprocess without the config."""
        d = self.cfg.data
        return {"arch": self.cfg.model.name, "classes": self.data.classes,
                "num_classes": len(self.data.classes), "image_size": d.image_size,
                "mean": list(d.mean), "std": list(d.std), "run_dir": str(self.run_dir.resolve()),
                "init": getattr(self.model, "imagefit_init", {"init": self.cfg.model.init})}  # fmt: skip

    def state(self) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "early_stopping": self.stopper.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "epoch": self.epoch, "batch": p.batch,
            "progress": {"loss_sum": p.loss_sum, "correct": p.correct, "count": p.count, "seconds": p.seconds},
            "history": self.history, "train_seconds": self.train_seconds, "train_images": self.train_images,
            "wall_seconds": self.wall_seconds(),
            "rng": rng_state(), "config": self.cfg.to_dict(), "classes": self.data.classes,
            "meta": self.meta(),
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        if state["classes"] != self.data.classes:
            raise CheckpointError(f"{self.run_dir}: the checkpoint's classes {state['classes']} "
                                  f"differ from the data's {self.data.classes}")  # fmt: skip
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{self.run_dir}/last.pt does not fit {self.cfg.model.name}: "
                                  f"{str(exc).splitlines()[0]}") from None  # fmt: skip
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])
        if self.precision.scaler is not None and state["scaler"] is not None:
            self.precision.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.progress = EpochProgress(batch=state["batch"], **state["progress"])
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.wall_before = state.get("wall_seconds", 0.0)
        set_rng_state(state["rng"])


def _build(cfg: Config, run_dir: Path, init: str | None = None) -> Run:
    device = configure(cfg.train)
    data = build_data(cfg, device)
    model = create_model(cfg.model.name, len(data.classes), init or cfg.model.init, cfg.model.drop_rate)
    model = model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    precision = Precision(device, dtype, scaler, cfg.train.channels_last)
    optimizer = create_optimizer(model, cfg.optim, cfg.finetune)
    stopper = EarlyStopping(cfg.train.monitor, cfg.train.patience, cfg.train.min_delta)
    schedule = LRSchedule(optimizer, cfg.schedule, cfg.optim.lr, cfg.train.epochs, stopper.mode)
    criterion = _criterion(cfg)
    return Run(cfg, run_dir, data, model, optimizer, schedule, stopper, precision, criterion)


def _criterion(cfg: Config) -> nn.Module:
    if cfg.data.augment and (cfg.augment.mixup > 0 or cfg.augment.cutmix > 0):
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # mixup targets are soft, label smoothing included
    return nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)


def _enter_phase(run: Run, epoch: int) -> None:
    phase = run.phase(epoch)
    apply_strategy(run.model, phase, run.cfg.finetune.partial_stages)
    if run.cfg.finetune.freeze_epochs and phase != "freeze":
        run.schedule.phase_factor = run.cfg.finetune.unfreeze_lr_factor


def _save(run: Run, names: list[str]) -> None:
    state = run.state()
    for name in names:
        save_checkpoint(state, run.run_dir / name)


def _epoch(run: Run, epoch: int, stop: Any) -> dict[str, Any]:
    """Train and validate one epoch; returns its history row."""
    _enter_phase(run, epoch)
    lr = run.schedule.start_epoch(epoch)
    if run.progress.batch == 0:  # a resumed epoch restored the RNG state of its checkpoint
        torch.manual_seed(derive_seed(run.cfg.train.seed, epoch, 1))
    started = time.perf_counter()
    p = train_one_epoch(run.model, run.data.train, run.optimizer, run.criterion, run.precision,
                        epoch, run.progress, run.cfg.train.grad_clip, should_stop=lambda: bool(stop))  # fmt: skip
    p.seconds += time.perf_counter() - started
    if p.interrupted:
        _save(run, ["last.pt"])
        raise Interrupted(f"stopped at epoch {epoch + 1}, batch {p.batch}; resume with "
                          f"`imagefit train --resume {run.run_dir}`")  # fmt: skip
    run.train_seconds += p.seconds
    run.train_images += p.count
    targets, logits, loss = evaluate(run.model, run.data.val, run.precision, desc="val")
    val = compute_metrics(targets, logits, run.data.classes, loss)
    return {"epoch": epoch + 1, "train_loss": p.loss, "train_accuracy": p.accuracy,
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "val_top5_accuracy": val["top5_accuracy"], "val_f1_macro": val["f1_macro"],
            "lr": lr, "phase": run.phase(epoch), "time_s": p.seconds}  # fmt: skip


def _train_epochs(run: Run, tracker: Tracker, on_epoch: EpochHook | None = None) -> None:
    cfg = run.cfg
    with graceful_stop() as stop:
        while run.epoch < cfg.train.epochs and not run.stopper.should_stop:
            row = _epoch(run, run.epoch, stop)
            run.history.append(row)
            tracker.log_epoch(row)
            value = row[cfg.train.monitor] if cfg.train.monitor in row else None
            run.schedule.end_epoch(value)
            improved = value is not None and run.stopper.update(value, row["epoch"])
            run.epoch, run.progress = run.epoch + 1, EpochProgress()
            every = cfg.train.checkpoint_every
            periodic = [f"epoch_{run.epoch:03d}.pt"] if every and run.epoch % every == 0 else []
            _save(run, ["last.pt"] + (["best.pt"] if improved else []) + periodic)
            rundir.write_history(run.run_dir, run.history)
            if on_epoch is not None:
                on_epoch(row)  # may raise, e.g. to prune a sweep trial; the state is saved
            log.info("epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  "
                     "lr %.3g  %.1fs%s", row["epoch"], cfg.train.epochs, row["train_loss"],
                     row["train_accuracy"], row["val_loss"], row["val_accuracy"], row["lr"],
                     row["time_s"], "  *" if improved else "")  # fmt: skip
            if stop and run.epoch < cfg.train.epochs:
                raise Interrupted(f"stopped after epoch {run.epoch}; resume with "
                                  f"`imagefit train --resume {run.run_dir}`")  # fmt: skip


def _finish(run: Run, tracker: Tracker) -> RunResult:
    """Test the best checkpoint once; write metrics.json and summary.json."""
    best = load_checkpoint(run.run_dir / "best.pt", map_location=run.precision.device)
    run.model.load_state_dict(best["model"])
    metrics = None
    if run.data.test is not None:
        targets, logits, loss = evaluate(run.model, run.data.test, run.precision, desc="test")
        metrics = {"split": "test", **compute_metrics(targets, logits, run.data.classes, loss)}
        rundir.write_json(run.run_dir / "metrics.json", metrics)
    total, trainable = count_parameters(run.model)
    summary = {
        "name": run.run_dir.name, "model": run.cfg.model.name, "init": run.meta()["init"],
        "params_total": total, "params_trainable": trainable, "epochs_run": len(run.history),
        "best_epoch": run.stopper.best_epoch, "monitor": run.cfg.train.monitor,
        "best_monitor": run.stopper.best,
        "best_val_accuracy": next((r["val_accuracy"] for r in run.history if r["epoch"] == run.stopper.best_epoch), None),
        "test_accuracy": metrics["accuracy"] if metrics else None,
        "wall_time_s": run.wall_seconds(),
        "train_time_s": run.train_seconds,
        "train_images_per_s": run.train_images / run.train_seconds if run.train_seconds else None,
        "early_stopped": run.stopper.should_stop, "skipped_files": len(run.data.skipped),
        "status": "finished",
    }  # fmt: skip
    rundir.write_json(run.run_dir / "summary.json", summary)
    tracker.log_final(metrics or {}, summary, run.run_dir)
    return RunResult(run.run_dir, run.history, metrics, summary)


def _write_records(run: Run) -> None:
    rundir.write_json(run.run_dir / "environment.json", rundir.environment(run.precision.device, run.cfg.train.seed))
    run.data.manifest.save(run.run_dir / "split.json")
    if run.data.skipped:
        rundir.write_json(run.run_dir / "skipped.json", run.data.skipped)
    total, trainable = count_parameters(run.model)
    log.info("model %s: %d parameters, %d trainable (%s)", run.cfg.model.name, total, trainable,
             run.phase(run.epoch))  # fmt: skip


def fit(cfg: Config | None = None, *, resume: str | Path | None = None,
        on_epoch: EpochHook | None = None) -> RunResult:  # fmt: skip
    """Train ``cfg`` into a new run folder, or continue the run folder ``resume``.

    ``on_epoch(row)`` is called after each epoch's history row is saved.
    """
    if resume is not None:
        run_dir = Path(resume)
        state = _resume_state(run_dir)
        cfg = config_from_dict(state["config"], source=f"{run_dir}/last.pt")
        cfg.data.split_manifest = cfg.data.split_manifest or str(run_dir / "split.json")
        run = _build(cfg, run_dir, init="scratch")  # weights come from the checkpoint
        run.model.imagefit_init = state["meta"].get("init")
        run.load_state(state)
        log.info("resuming %s at epoch %d, batch %d", run_dir, run.epoch + 1, run.progress.batch)
    else:
        if cfg is None:
            raise ValueError("fit() needs a config or a run folder to resume")
        run_dir = rundir.create_run_dir(cfg)
        run = _build(cfg, run_dir)
    _write_records(run)
    tracker = Tracker(run.cfg, run.run_dir)
    try:
        _train_epochs(run, tracker, on_epoch)
        return _finish(run, tracker)
    finally:
        tracker.close()


def _resume_state(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: run folder not found: {run_dir}")
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: it has no last.pt (the run never finished an "
                              "epoch or was not made by imagefit); start it again instead")  # fmt: skip
    state = load_checkpoint(last)
    missing = {"model", "optimizer", "config", "epoch", "rng"} - set(state)
    if missing:
        raise CheckpointError(f"{last}: not a resumable imagefit checkpoint (missing {sorted(missing)})")
    return state
