"""``fit(config)``: one training run, from config to a run folder with all its records.

for epoch: train_one_epoch -> evaluate(val) -> log -> checkpoint -> early stop; then the test
split, once, with the best checkpoint, into ``metrics.json`` and ``summary.json``. What comes
after (plots, ONNX export, the trackers' final report) is composed by the caller
(:mod:`imagefit.workflow`). Every epoch ends with ``last.pt`` holding all state
(weights, optimizer, schedule, scaler, early stopping, RNG, history), and a signal mid-epoch
saves the position inside the epoch too, so ``fit(resume=run_dir)`` continues exactly.
Under torchrun every process runs fit(); :mod:`imagefit.train.distributed` holds what differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagefit.config import Config, config_from_dict
from imagefit.data.loaders import DataBundle, Loader, derive_seed
from imagefit.datasets.sources import build_data
from imagefit.errors import CheckpointError, ConfigError, Interrupted
from imagefit.evaluate.inference import Precision, evaluate, evaluate_modes
from imagefit.evaluate.ledger import note_test_use, record_split
from imagefit.evaluate.metrics import compute_metrics
from imagefit.evaluate.multilabel import multilabel_metrics
from imagefit.evaluate.tta import TTA_METRICS
from imagefit.fileio import remove_partial_writes as remove_partial_records
from imagefit.models.registry import create_model
from imagefit.models.transfer import apply_strategy, count_parameters
from imagefit.runs import writer
from imagefit.runs.checkpoint import (
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    weights_checkpoint,
)
from imagefit.runs.environment import environment
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import read_config
from imagefit.runs.records import HistoryRow, RunResult, Summary, split_label
from imagefit.train.average import WeightAverage, better_weights
from imagefit.train.config_edits import reconcile, record_resume
from imagefit.train.distributed import Distributed, TrainingModule, convert_sync_bn, session
from imagefit.train.hooks import EpochHook, RunObserver
from imagefit.train.loop import EpochProgress, train_one_epoch
from imagefit.train.losses import create_criterion
from imagefit.train.optim import LRSchedule, create_optimizer
from imagefit.train.runtime import amp_dtype, configure, rng_state, set_rng_state
from imagefit.train.signals import graceful_stop
from imagefit.train.stopping import EarlyStopping

log = logging.getLogger(__name__)

LOGGED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")  # the epoch's log line
VAL_KEYS = ("loss", "accuracy", "top5_accuracy", "f1_macro")  # history's val_* columns
__all__ = ["EpochHook", "RunObserver", "RunResult", "fit"]


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
    ema: WeightAverage | None = None  # train.ema_decay > 0
    epoch: int = 0
    optimizer_steps: int = 0  # over the whole run: the weight average's warmup counts them
    progress: EpochProgress = field(default_factory=EpochProgress)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0
    wall_before: float = 0.0  # wall time of earlier sessions of a resumed run
    started: float = field(default_factory=time.perf_counter)
    dist: Distributed = field(default_factory=Distributed)
    wrap: TrainingModule = field(
        default_factory=lambda: TrainingModule(Distributed())
    )  # DDP, compile
    thresholds: list[float] | None = None  # multi-label: per class, tuned on the last val

    @property
    def multilabel(self) -> bool:
        return self.cfg.data.task == "multilabel"

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def phase(self, epoch: int) -> str:
        """Two-stage transfer: head only for ``freeze_epochs``, then the configured strategy."""
        return "freeze" if epoch < self.cfg.finetune.freeze_epochs else self.cfg.finetune.strategy

    def meta(self) -> dict[str, Any]:
        """What travels with the weights: enough to rebuild and preprocess without the config."""
        d, pre = self.cfg.data, self.data.preprocessing
        assert pre is not None  # build_data always resolves it
        return {
            "arch": self.cfg.model.name,
            "classes": self.data.classes,
            "num_classes": len(self.data.classes),
            "image_size": d.image_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            # evaluation pixels: shorter side int(image_size / crop_pct), centre crop
            "crop_pct": pre.crop_pct,
            "interpolation": pre.interpolation,
            "decoder": d.decoder,
            # relative to the checkpoint's own folder, so it stays true when the folder moves
            "run_dir": ".",
            "init": getattr(self.model, "imagefit_init", {"init": self.cfg.model.init}),
            "weights": "raw",  # best.pt: "ema" when it holds the weight average
            # multi-label models predict every class whose sigmoid reaches its threshold
            **({"task": "multilabel", "thresholds": self.thresholds} if self.multilabel else {}),
        }

    def accumulated_grads(self) -> dict[str, torch.Tensor] | None:
        """The gradients summed so far when a stop came between the micro-batches of a step."""
        if self.progress.batch % self.cfg.train.grad_accum_steps == 0:
            return None
        return {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None}

    def state(self) -> dict[str, Any]:
        """Everything to resume; distributed, every rank calls it (it gathers their RNG and sums)."""
        p = self.progress
        progress = {
            "loss_sum": p.loss_sum,
            "correct": p.correct,
            "count": p.count,
            "seconds": p.seconds,
        }
        ranks = (
            # each rank's own gradients: between micro-batches DDP has not summed them yet
            self.dist.gather(
                {"rng": rng_state(), "progress": progress, "grads": self.accumulated_grads()}
            )
            if self.dist.enabled
            else None
        )
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "grads": self.accumulated_grads(),
            "optimizer_steps": self.optimizer_steps,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "epoch": self.epoch,
            "batch": p.batch,
            "progress": progress,
            "ranks": ranks,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            "wall_seconds": self.wall_seconds(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "classes": self.data.classes,
            "meta": self.meta(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state["classes"] != self.data.classes:
            raise CheckpointError(
                f"{self.run_dir}: the checkpoint's classes {state['classes']} "
                f"differ from the data's {self.data.classes}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{self.layout.last} does not fit {self.cfg.model.name}: {str(exc).splitlines()[0]}"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema") or state["model"])
        self.optimizer_steps = state.get("optimizer_steps", 0)
        self.schedule.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])
        if self.precision.scaler is not None and state["scaler"] is not None:
            self.precision.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = state["epoch"], state["history"]
        mine = self.dist.rank_state(state) or {
            "rng": state["rng"],
            "progress": state["progress"],
            "grads": state.get("grads"),
        }
        params = dict(self.model.named_parameters())
        for name, grad in (mine.get("grads") or {}).items():
            params[name].grad = grad.to(params[name].device)
        self.progress = EpochProgress(batch=state["batch"], **mine["progress"])
        self.train_seconds, self.train_images = state["train_seconds"], state["train_images"]
        self.wall_before = state.get("wall_seconds", 0.0)
        set_rng_state(mine["rng"])


def _build(
    cfg: Config, run_dir: Path, init: str | None = None, dist: Distributed | None = None
) -> Run:
    dist = dist or Distributed()
    device = dist.place(configure(cfg.train))
    with dist.main_first():  # rank 0 decodes the image cache; the others then read it
        data = build_data(cfg, device, shard=dist.shard)
    if data.val is None and not cfg.train.monitor.startswith("train_"):
        raise ConfigError(
            f"train.monitor={cfg.train.monitor} needs a validation split, and "
            "data.val_fraction=0 leaves none: monitor train_loss or train_accuracy"
        )
    model = create_model(
        cfg.model.name, len(data.classes), init or cfg.model.init, cfg.model.drop_rate
    )
    # Module.to(device, memory_format=...) works; torch's stubs have no such overload
    model = model.to(  # type: ignore[call-overload]
        device,
        memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format,
    )
    model = convert_sync_bn(model, dist, cfg.train.sync_bn)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    precision = Precision(device, dtype, scaler, cfg.train.channels_last)
    optimizer = create_optimizer(model, cfg.optim, cfg.finetune)
    stopper = EarlyStopping(cfg.train.monitor, cfg.train.patience, cfg.train.min_delta)
    schedule = LRSchedule(optimizer, cfg.schedule, cfg.optim.lr, cfg.train.epochs, stopper.mode)
    train_labels = [label for _, label in data.manifest.splits["train"]]
    criterion = create_criterion(cfg, train_labels, data.classes).to(device)
    ema = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    return Run(
        cfg,
        run_dir,
        data,
        model,
        optimizer,
        schedule,
        stopper,
        precision,
        criterion,
        ema,
        dist=dist,
        wrap=TrainingModule(dist, cfg.train.compile),
    )


def _enter_phase(run: Run, epoch: int) -> None:
    phase = run.phase(epoch)
    apply_strategy(run.model, phase, run.cfg.finetune.partial_stages)
    if run.cfg.finetune.freeze_epochs and phase != "freeze":
        run.schedule.phase_factor = run.cfg.finetune.unfreeze_lr_factor


def _save(run: Run, paths: list[Path], best: Path | None = None, weights: str = "raw") -> None:
    """Write the training state to ``paths``; ``best`` gets the weights checkpoint (no
    optimizer: evaluation and export need none, and resume reads ``last.pt``) holding the
    ``weights`` the monitor prefers (raw, or the EMA)."""
    state = run.state()
    if run.dist.is_main:
        if best is not None:
            chosen = dict(state, meta={**state["meta"], "weights": weights})
            if weights == "ema" and run.ema is not None:
                chosen["model"] = run.ema.module.state_dict()
            save_checkpoint(weights_checkpoint(chosen), best)
        for path in paths:
            save_checkpoint(state, path)  # last.pt and periodic ones: all resume needs
    run.dist.barrier()  # no rank goes on (or exits) before rank 0 has written


def _epoch(run: Run, epoch: int, stop: Any) -> dict[str, Any]:
    """Train and validate one epoch; returns its history row."""
    _enter_phase(run, epoch)
    lr = run.schedule.start_epoch(epoch)
    if run.progress.batch == 0:  # a resumed epoch restored the RNG state of its checkpoint
        torch.manual_seed(derive_seed(run.cfg.train.seed, epoch, 1, *run.dist.seed_parts))
    started = time.perf_counter()

    def after_step() -> None:
        run.optimizer_steps += 1
        if run.ema is not None:
            run.ema.update(run.model, run.optimizer_steps)

    p = train_one_epoch(
        run.wrap(run.model),
        run.data.train,
        run.optimizer,
        run.criterion,
        run.precision,
        epoch,
        run.progress,
        run.cfg.train.grad_clip,
        should_stop=lambda: bool(stop),
        agree=run.dist.agree_step,
        accum_steps=run.cfg.train.grad_accum_steps,
        after_step=after_step,
    )
    p.seconds += time.perf_counter() - started
    if p.interrupted:
        _save(run, [run.layout.last])
        raise Interrupted(
            f"stopped at epoch {epoch + 1}, batch {p.batch}; resume with "
            f"`imagefit train --resume {run.run_dir}`"
        )
    loss_sum, correct, count = run.dist.sum([p.loss_sum, p.correct, p.count])  # all ranks' images
    p.loss_sum, p.correct, p.count = loss_sum, correct, int(count)
    run.train_seconds += p.seconds
    run.train_images += p.count
    run.dist.sync_buffers(run.model)
    val = _validate(run, run.model, "val")
    extra = {"val_map": val["map"]} if run.multilabel else {}
    if run.ema is not None:  # refused with multi-label (config.check_task)
        val_ema = _validate(run, run.ema.module, "val ema")
        extra = {f"val_{key}_ema": val_ema[key] for key in VAL_KEYS}
    return HistoryRow(
        epoch=epoch + 1,
        train_loss=p.loss,
        train_accuracy=p.accuracy,
        val_loss=val["loss"],
        val_accuracy=val["accuracy"],
        val_top5_accuracy=val.get("top5_accuracy"),
        val_f1_macro=val["f1_macro"],
        lr=lr,
        phase=run.phase(epoch),
        time_s=p.seconds,
        extra=extra,
    ).to_dict()


def _validate(run: Run, model: nn.Module, desc: str) -> dict[str, Any]:
    """Metrics of ``model`` on the val split (None each without one)."""
    if run.data.val is None:
        return dict.fromkeys((*VAL_KEYS, "map"))
    targets, logits, loss = run.dist.gather_predictions(
        *evaluate(model, run.data.val, run.precision, desc, run.multilabel)
    )
    if run.multilabel:  # its thresholds are tuned here, for the weights just validated
        found = multilabel_metrics(targets, logits, run.data.classes, loss)
        run.thresholds = found["thresholds"]
        return found
    return compute_metrics(targets, logits, run.data.classes, loss)


def _train_epochs(
    run: Run, observers: Sequence[RunObserver], stop: Any, on_epoch: EpochHook | None = None
) -> None:
    cfg, dist = run.cfg, run.dist
    if dist.any(bool(stop)) and run.epoch < cfg.train.epochs and not run.stopper.should_stop:
        # A signal while the data loaded; fit() has saved the starting point.
        raise Interrupted(
            f"stopped before training epoch {run.epoch + 1}; resume with "
            f"`imagefit train --resume {run.run_dir}`"
        )
    while run.epoch < cfg.train.epochs and not run.stopper.should_stop:
        row = _epoch(run, run.epoch, stop)
        run.history.append(row)
        if dist.is_main:
            for observer in observers:
                observer.log_epoch(row)
        value, weights = better_weights(row, cfg.train.monitor, run.stopper.mode)
        run.schedule.end_epoch(value)
        improved = value is not None and run.stopper.update(value, row["epoch"])
        run.epoch, run.progress = run.epoch + 1, EpochProgress()
        every = cfg.train.checkpoint_every
        periodic = (
            [run.layout.epoch_checkpoint(run.epoch)] if every and run.epoch % every == 0 else []
        )
        # last.pt goes last: it is the commit point. A kill while best.pt is written then
        # resumes from the previous last.pt and redoes this epoch (and best.pt) exactly,
        # instead of leaving a last.pt that claims a best.pt which never got written.
        _save(run, periodic + [run.layout.last], run.layout.best if improved else None, weights)
        if dist.is_main:
            writer.write_history(run.run_dir, run.history)
        if on_epoch is not None:
            on_epoch(row)  # may raise, e.g. to prune a sweep trial; the state is saved
        shown = "  ".join(f"{key} {row[key]:.4f}" for key in LOGGED if row[key] is not None)
        log.info(
            "epoch %d/%d  %s  lr %.3g  %.1fs%s",
            row["epoch"],
            cfg.train.epochs,
            shown,
            row["lr"],
            row["time_s"],
            "  *" if improved else "",
        )
        if dist.any(bool(stop)) and run.epoch < cfg.train.epochs:
            raise Interrupted(
                f"stopped after epoch {run.epoch}; resume with "
                f"`imagefit train --resume {run.run_dir}`"
            )


def _reported(run: Run) -> tuple[str | None, Loader | None]:
    """The split the final metrics are on: test, else val (which also chose the best epoch,
    so its numbers are optimistic, and are labelled so), else none."""
    for name, loader in (("test", run.data.test), ("val", run.data.val)):
        if loader is not None:
            return name, loader
    return None, None


def _announce_reported_split(run: Run) -> None:
    split, _ = _reported(run)
    count = len(run.data.manifest.splits.get(split or "", []))
    if split == "test":
        log.info("the final metrics will be on the test split (%d images)", count)
    elif split == "val":
        log.warning(
            "%s has no test split: the final metrics will be on %s (%d images); give the "
            "dataset a test/ folder for an unbiased estimate",
            run.cfg.data.root,
            split_label(split),
            count,
        )
    else:
        log.warning("no test or val split: the run ends without final metrics")


def _finish(run: Run) -> RunResult:
    """Evaluate the best checkpoint once on the reported split (test, else val); write
    metrics.json and summary.json."""
    best = load_checkpoint(run.layout.best) if run.dist.is_main else None
    run.dist.load_from_main(run.model, lambda: best["model"] if best else {})
    metrics = None
    tta = run.cfg.train.tta
    split, loader = _reported(run)
    if split is not None and loader is not None:
        modes = ("none", tta) if tta != "none" else ("none",)
        evaluated = evaluate_modes(run.model, loader, run.precision, modes, split, run.multilabel)
        targets, logits, loss = run.dist.gather_predictions(*evaluated["none"])
        if run.multilabel:  # the thresholds tuned on val with the best weights, never on test
            cuts = best["meta"].get("thresholds") if best else None
            found = multilabel_metrics(targets, logits, run.data.classes, loss, cuts)
        else:
            found = compute_metrics(targets, logits, run.data.classes, loss)
        metrics = {"split": split, **found}
        if tta != "none":
            targets, logits, loss = run.dist.gather_predictions(*evaluated[tta])
            with_tta = compute_metrics(targets, logits, run.data.classes, loss)
            metrics["tta"] = {"mode": tta, **{k: with_tta[k] for k in TTA_METRICS}}
    weights = best["meta"].get("weights", "raw") if best else "raw"
    summary = Summary.finished(
        name=run.run_dir.name,
        model=run.cfg.model.name,
        init=run.meta()["init"],
        params=count_parameters(run.model),
        history=run.history,
        monitor=run.cfg.train.monitor,
        best_epoch=run.stopper.best_epoch,
        best_monitor=run.stopper.best,
        metrics=metrics,
        wall_time_s=run.wall_seconds(),
        train_time_s=run.train_seconds,
        train_images=run.train_images,
        early_stopped=run.stopper.should_stop,
        skipped_files=len(run.data.skipped),
        preprocessing=run.data.preprocessing.to_dict() if run.data.preprocessing else None,
    )
    if run.ema is not None:
        summary.extra["best_weights"] = weights  # "ema": best.pt holds the weight average
    if metrics is not None and "tta" in metrics:
        summary.extra["test_accuracy_tta"] = metrics["tta"]["accuracy"]
        summary.extra["tta"] = tta
    if run.dist.is_main:
        if metrics is not None:
            writer.write_metrics(run.run_dir, metrics)
            if split == "test":
                note_test_use(run.run_dir, "fit")
        writer.write_summary(run.run_dir, summary)
    return RunResult(run.run_dir, run.history, metrics, summary, run.cfg, run.dist.is_main)


def _write_records(run: Run) -> None:
    device, seed = run.precision.device, run.cfg.train.seed
    writer.write_environment(run.run_dir, environment(device, seed, world_size=run.dist.world_size))
    run.data.manifest.save(run.layout.split)
    record_split(run.run_dir, run.data.manifest, None if run.data.cached else ("val", "test"))
    if run.data.skipped:
        writer.write_skipped(run.run_dir, run.data.skipped)
    if run.history:  # a kill between last.pt and history.json left the files one epoch behind
        writer.write_history(run.run_dir, run.history)
    total, trainable = count_parameters(run.model)
    log.info(
        "model %s: %d parameters, %d trainable (%s)",
        run.cfg.model.name,
        total,
        trainable,
        run.phase(run.epoch),
    )


def fit(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    on_epoch: EpochHook | None = None,
    observers: Sequence[RunObserver] = (),
) -> RunResult:
    """Train ``cfg`` into a new run folder, or continue the run folder ``resume``.

    ``on_epoch(row)`` is called after each epoch's history row is saved; ``observers`` (e.g.
    a tracker) follow the run from the process that writes its folder. Plots, export and
    the trackers' final report are not done here: see :func:`imagefit.workflow.train`.
    """
    source: Path | Config
    if resume is not None:
        source = Path(resume)
    elif cfg is not None:
        source = cfg
    else:
        raise ValueError("fit() needs a config or a run folder to resume")
    # The handlers cover the whole run, not only the epochs: a signal while the data loads
    # stops before the first step (with a checkpoint), and one during the final test
    # evaluation lets the run finish, where the default action would kill the process.
    with graceful_stop() as stop, session() as dist:
        if isinstance(source, Path):
            run = _resume(source, dist)
        else:
            run = _build(source, _new_run_dir(source, dist), dist=dist)
        if dist.is_main:
            _write_records(run)
            _announce_reported_split(run)
        if not dist.broadcast(run.layout.last.is_file()):
            # From here on, a kill at any moment leaves a resumable run.
            _save(run, [run.layout.last])
        if dist.is_main:
            for observer in observers:
                observer.start(run.cfg, run.run_dir)
        _train_epochs(run, observers, stop, on_epoch)
        return _finish(run)


def _new_run_dir(cfg: Config, dist: Distributed) -> Path:
    """Rank 0 creates the run folder; every rank learns its name."""
    run_dir = Path(dist.broadcast(str(writer.create_run_dir(cfg)) if dist.is_main else ""))
    if not dist.is_main:
        cfg.output.name = run_dir.name
    return run_dir


def _resume(run_dir: Path, dist: Distributed | None = None) -> Run:
    main = dist is None or dist.is_main
    state = _resume_state(run_dir, clean=main)
    stored = config_from_dict(state["config"], source=str(RunLayout(run_dir).last))
    if _resume_artifact(stored.data.split_manifest, read_config(run_dir)):
        stored.data.split_manifest = None
    cfg, changes = reconcile(stored, run_dir, state["epoch"])
    # The run's own split.json is what it trained on (written at its start, from the dataset
    # or from data.split_manifest), found from the folder as it is now: the config keeps what
    # was asked, so a moved or renamed run folder resumes from any working folder.
    asked = cfg.data.split_manifest
    cfg.data.split_manifest = str(RunLayout(run_dir).split.absolute())
    run = _build(cfg, run_dir, init="scratch", dist=dist)  # weights come from the checkpoint
    cfg.data.split_manifest = asked
    run.model.imagefit_init = state["meta"].get("init")
    run.load_state(state)
    if changes:
        log.warning(
            "%s: applying the edits of %s: %s",
            run_dir,
            RunLayout(run_dir).config.name,
            "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
        )
    if main:
        record_resume(run_dir, run.epoch, changes)
    log.info("resuming %s at epoch %d, batch %d", run_dir, run.epoch + 1, run.progress.batch)
    return run


def _resume_artifact(stored: str | None, written: dict[str, Any] | None) -> bool:
    """Whether the checkpoint's ``data.split_manifest`` is the run's own split.json that an
    earlier version put there on resume (relative to that day's working folder), where
    ``config.yaml`` (written at the start) has none."""
    asked = ((written or {}).get("data") or {}).get("split_manifest")
    return (
        stored is not None
        and asked is None
        and Path(stored).name == RunLayout(Path(".")).split.name
    )


def _resume_state(run_dir: Path, clean: bool = True) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: run folder not found: {run_dir}")
    last = RunLayout(run_dir).last
    if not last.is_file():
        raise CheckpointError(
            f"cannot resume {run_dir}: it has no {last.name} (the run never started training or "
            "was not made by imagefit); start it again instead"
        )
    if clean:  # distributed, only rank 0 touches the folder
        remove_partial_writes(run_dir)
        remove_partial_records(run_dir)
    state = load_checkpoint(last)
    missing = {"model", "optimizer", "config", "epoch", "rng"} - set(state)
    if missing:
        raise CheckpointError(
            f"{last}: not a resumable imagefit checkpoint (missing {sorted(missing)})"
        )
    return state
