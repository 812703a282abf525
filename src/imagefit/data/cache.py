"""The small-image fast path: decode a dataset once into a uint8 array, cached on disk.

Decoding PNGs is the cost that dominates small-image training on a CPU; doing it once (in
parallel threads: Pillow releases the GIL while decoding and resizing) and keeping the pixels
as one ``(N, S, S, 3)`` uint8 array lets every later epoch, and every later run on the same
files, skip it. The cache key hashes the files' bytes, so an edited image is never served stale;
each file's hash is memoised on (resolved path, size, mtime) in a small index next to the cache
(:class:`FileHashes`), so a later run stats the files instead of reading them all again.

Decoding writes each image straight into its row of the cache file, so a dataset larger than
memory decodes with the memory of a few images; reading it back is a memory map.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

from imagefit.data.decode import get_decoder
from imagefit.data.folder import Sample
from imagefit.data.store import PixelSpec
from imagefit.errors import DataError
from imagefit.fileio import make_dirs, write_errors

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 2  # bump when load_array's output changes, to invalidate old caches


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMAGEFIT_CACHE", Path.home() / ".cache" / "imagefit"))


def decoded_bytes(count: int, size: int) -> int:
    return count * size * size * 3


class CacheUnavailable(OSError):
    """The cache folder cannot be written, and decoding into memory was ruled out."""


@dataclass
class DecodedImages:
    """Pixels of a list of samples; ``bad`` maps sample positions that failed to a reason."""

    pixels: np.ndarray  # (N_good, S, S, 3) uint8
    keep: list[int]  # positions in the input list that ``pixels`` holds, in order
    bad: dict[int, str] = field(default_factory=dict)
    boxes: np.ndarray | None = None  # (N_good, 2) valid (width, height) of a store; else None


HASH_INDEX = "file-hashes.sqlite"  # in the cache folder, next to the entries
# A file whose mtime is this close to the moment it is hashed may still change within the same
# mtime tick (coarse on some filesystems) with the same size: its hash is not memoised.
RACY_NS = 2 * 10**9
FLUSH_ROWS = 4096  # new hashes written to the index this many at a time


def file_digest(path: str | Path) -> bytes:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


class FileHashes:
    """Files' sha256, memoised on (resolved path, size, mtime_ns) in a SQLite index file.

    A file whose size or mtime changed is read and hashed again; so is every file when the
    index cannot be opened or written (a read-only cache folder costs time, never a stale key).
    Use as a context manager; new hashes are written as they come and when it closes.
    """

    def __init__(self, index: str | Path | None):
        self.index = Path(index) if index is not None else None
        self.db: sqlite3.Connection | None = None
        self.fresh: list[tuple[str, int, int, bytes]] = []
        self.parents: dict[str, str] = {}  # folder -> its resolved path
        self.reads = 0  # files read and hashed (the rest came from the index)

    def __enter__(self) -> FileHashes:
        if self.index is not None:
            self.db = self._open(self.index)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.db is None:
            return
        try:
            self._flush()
        finally:
            if self.db is not None:
                self.db.close()
                self.db = None

    def _flush(self) -> None:
        """Write the new hashes (in batches: a million new files are not held until the end)."""
        if self.db is None or not self.fresh:
            return
        try:
            with self.db:  # one transaction
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", self.fresh)
        except sqlite3.Error as exc:
            log.warning("could not update the file hash index %s (%s)", self.index, exc)
            self.db.close()
            self.db = None
        self.fresh.clear()

    @staticmethod
    def _open(index: Path) -> sqlite3.Connection | None:
        db = None
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            for attempt in (1, 2):
                db = sqlite3.connect(index, timeout=30)
                try:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER "
                        "NOT NULL, mtime_ns INTEGER NOT NULL, sha256 BLOB NOT NULL)"
                    )
                    return db
                except sqlite3.DatabaseError as exc:
                    db.close()
                    db = None
                    # "file is not a database": damaged, start it again; locked or read-only:
                    # leave it to the runs that can use it.
                    if attempt == 2 or isinstance(exc, sqlite3.OperationalError):
                        raise
                    log.warning("file hash index %s is damaged (%s); starting it again", index, exc)
                    index.unlink()
        except (OSError, sqlite3.Error) as exc:
            log.warning("file hash index %s unusable (%s); hashing every file", index, exc)
        return None

    def _resolved(self, path: Path) -> tuple[str, os.stat_result]:
        """The resolved path and stat of ``path``: folders resolved once, not once per file."""
        folder = str(path.parent)
        if folder not in self.parents:
            self.parents[folder] = os.path.realpath(folder)
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return os.path.realpath(path), os.stat(path)
        return os.path.join(self.parents[folder], path.name), info

    def digest(self, path: str | Path) -> bytes:
        real, info = self._resolved(Path(path))  # stat before reading: a later edit re-hashes
        if self.db is not None:
            try:
                row = self.db.execute(
                    "SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (real,)
                ).fetchone()
            except sqlite3.Error as exc:
                log.warning("file hash index %s unusable (%s); hashing every file", self.index, exc)
                self.db.close()
                self.db = None
                row = None
            if row is not None and (row[0], row[1]) == (info.st_size, info.st_mtime_ns):
                return bytes(row[2])
        digest = file_digest(path)
        self.reads += 1
        if time.time_ns() - info.st_mtime_ns > RACY_NS:
            self.fresh.append((real, info.st_size, info.st_mtime_ns, digest))
            if len(self.fresh) >= FLUSH_ROWS:
                self._flush()
        return digest


def cache_key(
    samples: Sequence[Sample],
    size: int,
    min_size: int,
    decoder: str = "pillow",
    index: str | Path | None = None,
    spec: PixelSpec | None = None,
) -> str:
    """A key of the files' contents and the preprocessing; ``index``: a :class:`FileHashes`
    index file that spares reading files unchanged since an earlier run."""
    tag = (spec or PixelSpec(size, decoder=decoder)).tag()
    digest = hashlib.sha256(f"v{PREPROCESS_VERSION}:{size}:{min_size}{tag}".encode())
    with FileHashes(index) as hashes:
        for path, _ in samples:
            digest.update(hashes.digest(path))
    log.debug("cache key: %d files, %d read and hashed", len(samples), hashes.reads)
    return digest.hexdigest()[:32]


PixelSink = Callable[[int, np.ndarray], None]  # (sample position, (S, S, 3) pixels) -> None


def _decode_each(
    samples: Sequence[Sample],
    spec: PixelSpec,
    min_size: int,
    workers: int,
    store: PixelSink,
    boxes: np.ndarray,
) -> dict[int, str]:
    """Decode every sample in threads and hand it to ``store``, its valid box to ``boxes``
    (N, 2); returns the bad positions."""
    get_decoder(spec.decoder)  # an unknown name fails before any thread starts
    size, bad = spec.size, {}

    def work(chunk: range) -> int:
        for position in chunk:
            try:
                pixels, boxes[position] = spec.decode(samples[position][0], min_size)
                store(position, pixels)
            except DataError as exc:
                bad[position] = str(exc)
        return len(chunk)

    # Chunks, not one task per image: a million futures would cost more than the pixels.
    chunks = [range(i, min(i + 64, len(samples))) for i in range(0, len(samples), 64)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(total=len(samples), desc=f"decode {size}px", unit="img", disable=None)
        for done in pool.map(work, chunks):
            bar.update(done)
        bar.close()
    return bad


def _raise_bad(bad: dict[int, str], on_bad: str) -> None:
    if bad and on_bad == "error":
        first = min(bad)
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise DataError(bad[first] + more + "; set data.on_bad=skip to leave bad files out")


def _decode_all(
    samples: Sequence[Sample], spec: PixelSpec, min_size: int, on_bad: str, workers: int
) -> DecodedImages:
    """Decode into memory (when the cache folder cannot be written)."""
    size = spec.size
    pixels = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    boxes = np.full((len(samples), 2), size, dtype=np.int64)
    bad = _decode_each(samples, spec, min_size, workers, pixels.__setitem__, boxes)
    _raise_bad(bad, on_bad)
    keep = [i for i in range(len(samples)) if i not in bad]
    return DecodedImages(
        pixels[keep] if bad else pixels, keep, bad, boxes[keep] if spec.store else None
    )


HEADER_BYTES = 128  # room for any (N, S, S, 3) header; a multiple of numpy's 64-byte alignment


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy version 1.0 header of a C-order uint8 array, padded to HEADER_BYTES."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}"
    body = text.ljust(HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _write_rows(
    fd: int,
    samples: Sequence[Sample],
    spec: PixelSpec,
    min_size: int,
    on_bad: str,
    workers: int,
    boxes: np.ndarray,
) -> tuple[list[int], dict[int, str]]:
    """Decode sample i into row i of the open .npy file ``fd``; drop bad rows; (keep, bad)."""
    size = spec.size
    row = size * size * 3
    os.pwrite(fd, _npy_header((len(samples), size, size, 3)), 0)

    def store(position: int, pixels: np.ndarray) -> None:
        data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        if os.pwrite(fd, data, HEADER_BYTES + position * row) != row:
            raise OSError(f"short write at image {position}")

    bad = _decode_each(samples, spec, min_size, workers, store, boxes)
    _raise_bad(bad, on_bad)
    keep = [i for i in range(len(samples)) if i not in bad]
    if bad:  # close the gaps; rows only move towards the start, so in order is safe
        for new, old in enumerate(keep):
            if new != old:
                os.pwrite(fd, os.pread(fd, row, HEADER_BYTES + old * row), HEADER_BYTES + new * row)
        os.pwrite(fd, _npy_header((len(keep), size, size, 3)), 0)
    os.ftruncate(fd, HEADER_BYTES + len(keep) * row)
    return keep, bad


def _decode_to_cache(
    samples: Sequence[Sample],
    spec: PixelSpec,
    min_size: int,
    on_bad: str,
    workers: int,
    npy: Path,
    meta_path: Path,
) -> DecodedImages:
    """Decode straight into the cache file (never the whole array in memory), then map it."""
    found: dict[str, Any] = {}
    boxes = np.full((len(samples), 2), spec.size, dtype=np.int64)

    def write(handle: IO[bytes]) -> None:
        found["keep"], found["bad"] = _write_rows(
            handle.fileno(), samples, spec, min_size, on_bad, workers, boxes
        )

    what = "the image cache (data.cache_dir or $IMAGEFIT_CACHE names a writable folder)"
    with write_errors(npy, what):
        make_dirs(npy.parent, what)
        _atomic_write(npy, write)
        kept_boxes = boxes[found["keep"]] if spec.store else None
        meta = {
            "keep": found["keep"],
            "bad": found["bad"],
            "size": spec.size,
            "count": len(samples),
        }
        if kept_boxes is not None:
            meta["boxes"] = kept_boxes.tolist()
        # The meta file goes last: it is what marks the entry complete.
        _atomic_write(meta_path, lambda handle: handle.write(json.dumps(meta).encode("utf-8")))
    log.info("image cache written: %s", npy)
    return DecodedImages(np.load(npy, mmap_mode="r"), found["keep"], found["bad"], kept_boxes)


def _atomic_write(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Temp file, fsync, rename: a kill or a full disk never leaves a torn cache entry."""
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as handle:
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    os.replace(handle.name, target)


def _read_entry(npy: Path, meta_path: Path) -> tuple[np.ndarray, dict] | None:
    """A cache entry, or None when it is absent or damaged (then it is decoded again)."""
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        pixels = np.load(npy, mmap_mode="r")
        if len(pixels) != len(meta["keep"]):
            raise ValueError(f"{len(pixels)} images but {len(meta['keep'])} listed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("image cache entry %s is damaged (%s); decoding again", npy, exc)
        return None
    return pixels, meta


def decode_cached(
    samples: Sequence[Sample],
    size: int,
    min_size: int = 1,
    on_bad: str = "error",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    decoder: str = "pillow",
    memory_fallback: bool = True,
    spec: PixelSpec | None = None,
) -> DecodedImages:
    """Decoded pixels of ``samples`` at ``size``: from the disk cache, or decoded and stored.

    ``spec`` says what is decoded (default: the evaluation crop at ``size`` by ``decoder``);
    a store spec (:mod:`imagefit.data.store`) also returns each image's valid box.

    The array is memory-mapped (a ``np.memmap``) whenever the cache folder is writable, so a
    cache larger than RAM decodes and loads; ``decoder`` names an
    :mod:`imagefit.data.decode` decoder. When the cache folder cannot be written the pixels
    are decoded into memory, or, with ``memory_fallback=False`` (a dataset over the memory
    budget), :class:`CacheUnavailable` is raised instead.
    """
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    spec = spec or PixelSpec(size, decoder=decoder)
    size = spec.size
    key = cache_key(samples, size, min_size, index=directory / HASH_INDEX, spec=spec)
    npy, meta_path = directory / f"{key}.npy", directory / f"{key}.json"
    entry = _read_entry(npy, meta_path)
    if entry is not None:
        pixels, meta = entry
        bad = {int(k): v for k, v in meta["bad"].items()}
        boxes = np.asarray(meta["boxes"], np.int64) if "boxes" in meta else None
        if (not bad or on_bad == "skip") and (boxes is not None) == spec.store:
            log.info("image cache hit: %s (%d images)", npy, len(meta["keep"]))
            return DecodedImages(pixels, meta["keep"], bad, boxes)
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        return _decode_to_cache(samples, spec, min_size, on_bad, workers, npy, meta_path)
    except OSError as exc:  # a read-only or full cache folder costs speed, not the run
        if not memory_fallback:
            raise CacheUnavailable(
                f"could not write the image cache in {directory} ({exc})"
            ) from exc
        log.warning(
            "could not write the image cache in %s (%s); decoding into memory", directory, exc
        )
    return _decode_all(samples, spec, min_size, on_bad, workers)
