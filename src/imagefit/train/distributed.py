"""Distributed data parallel under ``torchrun``: one process per device, one run folder.

``torchrun --nproc_per_node=N -m imagefit train CONFIG`` starts N processes and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address; :func:`session` joins them (NCCL for CUDA
tensors, gloo for CPU ones). What each process does differently:

- data: every process computes the same seeded permutation of an epoch and takes its slice of
  each global batch (``train.batch_size`` is per process: the global batch is N x that);
  validation and test are split into contiguous shards without padding, and the exact
  per-sample predictions are gathered, so metrics equal a single-process evaluation;
- only rank 0 creates the run folder (and broadcasts its name), writes checkpoints, history,
  metrics and tracking; checkpoints hold the unwrapped model's state dict, plus each rank's RNG
  state and running sums, so an interrupted run resumes exactly with the same N;
- a stop (signal) or a non-finite loss on any rank stops every rank at the same step: the
  flags of each step are all-reduced together with the finiteness check.

Running ranks on several machines uses torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``);
the data and, for ``--resume``, the run folder must be reachable from every machine.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from imagefit.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; the defaults describe a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which slice of every batch list this process takes."""
        return self.rank, self.world_size

    @property
    def seed_parts(self) -> tuple[int, ...]:
        """Extra seed parts that give each rank its own dropout masks (none when alone)."""
        return (self.rank,) if self.enabled else ()

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box: list[Any] = [value if self.is_main else None]  # rank 0 fills it on every rank
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a signal reaching one process)."""
        return any(self.gather(bool(flag))) if self.enabled else bool(flag)

    def agree_step(self, finite: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """(finite on every rank, stop asked on any rank) after a step: one small all-reduce,
        which is also the step's one host sync (the finiteness check has it anyway)."""
        if not self.enabled:
            return bool(finite), stop
        flags = torch.stack([~finite, torch.full_like(finite, stop)]).float()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad, stop_any = flags.tolist()
        return not bad, bool(stop_any)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks, in float64."""
        if not self.enabled:
            return values
        return [float(v) for v in np.sum(self.gather(values), axis=0)]

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. decoding the image cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm statistics) to every rank before evaluating.

        DDP broadcasts them at the start of each forward pass, so after the last training
        step each rank holds statistics updated with its own batch.
        """
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def load_from_main(self, model: nn.Module, load: Callable[[], dict[str, Any]]) -> None:
        """Rank 0 calls ``load()`` (reads a file); every rank gets those weights."""
        state = self.broadcast(load() if self.is_main else None)
        if state is None:
            raise RuntimeError("rank 0 broadcast no state dict")
        model.load_state_dict(state)

    def gather_predictions(
        self, targets: np.ndarray, logits: np.ndarray, loss: float
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Join the ranks' contiguous evaluation shards: exact, in sample order, no padding."""
        if not self.enabled:
            return targets, logits, loss
        parts = [p for p in self.gather((targets, logits, loss * len(targets))) if len(p[0])]
        if not parts:
            return targets, logits, loss
        joined_targets = np.concatenate([p[0] for p in parts])
        joined_logits = np.concatenate([p[1] for p in parts])
        return joined_targets, joined_logits, sum(p[2] for p in parts) / len(joined_targets)

    def rank_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's RNG state and running sums from a checkpoint (None: use the shared ones).

        A run stopped inside an epoch continues only with the process count that stopped it:
        the position in the epoch counts global batches of that many shards.
        """
        ranks = state.get("ranks")
        saved_world = len(ranks) if ranks else 1
        if saved_world == self.world_size:
            return ranks[self.rank] if ranks else None
        if state.get("batch", 0):
            raise CheckpointError(
                f"the run stopped inside epoch {state['epoch'] + 1} with {saved_world} "
                f"process(es); resume it with {saved_world} (torchrun --nproc_per_node="
                f"{saved_world}), or from an epoch boundary with any number"
            )
        log.warning(
            "resuming a %d-process run with %d processes: the result is not bitwise "
            "the same as an uninterrupted run",
            saved_world,
            self.world_size,
        )
        return None


def from_environment() -> Distributed:
    """The rank layout torchrun put in the environment (single process when absent)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if "RANK" not in env:
        raise ConfigError(
            f"WORLD_SIZE={world} but RANK is not set; start distributed runs with "
            "torchrun --nproc_per_node=N -m imagefit train CONFIG"
        )
    return Distributed(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))


@contextmanager
def session(timeout_s: float = 1800) -> Iterator[Distributed]:
    """This process's layout for a run, joining torchrun's process group on first use.

    The group then stays for the life of the process (left at exit): several runs in one
    process (a sweep under torchrun) share it. Destroying and creating the default group again
    hangs gloo's rendezvous on torchrun's store (torch 2.14).
    """
    layout = from_environment()
    if layout.enabled and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            # All-gathers of Python objects go through the current device: set it first.
            torch.cuda.set_device(layout.local_rank % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"  # each collective picks by its tensors' device
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        atexit.register(_leave)
        log.info(
            "process %d of %d (local rank %d, %s)",
            layout.rank,
            layout.world_size,
            layout.local_rank,
            backend,
        )
    yield layout


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class TrainingModule:
    """The module the training loop calls: the model, in DDP and/or ``torch.compile``.

    Rebuilt when the set of trainable parameters changes (a two-stage transfer unfreezing):
    DDP only registers gradient hooks for parameters that require grad when it is built.
    ``model`` itself stays unwrapped: it is what checkpoints and evaluation use.
    """

    def __init__(self, layout: Distributed, compile_model: bool = False):
        self.layout, self.compile = layout, compile_model
        self.key: tuple[bool, ...] | None = None
        self.net: nn.Module | None = None

    def __call__(self, model: nn.Module) -> nn.Module:
        key = tuple(p.requires_grad for p in model.parameters())
        if self.net is None or key != self.key:
            self.net, self.key = self._wrap(model), key
        return self.net

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.layout.enabled:
            device = next(model.parameters()).device
            ids = [device.index] if device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.compile:
            compiled = torch.compile(net)  # an OptimizedModule, typed as a plain callable
            if not isinstance(compiled, nn.Module):
                raise TypeError(f"torch.compile returned {type(compiled).__name__}, not a module")
            net = compiled
        return net


def convert_sync_bn(model: nn.Module, layout: Distributed, enabled: bool) -> nn.Module:
    """Batch norms that normalise over the global batch (``train.sync_bn``, CUDA only)."""
    if not (enabled and layout.enabled):
        return model
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm); set it false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
