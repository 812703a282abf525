"""Full disks and failing writes: a checkpoint write that fails halfway keeps the previous file,
says "disk full" (or the real reason) with the path, and the run resumes exactly afterwards.

Three ways to fill a disk, from the most portable to the most real: a file handle that fails
halfway (in-process), RLIMIT_FSIZE (EFBIG; works anywhere, no privileges; in-process for one
write, in a real training process for a run) and a 2 MiB tmpfs mount (ENOSPC; skipped where
mount is not allowed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from imagefit.config import config_from_dict
from imagefit.errors import CheckpointError
from imagefit.runs import checkpoint as checkpoint_module
from imagefit.runs.checkpoint import save_checkpoint
from imagefit.train.fit import fit

from conftest import write_pattern_folder
from faultkit import Victim, assert_same_run, checkpoint, partial_writes, run_tree, write_config

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("disk")
    root = write_pattern_folder(base / "patterns")
    reference = fit(config_from_dict(run_tree(root, base / "reference", base / "cache"))).run_dir
    return {"base": base, "root": root, "reference": reference}


class _FailingFile:
    """A real temp file whose writes fail with ``code`` once ``budget`` bytes are written."""

    def __init__(self, handle, budget: int, code: int):
        self._handle, self.budget, self.code = handle, budget, code

    def write(self, data) -> int:
        if self.budget < len(data):  # write what still fits, then fail like a full disk
            self._handle.write(bytes(data)[: self.budget])
            self.budget = 0
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def _fail_writes(
    monkeypatch: pytest.MonkeyPatch, name: str, nth: int, code: int = errno.ENOSPC
) -> None:
    """The ``nth`` write of checkpoint ``name`` fails halfway with ``code``."""
    real = checkpoint_module.atomic_open
    calls = {"n": 0}

    @contextlib.contextmanager
    def failing(path, *args, **kwargs):
        with real(path, *args, **kwargs) as handle:
            if Path(path).name == name:
                calls["n"] += 1
                if calls["n"] == nth:
                    yield _FailingFile(handle, budget=60_000, code=code)  # ~ a third of last.pt
                    return
            yield handle

    monkeypatch.setattr(checkpoint_module, "atomic_open", failing)


def test_write_failing_halfway_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.arange(10.0)}, path)
    _fail_writes(monkeypatch, "last.pt", 1)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"w": torch.zeros(200_000)}, path)
    message = str(info.value)
    assert (
        str(path) in message
        and "disk full (ENOSPC)" in message
        and "previous last.pt is intact" in message
    )
    assert torch.equal(checkpoint(path)["w"], torch.arange(10.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temp file is gone


def test_run_with_a_failing_checkpoint_write_stops_clearly_and_resumes_exactly(
    lab: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = lab["base"] / "halfway"
    _fail_writes(monkeypatch, "last.pt", 3)  # write 1 is the start, 2 epoch 1, 3 epoch 2
    with pytest.raises(
        CheckpointError, match=r"last\.pt: could not write the checkpoint: disk full"
    ):
        fit(config_from_dict(run_tree(lab["root"], out, lab["base"] / "cache")))
    monkeypatch.undo()
    run = out / "run"
    assert checkpoint(run / "last.pt")["epoch"] == 1 and not partial_writes(run)
    fit(resume=run)
    assert_same_run(run, lab["reference"])


@contextlib.contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE for this process, SIGXFSZ ignored so that a write past it fails with EFBIG
    instead of killing the process; both restored after (the soft limit can always go back
    up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_file_size_limit_efbig_is_reported_and_the_previous_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.arange(1000.0)}, path)  # about 5 kB
    with file_size_limit(100_000), pytest.raises(CheckpointError) as info:
        save_checkpoint({"w": torch.zeros(1_000_000)}, path)  # 4 MB
    assert str(path) in str(info.value) and "file too large" in str(info.value)
    assert "(EFBIG)" in str(info.value) and "previous last.pt is intact" in str(info.value)
    assert torch.equal(checkpoint(path)["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_cli_run_hitting_a_file_size_limit_exits_2_and_resumes_exactly(lab: dict) -> None:
    """A real process whose checkpoints outgrow RLIMIT_FSIZE: the starting last.pt (weights
    only) fits, the first epoch's (weights and optimizer moments) does not."""
    out = lab["base"] / "efbig"
    config = write_config(run_tree(lab["root"], out, lab["base"] / "cache"), out / "config.yaml")
    limit = (lab["reference"] / "last.pt").stat().st_size // 2  # the first last.pt is ~1/3
    victim = Victim(["train", str(config)], {}, out / "output.log", fsize_limit=limit)
    assert victim.wait(120) == 2, victim.output()
    output = victim.output()
    assert "could not write the checkpoint: file too large" in output and "(EFBIG)" in output
    run = out / "run"
    assert checkpoint(run / "last.pt")["epoch"] == 0 and not partial_writes(run)
    fit(resume=run)
    assert_same_run(run, lab["reference"])


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 2 MiB tmpfs: a real full filesystem. Needs root (or CAP_SYS_ADMIN); skipped elsewhere."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
            "RLIMIT_FSIZE tests cover the same path"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_filesystem(lab: dict, tiny_tmpfs: Path) -> None:
    """Train on a 1 MiB filesystem until a checkpoint no longer fits; grow it; resume."""
    with pytest.raises(
        CheckpointError, match=r"could not write the checkpoint: disk full \(ENOSPC\)"
    ) as info:
        fit(config_from_dict(run_tree(lab["root"], tiny_tmpfs, lab["base"] / "cache")))
    run = tiny_tmpfs / "run"
    assert str(run) in str(info.value)
    state = checkpoint(run / "last.pt")  # the last one that fitted is whole
    assert state["epoch"] < 3 and not partial_writes(run)
    subprocess.run(["mount", "-o", "remount,size=16M", str(tiny_tmpfs)], check=True)
    fit(resume=run)
    assert_same_run(run, lab["reference"])


def test_damaged_image_cache_is_rebuilt(lab: dict, caplog: pytest.LogCaptureFixture) -> None:
    """A cache entry torn by a kill or a full disk (before writes were atomic) is a miss."""
    cache = lab["base"] / "cache-damaged"
    first = fit(config_from_dict(run_tree(lab["root"], lab["base"] / "damaged", cache)))
    meta = next(cache.glob("*.json"))
    meta.write_text(meta.read_text()[:20])  # truncated JSON
    npy = next(cache.glob("*.npy"))
    with caplog.at_level(logging.WARNING):
        again = fit(config_from_dict(run_tree(lab["root"], lab["base"] / "damaged2", cache)))
    assert "damaged" in caplog.text
    npy.write_bytes(npy.read_bytes()[:500])  # truncated array
    third = fit(config_from_dict(run_tree(lab["root"], lab["base"] / "damaged3", cache)))
    for result in (again, third):
        assert_same_run(result.run_dir, first.run_dir)
    assert json.loads(meta.read_text())["count"] > 0  # rewritten whole
