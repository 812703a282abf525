"""Dataset folders as users' disks hold them: link loops, links out of the root, links and hard
links that would give one photo two labels or two splits, notebook checkpoint folders.

The scan must count each file once, under one label and in one split, stay inside the root
unless asked, never read hidden entries, and say what it left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from imagefit.data.folder import scan_folder
from imagefit.data.splits import resolve_splits
from imagefit.datasets.verify import verify_dataset
from imagefit.errors import DataError

from conftest import write_photo_folder

pytestmark = pytest.mark.faults


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_photo_folder(tmp_path / "photos", per_class=12)


def _names(samples: list) -> list[tuple[str, int]]:
    return [(p.name, label) for p, label in samples]


def test_a_link_loop_counts_each_photo_once_with_its_own_label(
    photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _names(scan_folder(photos).samples)
    os.symlink("..", photos / "daisy" / "loop")  # daisy/loop/roses/... would relabel roses
    with caplog.at_level(logging.WARNING):
        index = scan_folder(photos)
    assert len(index.samples) == 24
    assert _names(index.samples) == before  # same files, same labels (roses stay roses)
    assert str(photos / "daisy" / "loop") in index.links
    assert "skipped 1 links" in caplog.text
    manifest = resolve_splits(photos, 0.25, 0.25, seed=0)
    seen = [p.resolve() for items in manifest.splits.values() for p, _ in items]
    assert len(seen) == len(set(seen)) == 24  # no photo in two splits


def test_links_out_of_the_root_are_followed_only_when_asked(photos: Path, tmp_path: Path) -> None:
    outside = write_photo_folder(tmp_path / "elsewhere", classes=("tulips",), per_class=3)
    os.symlink(outside / "tulips", photos / "roses" / "more")
    index = scan_folder(photos)
    assert len(index.samples) == 24
    assert "points out of the dataset root" in index.links[str(photos / "roses" / "more")]
    followed = scan_folder(photos, links="follow")
    assert len(followed.samples) == 27
    assert all(label == 1 for p, label in followed.samples if "more" in p.parts)
    assert len(scan_folder(photos, links="skip").samples) == 24


def test_a_link_to_a_photo_of_another_class_keeps_the_photos_own_label(photos: Path) -> None:
    rose = sorted((photos / "roses").iterdir())[0]
    os.symlink(rose, photos / "daisy" / "a_rose.jpg")
    index = scan_folder(photos)
    assert (rose, 1) in index.samples
    assert all(p.name != "a_rose.jpg" for p, _ in index.samples)
    assert f"the same file as {rose}" in index.links[str(photos / "daisy" / "a_rose.jpg")]


def test_one_file_hard_linked_into_two_classes_is_an_error(photos: Path) -> None:
    rose = sorted((photos / "roses").iterdir())[0]
    os.link(rose, photos / "daisy" / "twin.jpg")
    with pytest.raises(DataError, match=r"same file .* in two classes"):
        scan_folder(photos)


def test_one_file_in_two_split_folders_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    write_photo_folder(root / "train", per_class=8)
    write_photo_folder(root / "test", per_class=2)
    leaked = sorted((root / "train" / "daisy").iterdir())[-1]
    os.symlink(leaked, root / "test" / "daisy" / "leak.jpg")
    with pytest.raises(DataError, match=r"leak.jpg \(test\) and .* \(train\) are the same file"):
        resolve_splits(root, 0.25, 0.0, seed=0)


def test_hidden_entries_are_not_data(photos: Path) -> None:
    notebook = photos / ".ipynb_checkpoints"
    notebook.mkdir()
    (notebook / "x.jpg").write_bytes((photos / "daisy").iterdir().__next__().read_bytes())
    (photos / "roses" / ".thumbs").mkdir()
    (photos / "roses" / ".thumbs" / "t.jpg").write_bytes(b"not even an image")
    (photos / "daisy" / ".~lock.jpg").write_bytes(b"")
    index = scan_folder(photos)
    assert index.classes == ["daisy", "roses"] and len(index.samples) == 24
    assert sorted(p.name for p in index.hidden) == [".ipynb_checkpoints", ".thumbs", ".~lock.jpg"]
    report = verify_dataset(photos, progress=False)
    assert report.ok and len(report.left_out["hidden"]) == 3
    assert "3 hidden files and folders are left out" in report.warnings()


def test_verify_refuses_what_training_refuses(tmp_path: Path) -> None:
    one = write_photo_folder(tmp_path / "one", classes=("daisy",), per_class=10)
    report = verify_dataset(one, progress=False)
    assert not report.ok
    assert any("training refuses" in p and "at least 2 class" in p for p in report.problems)
    few = write_photo_folder(tmp_path / "few", per_class=3)  # 15% of 3 rounds to 0: no val
    report = verify_dataset(few, progress=False)
    assert any("val split is empty" in p for p in report.problems), report.problems
