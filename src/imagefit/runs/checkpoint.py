"""The checkpoint format: atomic, durable writes and safe loads.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file. A training checkpoint
holds ``model``, ``optimizer``, ``scheduler``, ``early_stopping``, ``scaler``, ``epoch``,
``batch``, ``progress``, ``ranks``, ``history``, ``rng``, ``config``, ``classes`` and ``meta``
(what travels with the weights: arch, classes, image size, mean/std, init).

``last.pt`` and ``epoch_NNN.pt`` are training checkpoints (``epoch_NNN.pt`` keeps the whole
state so that a run can be taken back to that epoch: copy it over ``last.pt`` and resume).
``best.pt`` is a weights checkpoint (:func:`weights_checkpoint`): the weights and what
evaluating, exporting or fine-tuning from them needs (``meta`` with its ``epoch``,
``config``, ``classes``), without the optimizer state that would double or triple its size.
Older ``best.pt`` files hold the whole training state and load the same way.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from imagefit.errors import CheckpointError
from imagefit.fileio import TEMP_PREFIX, FileWriteError, atomic_open, write_error
from imagefit.runs.pickle_probe import describe_refused

log = logging.getLogger(__name__)

# Temp files of checkpoints: ".<name>.pt.<random>.tmp" (earlier versions: ".<name>.pt.<random>").
PARTIAL_PATTERN = f"{TEMP_PREFIX}*.pt.*"


class _RecordingWriter:
    """Passes writes on to ``handle`` and keeps the first OSError.

    ``torch.save`` turns a failed write into an opaque RuntimeError ("unexpected pos 704 vs
    598"); the recorded OSError is what lets the error say "disk full".
    """

    def __init__(self, handle: IO[bytes], path: Path):
        self.handle = handle
        self.path = path  # the checkpoint being written (the handle is its temp file)
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()


WEIGHTS_KEYS = ("model", "epoch", "config", "classes", "meta")


def weights_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The weights checkpoint of a training ``state``: :data:`WEIGHTS_KEYS` only, with the
    finished epochs also in ``meta`` (``meta`` is what travels on, e.g. into an export)."""
    kept = {key: state[key] for key in WEIGHTS_KEYS if key in state}
    if "meta" in kept and "epoch" in state:
        kept["meta"] = {**kept["meta"], "epoch": state["epoch"]}
    return kept


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` through :func:`imagefit.fileio.atomic_open` (temp file,
    fsync, rename, folder fsync).

    A crash or a full disk at any moment leaves either the old file or the new one, never a
    torn one; a failed write removes its temp file and raises CheckpointError naming the path
    and the reason (disk full, quota, file-size limit, ...).
    """
    path = Path(path)
    writer: _RecordingWriter | None = None
    try:
        with atomic_open(path, "wb", what="the checkpoint") as handle:
            writer = _RecordingWriter(handle, path)
            # torch.save takes any object with write/flush; its stubs only name IO[bytes]
            torch.save(state, writer)  # type: ignore[arg-type]
    except FileWriteError as exc:  # it names the path and the reason already
        raise CheckpointError(str(exc)) from exc
    except RuntimeError as exc:
        if writer is None or writer.error is None:
            raise
        log.error("writing %s failed: %s", path, writer.error)
        raise CheckpointError(str(write_error(path, writer.error, "the checkpoint"))) from exc


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete checkpoint temp files that a killed process left mid-write in ``directory``.

    Only a process that died inside :func:`save_checkpoint` (SIGKILL, power loss) leaves
    them; they are never a valid checkpoint and can be as large as one.
    """
    removed = [temp for temp in Path(directory).glob(PARTIAL_PATTERN) if temp.is_file()]
    for temp in removed:
        temp.unlink(missing_ok=True)
    if removed:
        log.warning(
            "removed %d partial checkpoint writes of a killed run: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def refused_message(path: Path) -> str:
    """Why a file was refused and how to convert a trusted copy, in one line; what the file is
    comes from reading its pickle's opcodes, never from running them."""
    what, weights = describe_refused(path)
    if not weights:
        return f"{path}: refused: it is {what}"
    target = path.with_name(f"{path.stem}.state_dict.pt")
    convert = (
        f"import torch; obj = torch.load({str(path)!r}, weights_only=False); "
        f"torch.save({weights}, {str(target)!r})"
    )
    return (
        f"{path}: refused: it is {what}, and loading it would run code from the file. "
        f"If you trust where it came from, convert it once, in an environment you trust: "
        f'python -c "{convert}"  then use {target.name}'
    )


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load with ``weights_only=True``; refuse files that would need arbitrary code.
    ``mmap`` leaves the tensors on disk until used (to read only a checkpoint's metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise CheckpointError(refused_message(path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state
