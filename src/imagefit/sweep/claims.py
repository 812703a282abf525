"""Claim files: which sweep process runs which trial, when several share one sweep folder.

A trial is claimed by creating ``OUT/claims/<trial>`` with ``O_CREAT | O_EXCL``: of processes
racing for it (on one machine, or on many over a shared file system), exactly one succeeds.
The owner touches its claim every few seconds while the trial runs and removes it when the
trial ends. A claim whose owner is gone (a dead process on this machine, or a claim nobody has
touched for :data:`STALE_S` seconds) is taken over by renaming it away first, which again only
one process can do; the new owner's trial then resumes from the run folder's ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

CLAIMS = "claims"  # in the sweep folder: one file per trial being run
BEAT_S = 5.0  # the owner touches its claim this often
STALE_S = 60.0  # a claim untouched this long belongs to a process that is gone


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _abandoned(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False  # vanished or half-written: its owner is alive enough to be racing
    if owner.get("host") == socket.gethostname() and not alive(int(owner.get("pid", -1))):
        return True
    return age > STALE_S


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, handle)
    return True


def try_claim(out: Path, name: str) -> Path | None:
    """Claim trial ``name`` of the sweep in ``out``; None when another live process holds it."""
    folder = out / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if _create(path):
        return path
    if not _abandoned(path):
        return None
    try:  # only one of the processes that found it abandoned wins the rename
        path.rename(folder / f".{name}.{os.getpid()}.stale")
    except FileNotFoundError:
        return None
    (folder / f".{name}.{os.getpid()}.stale").unlink(missing_ok=True)
    log.info("trial %s: its claim was abandoned; taking it over", name)
    return path if _create(path) else None


@contextmanager
def claimed(out: Path, name: str) -> Iterator[bool]:
    """``with claimed(out, trial) as mine:`` runs the block holding the claim when ``mine``."""
    path = try_claim(out, name)
    if path is None:
        yield False
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(BEAT_S):
            try:
                os.utime(path)
            except OSError:
                return

    thread = threading.Thread(target=beat, name=f"claim-{name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        done.set()
        thread.join()
        path.unlink(missing_ok=True)
