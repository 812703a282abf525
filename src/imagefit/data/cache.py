"""The small-image fast path: decode a dataset once into a uint8 array, cached on disk.

Decoding PNGs is the cost that dominates small-image training on a CPU; doing it once (in
parallel threads: Pillow releases the GIL while decoding and resizing) and keeping the pixels
as one ``(N, S, S, 3)`` uint8 array lets every later epoch, and every later run on the same
files, skip it. The cache key hashes the files' bytes, so an edited image is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imagefit.data.folder import Sample
from imagefit.data.images import load_array
from imagefit.errors import DataError

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1  # bump when load_array's output changes, to invalidate old caches


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMAGEFIT_CACHE", Path.home() / ".cache" / "imagefit"))


def decoded_bytes(count: int, size: int) -> int:
    return count * size * size * 3


@dataclass
class DecodedImages:
    """Pixels of a list of samples; ``bad`` maps sample positions that failed to a reason."""

    pixels: np.ndarray  # (N_good, S, S, 3) uint8
    keep: list[int]  # positions in the input list that ``pixels`` holds, in order
    bad: dict[int, str] = field(default_factory=dict)


def cache_key(samples: Sequence[Sample], size: int, min_size: int) -> str:
    digest = hashlib.sha256(f"v{PREPROCESS_VERSION}:{size}:{min_size}".encode())
    for path, _ in samples:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:32]


def _decode_all(
    samples: Sequence[Sample], size: int, min_size: int, on_bad: str, workers: int
) -> DecodedImages:
    pixels = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    bad: dict[int, str] = {}

    def decode(position: int) -> None:
        try:
            pixels[position] = load_array(samples[position][0], size, min_size)
        except DataError as exc:
            bad[position] = str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(pool.map(decode, range(len(samples))), total=len(samples),
                   desc=f"decode {size}px", unit="img", disable=None)  # fmt: skip
        for _ in bar:
            pass
    if bad and on_bad == "error":
        first = min(bad)
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise DataError(bad[first] + more + "; set data.on_bad=skip to leave bad files out")
    keep = [i for i in range(len(samples)) if i not in bad]
    return DecodedImages(pixels[keep] if bad else pixels, keep, bad)


def _atomic_save(array: np.ndarray, meta: dict, npy: Path, meta_path: Path) -> None:
    npy.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=npy.parent, suffix=".tmp", delete=False) as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, npy)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


def decode_cached(
    samples: Sequence[Sample],
    size: int,
    min_size: int = 1,
    on_bad: str = "error",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> DecodedImages:
    """Decoded pixels of ``samples`` at ``size``: from the disk cache, or decoded and stored.

    The array is memory-mapped when read back, so a cache larger than RAM still loads.
    """
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(samples, size, min_size)
    npy, meta_path = directory / f"{key}.npy", directory / f"{key}.json"
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        bad = {int(k): v for k, v in meta["bad"].items()}
        if not bad or on_bad == "skip":
            log.info("image cache hit: %s (%d images)", npy, len(meta["keep"]))
            return DecodedImages(np.load(npy, mmap_mode="r"), meta["keep"], bad)
    workers = workers or min(8, os.cpu_count() or 1)
    decoded = _decode_all(samples, size, min_size, on_bad, workers)
    try:
        meta = {"keep": decoded.keep, "bad": decoded.bad, "size": size, "count": len(samples)}
        _atomic_save(decoded.pixels, meta, npy, meta_path)
        log.info("image cache written: %s", npy)
    except OSError as exc:  # a read-only or full cache folder costs speed, not the run
        log.warning("could not write the image cache in %s: %s", directory, exc)
    return decoded
