"""Atomic, durable file writes: the one helper for every file a crash must not tear.

A write goes to a hidden temp file beside the target (``.<name>.<random>``), is flushed and
fsynced, then renamed over the target, and the folder is fsynced so the rename survives a power
loss. A crash or a full disk at any moment leaves the old file or the new one, never a torn one;
a failed write removes its temp file and raises :class:`FileWriteError` naming the path and
the reason (disk full, read-only, permission denied, ...).

Files follow the user's umask (``tempfile`` would create them 0600).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from imagefit.errors import ImagefitError

TEMP_PREFIX = "."  # temp files are ".<name>.<random>.tmp", hidden beside the target
TEMP_SUFFIX = ".tmp"

_REASONS = {
    errno.ENOSPC: "disk full (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EFBIG: "file too large for the filesystem or the process's file-size limit (EFBIG)",
    errno.EROFS: "read-only filesystem (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
    errno.ENOENT: "the folder does not exist (ENOENT)",
}


class FileWriteError(ImagefitError):
    """A file could not be written; the message names the path and why."""


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError: "disk full (ENOSPC)", "permission denied (EACCES)", ..."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def write_error(path: Path, exc: OSError, what: str = "the file") -> FileWriteError:
    kept = f"; the previous {path.name} is intact" if path.is_file() else ""
    return FileWriteError(f"{path}: could not write {what}: {describe_os_error(exc)}{kept}")


def make_dirs(path: str | Path, what: str = "the folder") -> Path:
    """``mkdir -p`` whose failure (read-only, permission denied, ...) names the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else path
        raise FileWriteError(
            f"{where}: could not create {what}: {describe_os_error(exc)}"
        ) from None
    return path


@contextmanager
def write_errors(path: str | Path, what: str = "the file") -> Iterator[None]:
    """Turn an OSError raised inside into :class:`FileWriteError` naming the path and reason,
    for writers that cannot go through :func:`atomic_open` (a library that wants a file name)."""
    try:
        yield
    except OSError as exc:  # named by the target, not by a temp file the reader never sees
        raise write_error(Path(path), exc, what) from None


def check_writable(folder: str | Path, what: str = "the folder") -> None:
    """Raise :class:`FileWriteError` now when nothing can be written in ``folder``, before minutes
    of work whose result could not be saved (or a library's error would hide the reason)."""
    folder = make_dirs(folder, what)
    probe = folder / f"{TEMP_PREFIX}write-check.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise FileWriteError(
            f"{folder}: cannot write in {what}: {describe_os_error(exc)}"
        ) from None
    probe.unlink(missing_ok=True)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, what: str = "the file", durable: bool = True
) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8, ``newline=""`` so csv writes what it means).
    """
    path = Path(path)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
    except OSError as exc:
        raise write_error(path, exc, what) from None
    text = "b" not in mode
    handle = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
    try:
        with handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, what) from None
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(
    path: str | Path, data: str | bytes, *, what: str = "the file", durable: bool = True
) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb", what=what, durable=durable) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | Path, data: Any, *, durable: bool = True) -> None:
    """``data`` as indented JSON, atomically; objects JSON cannot hold are written as text."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n", durable=durable)


def fsync_dir(directory: str | Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)


def remove_partial_writes(directory: str | Path, pattern: str = "*") -> list[Path]:
    """Delete temp files a killed writer left in ``directory`` (only a SIGKILL or power loss
    inside :func:`atomic_open` leaves one); return them."""
    found = Path(directory).glob(f"{TEMP_PREFIX}{pattern}{TEMP_SUFFIX}")
    removed = [temp for temp in found if temp.is_file()]
    for temp in removed:
        temp.unlink(missing_ok=True)
    return removed
