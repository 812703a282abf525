"""Device, precision, threads and seeds: the process-level settings of a run."""

from __future__ import annotations

import logging
import os
import random
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagefit.config import TrainConfig
from imagefit.evaluate.inference import select_device

log = logging.getLogger(__name__)


# CPU flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles); without them
# bf16 autocast is emulated and slower than fp32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """The CPU computes bf16 natively: one of :data:`BF16_CPU_FLAGS` in its flags.

    The flags, not the vendor: AMD Zen 4 has AVX512-BF16, older Intel Xeons have neither.
    Without /proc/cpuinfo (macOS, Windows) torch's own capability names AMX when it has it.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return "amx" in torch.backends.cpu.get_cpu_capability().lower()
    for line in text.splitlines():
        if line.startswith("flags"):
            return not BF16_CPU_FLAGS.isdisjoint(line.partition(":")[2].split())
    return False


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision.

    ``auto``: bf16 (fp16 without it) on CUDA; bf16 on a CPU with native bf16 (AMX or
    AVX512-BF16), where resnet18 on the flower photos tested as accurate as in fp32 (within one
    test image of 180, under the seed-to-seed spread) and trained about 1.4x faster per epoch
    (``benchmarks/amp_bf16_cpu.py``); full precision elsewhere. ``off`` is exact fp32.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(train: TrainConfig) -> torch.device:
    """Apply threads, determinism and seeds; return the device."""
    if train.threads:
        torch.set_num_threads(train.threads)
    if train.deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(train.seed)
    return select_device(train.device)


def rng_state() -> dict[str, Any]:
    """All RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()  # legacy tuple: the global generator is an MT19937
    if not isinstance(np_state, tuple):
        raise TypeError(f"unexpected NumPy RNG state {type(np_state).__name__}, not a tuple")
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys_np, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys_np.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
