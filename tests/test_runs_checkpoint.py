"""runs.checkpoint: atomic writes, safe loads, clean-up of a killed writer's temp files.

Disk-full, quota and file-size faults are in tests/faults/test_faults_disk.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagefit.errors import CheckpointError
from imagefit.runs.checkpoint import load_checkpoint, remove_partial_writes, save_checkpoint


def test_round_trip_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.arange(3.0), "epoch": 1, "meta": {"classes": ["a"]}}, path)
    save_checkpoint({"w": torch.arange(4.0), "epoch": 2, "meta": {"classes": ["a"]}}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Opaque:
    """Any class: unpickling it would run code from the file."""


def test_load_refuses_code_and_reports_damage(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"object": Opaque()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: refused"):
        load_checkpoint(unsafe)
    torn = tmp_path / "torn.pt"
    save_checkpoint({"w": torch.zeros(1000)}, torn)
    torn.write_bytes(torn.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"torn\.pt: damaged or truncated"):
        load_checkpoint(torn)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dict"):
        load_checkpoint(listed)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_partial_writes_of_this_and_earlier_versions_are_removed(tmp_path: Path) -> None:
    save_checkpoint({"w": torch.zeros(2)}, tmp_path / "best.pt")
    (tmp_path / ".last.pt.1a2b3c4d.tmp").write_bytes(b"half")  # atomic_open's temp name
    (tmp_path / ".last.pt.x1y2z3").write_bytes(b"half")  # earlier versions' temp name
    (tmp_path / ".history.json.0f0f0f0f.tmp").write_text("[")  # not a checkpoint: kept here
    removed = remove_partial_writes(tmp_path)
    assert sorted(p.name for p in removed) == [".last.pt.1a2b3c4d.tmp", ".last.pt.x1y2z3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".history.json.0f0f0f0f.tmp", "best.pt"]
