"""Checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from imagefit.errors import CheckpointError

log = logging.getLogger(__name__)

TEMP_PREFIX = "."  # temp files are ".<name>.<random>", hidden beside the checkpoint


class _RecordingWriter:
    """Passes writes on to ``handle`` and keeps the first OSError.

    ``torch.save`` turns a failed write into an opaque RuntimeError ("unexpected pos 704 vs
    598"); the recorded OSError is what lets the error say "disk full".
    """

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()


_WRITE_ERRORS = {
    errno.ENOSPC: "disk full (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EFBIG: "file too large for the filesystem or the process's file-size limit (EFBIG)",
    errno.EROFS: "read-only filesystem (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
}


def _write_error(path: Path, exc: OSError) -> CheckpointError:
    reason = _WRITE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    kept = f"; the previous {path.name} is intact" if path.is_file() else ""
    return CheckpointError(f"{path}: could not write the checkpoint: {reason}{kept}")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash or a full disk at any moment leaves either the old file or the new one, never a
    torn one; the temp file is removed when the write fails, and a failed write raises
    CheckpointError naming the path and the reason (disk full, quota, file-size limit, ...).
    """
    path = Path(path)
    try:
        # Not a with-block: the file must outlive it, to be renamed or removed below.
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
            dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", delete=False
        )
    except OSError as exc:
        raise _write_error(path, exc) from exc
    writer = _RecordingWriter(handle)
    try:
        with handle:
            # torch.save takes any object with write/flush; its stubs only name IO[bytes]
            torch.save(state, writer)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as exc:
        Path(handle.name).unlink(missing_ok=True)
        error = writer.error or exc
        if isinstance(error, OSError):
            log.error("writing %s failed: %s", path, error)
            raise _write_error(path, error) from exc
        raise
    _fsync_dir(path.parent)


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete temp files that a killed process left mid-write in ``directory``; return them.

    Only a process that died inside :func:`save_checkpoint` (SIGKILL, power loss) leaves
    them; they are never a valid checkpoint and can be as large as one.
    """
    removed = []
    for temp in Path(directory).glob(f"{TEMP_PREFIX}*.pt.*"):
        temp.unlink(missing_ok=True)
        removed.append(temp)
    if removed:
        log.warning(
            "removed %d partial checkpoint writes of a killed run: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; refuse files that would need arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: loading it would need arbitrary code or objects that are not "
            f"plain weights ({str(exc).splitlines()[0]}). Only load files you trust, and "
            "re-save them as a plain state dict."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state
