"""``tune_batch(cfg)``: the largest training batch that fits the device's memory.

Doubling from 2 until a batch does not fit, then bisection between the last batch that fit and
the first that did not (on multiples of 8 once past 8: the sizes GPUs like). Every probe is one
real training step through imagefit's own loop at the config's model, image size, precision
and memory format, after a warm-up step that creates the optimizer state.

On CUDA a batch fits when its step raises no out-of-memory error and its peak allocation stays
under the device memory less ``headroom``. On a CPU the memory is host RAM, where running out
kills the process instead of raising: the peak resident memory of each step is sampled, and a
batch whose size the earlier probes predict to exceed the available RAM (less headroom) is
never run. ``max_batch`` caps the search (on a CPU big batches are slow as well as large).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from imagefit.config import Config
from imagefit.data.folder import find_classes
from imagefit.errors import ConfigError
from imagefit.evaluate.inference import Precision
from imagefit.models.registry import create_model
from imagefit.models.transfer import apply_strategy
from imagefit.train.loop import EpochProgress, train_one_epoch
from imagefit.train.losses import create_criterion
from imagefit.train.optim import create_optimizer
from imagefit.train.runtime import amp_dtype, configure

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass
class Probe:
    """One batch size tried (or ruled out by prediction)."""

    batch: int
    fits: bool
    peak_bytes: int | None = None  # process RSS (CPU) or allocated device memory (CUDA)
    step_s: float | None = None
    note: str = ""


@dataclass
class TuneResult:
    device: str
    memory: str  # what the limit is about: "GPU memory" or "host RAM"
    total_bytes: int
    limit_bytes: int
    largest: int  # the largest batch that fitted
    max_batch: int
    probes: list[Probe] = field(default_factory=list)


class MemoryWatch(Protocol):
    kind: str  # what the memory is, for the table
    oom_is_fatal: bool  # True: never run a batch predicted not to fit

    def total(self) -> int: ...

    def measure(self, step: Callable[[], None]) -> int: ...

    def is_out_of_memory(self, exc: BaseException) -> bool: ...

    def release(self) -> None: ...


class DeviceMemory:
    """CUDA: the device's memory; out-of-memory errors are caught."""

    kind = "GPU memory"
    oom_is_fatal = False

    def __init__(self, device: torch.device):
        self.device = device

    def total(self) -> int:
        return torch.cuda.mem_get_info(self.device)[1]

    def measure(self, step: Callable[[], None]) -> int:
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, torch.cuda.OutOfMemoryError)

    def release(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


class HostMemory:
    """CPU: host RAM. The limit is what this process holds plus what the system has free."""

    kind = "host RAM"
    oom_is_fatal = True  # the kernel's OOM killer, not an exception

    def __init__(self) -> None:
        if not Path("/proc/self/statm").is_file():
            raise ConfigError(
                "tune-batch on a CPU needs Linux's /proc to watch memory; "
                "pass --max-batch and choose by hand"
            )

    def total(self) -> int:
        return _rss_bytes() + _available_bytes()

    def measure(self, step: Callable[[], None]) -> int:
        """Peak RSS while ``step`` runs, sampled every millisecond by a thread."""
        peak, done = [_rss_bytes()], threading.Event()

        def sample() -> None:
            while not done.wait(0.001):
                peak[0] = max(peak[0], _rss_bytes())

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            step()
        finally:
            done.set()
            watcher.join()
        return max(peak[0], _rss_bytes())

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate" in str(exc)

    def release(self) -> None:
        gc.collect()


class _OneBatch:
    """A loader of one batch, so that a probe runs imagefit's own training step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.x, self.y


@dataclass
class _Trainer:
    """Model, optimizer and loss of the config, and a step at any batch size."""

    cfg: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    precision: Precision
    classes: int

    def step(self, batch: int) -> None:
        size, device = self.cfg.data.image_size, self.precision.device
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, self.classes, (batch,), device=device)
        train_one_epoch(
            self.model,
            _OneBatch(x, y),  # type: ignore[arg-type]  # duck-types the Loader the loop reads
            self.optimizer,
            self.criterion,  # type: ignore[arg-type]
            self.precision,
            0,
            EpochProgress(),
            self.cfg.train.grad_clip,
        )


def count_classes(cfg: Config, default: int = 1000) -> int:
    """Class folders of ``data.root`` (its train/ split when present), else ``default``."""
    root = Path(cfg.data.root) if cfg.data.root else None
    for folder in [root / "train", root] if root else []:
        if folder.is_dir():
            try:
                return len(find_classes(folder))
            except Exception:  # noqa: BLE001 - any unreadable root falls back to the default
                break
    log.info("classes: %d (no readable data.root; the head barely changes memory)", default)
    return default


def _trainer(cfg: Config, device: torch.device, classes: int) -> _Trainer:
    if cfg.train.compile:
        log.info("train.compile is ignored here: each batch size would compile again")
    model = create_model(cfg.model.name, classes, "scratch", cfg.model.drop_rate)
    fmt = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    # Module.to(device, memory_format=...) works; torch's stubs have no such overload
    model = model.to(device, memory_format=fmt)  # type: ignore[call-overload]
    apply_strategy(model, cfg.finetune.strategy, cfg.finetune.partial_stages)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    precision = Precision(device, dtype, scaler, cfg.train.channels_last)
    optimizer = create_optimizer(model, cfg.optim, cfg.finetune)
    # train.class_weights=balanced needs the train labels, which probing has no use for: a
    # (classes,) weight vector does not change a step's memory, so the probe goes without it.
    train = cfg.train.model_copy(update={"class_weights": "none"})
    unweighted = cfg.model_copy(update={"train": train})
    criterion = create_criterion(unweighted, [], [str(i) for i in range(classes)]).to(device)
    return _Trainer(cfg, model, optimizer, criterion, precision, classes)


def search(
    fits: Callable[[int], bool], max_batch: int, start: int = 2, granularity: int = 8
) -> int:
    """Largest batch in [start, max_batch] with ``fits``: doubling from ``start``, then bisection;
    0 when ``start`` does not fit."""
    lo, hi, batch = 0, max_batch + 1, min(start, max_batch)
    while batch < hi:
        if not fits(batch):
            hi = batch
            break
        lo = batch
        if batch == max_batch:
            break
        batch = min(batch * 2, max_batch)
    step = granularity if lo >= granularity else 1
    while hi - lo > step:
        mid = max(lo + step, (lo + hi) // 2 // step * step)
        if mid >= hi:
            break
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def tune_batch(
    cfg: Config, max_batch: int | None = None, headroom: float = 0.1, num_classes: int | None = None
) -> TuneResult:
    """Find the largest batch of ``cfg``'s training step that fits (see the module docstring)."""
    if not 0 <= headroom < 1:
        raise ConfigError(f"headroom must be in [0, 1), got {headroom}")
    device = configure(cfg.train)
    memory: MemoryWatch = DeviceMemory(device) if device.type == "cuda" else HostMemory()
    max_batch = max_batch or (4096 if device.type == "cuda" else 512)
    trainer = _trainer(cfg, device, num_classes or count_classes(cfg))
    # Batch 2 first: it creates the optimizer state, which every later step holds too (a
    # batch of 1 is no training batch: batch norm needs two values per channel).
    trainer.step(2)
    total = memory.total()
    result = TuneResult(str(device), memory.kind, total, int(total * (1 - headroom)), 0, max_batch)
    result.largest = search(lambda b: _probe(trainer, memory, result, b).fits, max_batch)
    if result.largest == 0:
        raise ConfigError(
            f"not even a batch of 2 fits {cfg.model.name} at {cfg.data.image_size} px "
            f"in {result.limit_bytes / GIB:.1f} GiB of {memory.kind}"
        )
    return result


def _predicted(probes: list[Probe], batch: int) -> float | None:
    """Peak memory at ``batch`` extrapolated from the two largest batches that fitted."""
    fitted = sorted((p.batch, p.peak_bytes) for p in probes if p.fits and p.peak_bytes)
    if len(fitted) < 2 or fitted[-1][0] == fitted[-2][0]:
        return None
    (b1, m1), (b2, m2) = fitted[-2], fitted[-1]
    return m2 + max(0.0, (m2 - m1) / (b2 - b1)) * (batch - b2)


def _probe(trainer: _Trainer, memory: MemoryWatch, result: TuneResult, batch: int) -> Probe:
    guess = _predicted(result.probes, batch)
    if memory.oom_is_fatal and guess is not None and guess > result.limit_bytes:
        probe = Probe(batch, False, int(guess), note="predicted over the limit; not run")
    else:
        probe = _run(trainer, memory, result.limit_bytes, batch)
    log.info("batch %d: %s", batch, "fits" if probe.fits else probe.note)
    result.probes.append(probe)
    return probe


def _run(trainer: _Trainer, memory: MemoryWatch, limit: int, batch: int) -> Probe:
    started = time.perf_counter()
    try:
        peak = memory.measure(lambda: trainer.step(batch))
    except (RuntimeError, MemoryError) as exc:
        if not memory.is_out_of_memory(exc):
            raise
        trainer.optimizer.zero_grad(set_to_none=True)
        return Probe(batch, False, note="out of memory")
    finally:
        memory.release()
    seconds = time.perf_counter() - started
    if peak > limit:
        return Probe(batch, False, peak, seconds, note="over the limit")
    return Probe(batch, True, peak, seconds)
