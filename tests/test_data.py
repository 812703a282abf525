"""ImageFolder scanning, splits, the decoded-image cache and the loaders."""

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from imagefit.config import AugmentConfig, config_from_dict
from imagefit.data import cache as cache_module
from imagefit.data.affine import AffineAugment
from imagefit.data.augment import BatchAugment
from imagefit.data.cache import decode_cached
from imagefit.data.folder import scan_folder
from imagefit.data.loaders import ArraySource, Loader, StreamSource, build_data
from imagefit.data.splits import (
    SplitManifest,
    resolve_splits,
    stratified_split,
    write_split_folders,
)
from imagefit.errors import DataError

from conftest import write_pattern_folder


def test_class_index_matches_torchvision(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "r", classes=3, per_class=2)
    (root / "class_0").rename(root / "Zebra")
    (root / "class_1").rename(root / "apple")
    (root / "class_2" / "nested").mkdir()
    shutil.copy(root / "class_2" / "img_000.png", root / "class_2" / "nested" / "deep.png")
    ours = scan_folder(root)
    theirs = ImageFolder(str(root))
    assert ours.classes == theirs.classes
    assert [(str(p), y) for p, y in ours.samples] == [(p, y) for p, y in theirs.samples]


def test_folder_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "missing")
    root = write_pattern_folder(tmp_path / "r", classes=2, per_class=2)
    (root / "class_1" / "readme.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        assert len(scan_folder(root).samples) == 4
    assert "ignored 1 non-image files" in caplog.text and "readme.txt" in caplog.text
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder has no image files"):
        scan_folder(root)


def test_one_class_is_refused(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "r", classes=1, per_class=10)
    with pytest.raises(DataError, match="at least 2 class folders"):
        resolve_splits(root)


def test_stratified_split_proportions_and_determinism() -> None:
    samples = [(Path(f"{c}/{i}.png"), c) for c in range(4) for i in range(40 + 10 * c)]
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = stratified_split(samples, fractions, seed=42)
    b = stratified_split(samples, fractions, seed=42)
    c = stratified_split(samples, fractions, seed=7)
    assert a == b and a != c
    assert sorted(s for part in a.values() for s in part) == sorted(samples)  # a partition
    for label in range(4):
        total = 40 + 10 * label
        counts = {name: sum(1 for _, y in part if y == label) for name, part in a.items()}
        assert counts["val"] == round(total * 0.15) and counts["test"] == round(total * 0.15)


def test_split_layouts(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_pattern_folder(tmp_path / "d" / split, classes=2, per_class=10)
    manifest = resolve_splits(tmp_path / "d", val_fraction=0.2, seed=1)
    assert manifest.layout == "folders"
    assert len(manifest.splits["test"]) == 20  # the given test split is kept whole
    assert len(manifest.splits["val"]) == 4 and len(manifest.splits["train"]) == 16
    train = {p for p, _ in manifest.splits["train"]}
    assert train.isdisjoint(p for p, _ in manifest.splits["val"])


def test_val_class_outside_train_is_refused(tmp_path: Path) -> None:
    write_pattern_folder(tmp_path / "d" / "train", classes=2, per_class=4)
    write_pattern_folder(tmp_path / "d" / "val", classes=3, per_class=2)
    with pytest.raises(DataError, match="class_2"):
        resolve_splits(tmp_path / "d")


def test_manifest_round_trip_and_split_folders(tmp_path: Path, pattern_root: Path) -> None:
    manifest = resolve_splits(pattern_root, seed=3)
    manifest.save(tmp_path / "split.json")
    again = SplitManifest.load(tmp_path / "split.json")
    assert again.splits == manifest.splits and again.classes == manifest.classes
    out = write_split_folders(manifest, tmp_path / "out")
    copied = resolve_splits(out)
    assert copied.layout == "folders"
    assert {k: len(v) for k, v in copied.splits.items()} == {
        k: len(v) for k, v in manifest.splits.items()
    }
    with pytest.raises(DataError, match="not empty"):
        write_split_folders(manifest, out)


def test_cache_is_keyed_by_content(tmp_path: Path, pattern_root: Path) -> None:
    samples = scan_folder(pattern_root).samples
    first = decode_cached(samples, 8, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    again = decode_cached(samples, 8, cache_dir=tmp_path / "c")
    assert np.array_equal(np.asarray(again.pixels), first.pixels)
    Image.new("RGB", (16, 16), (255, 255, 255)).save(samples[0][0])  # edit one file
    edited = decode_cached(samples, 8, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2
    assert edited.pixels[0].min() == 255 and np.array_equal(edited.pixels[1:], first.pixels[1:])


def _age(paths, seconds: int = 3600) -> None:
    """Set the files' mtime ``seconds`` in the past: older than the racy window of the index."""
    when = time.time_ns() - seconds * 10**9
    for path in paths:
        os.utime(path, ns=(when, when))


def _counting_digest(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    read: list[Path] = []

    def digest(path):
        read.append(Path(path))
        return real_digest(path)

    real_digest = cache_module.file_digest
    monkeypatch.setattr(cache_module, "file_digest", digest)
    return read


def test_cache_key_memoises_file_hashes_by_size_and_mtime(
    tmp_path: Path, pattern_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = scan_folder(pattern_root).samples
    _age(path for path, _ in samples)
    read = _counting_digest(monkeypatch)
    first = decode_cached(samples, 8, cache_dir=tmp_path / "c")
    assert len(read) == len(samples) and (tmp_path / "c" / cache_module.HASH_INDEX).is_file()
    read.clear()
    again = decode_cached(samples, 8, cache_dir=tmp_path / "c")  # a new run: stats only
    assert read == [] and len(list((tmp_path / "c").glob("*.npy"))) == 1
    assert np.array_equal(np.asarray(again.pixels), first.pixels)
    # the key is still the content's: the same as hashing every file without an index
    key, index = cache_module.cache_key(samples, 8, 1), tmp_path / "c" / cache_module.HASH_INDEX
    assert cache_module.cache_key(samples, 8, 1, index=index) == key
    # an edited file (new bytes, new mtime) is read again, and only it; the key changes
    edited = samples[0][0]
    Image.new("RGB", (16, 16), (255, 255, 255)).save(edited)
    _age([edited], seconds=1800)
    read.clear()
    changed = decode_cached(samples, 8, cache_dir=tmp_path / "c")
    assert read == [edited] and len(list((tmp_path / "c").glob("*.npy"))) == 2
    assert changed.pixels[0].min() == 255


def test_same_size_edit_with_a_new_mtime_changes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
    _age(files)
    samples, index = [(path, 0) for path in files], tmp_path / "index.sqlite"
    key = cache_module.cache_key(samples, 8, 1, index=index)
    read = _counting_digest(monkeypatch)
    assert cache_module.cache_key(samples, 8, 1, index=index) == key and read == []
    files[1].write_bytes(b"\xff" * 100)  # same size
    _age([files[1]], seconds=600)
    assert cache_module.cache_key(samples, 8, 1, index=index) != key and read == [files[1]]
    # moved back: the key is the content's again (no entry names the old key otherwise)
    files[1].write_bytes(bytes([1]) * 100)
    _age([files[1]], seconds=300)
    assert cache_module.cache_key(samples, 8, 1, index=index) == key


def test_file_hash_index_is_never_trusted_blindly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = [tmp_path / f"f{i}.bin" for i in range(2)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 10)
    samples, index = [(path, 0) for path in files], tmp_path / "index.sqlite"
    key = cache_module.cache_key(samples, 8, 1)
    read = _counting_digest(monkeypatch)
    # a file written moments ago may change again within its mtime tick: not memoised
    assert cache_module.cache_key(samples, 8, 1, index=index) == key and len(read) == 2
    assert cache_module.cache_key(samples, 8, 1, index=index) == key and len(read) == 4
    # a damaged index is started again; one that cannot be opened costs reads, not the key
    _age(files)
    index.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING):
        assert cache_module.cache_key(samples, 8, 1, index=index) == key
    assert "damaged" in caplog.text
    read.clear()
    assert cache_module.cache_key(samples, 8, 1, index=index) == key and read == []
    blocked = tmp_path / "file" / "index.sqlite"
    blocked.parent.write_text("a file where the folder should be")
    assert cache_module.cache_key(samples, 8, 1, index=blocked) == key and len(read) == 2


def test_file_hashes_are_written_as_they_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million new files' hashes are not held in memory until the end."""
    files = [tmp_path / f"f{i}.bin" for i in range(5)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 10)
    _age(files)
    monkeypatch.setattr(cache_module, "FLUSH_ROWS", 2)
    index, stored = tmp_path / "index.sqlite", []
    real_digest = cache_module.file_digest

    def digest(path):
        with contextlib.closing(sqlite3.connect(index)) as db:  # what another process sees
            stored.append(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
        return real_digest(path)

    monkeypatch.setattr(cache_module, "file_digest", digest)
    cache_module.cache_key([(path, 0) for path in files], 8, 1, index=index)
    assert stored == [0, 0, 2, 2, 4]


def test_bad_file_error_or_counted_skip(tmp_path: Path, pattern_root: Path) -> None:
    bad = pattern_root / "class_1" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    samples = scan_folder(pattern_root).samples
    with pytest.raises(DataError, match="zz_broken.png"):
        decode_cached(samples, 8, cache_dir=tmp_path)
    decoded = decode_cached(samples, 8, on_bad="skip", cache_dir=tmp_path)
    assert len(decoded.bad) == 1 and "zz_broken.png" in next(iter(decoded.bad.values()))
    assert len(decoded.keep) == len(samples) - 1 == len(decoded.pixels)


def _loader(source, **kwargs) -> Loader:
    return Loader(source, 5, torch.device("cpu"), seed=3, **kwargs)


def test_stream_and_cache_give_identical_batches(pattern_root: Path, tmp_path: Path) -> None:
    samples = scan_folder(pattern_root).samples
    labels = [y for _, y in samples]
    cached = ArraySource(
        decode_cached(samples, 12, cache_dir=tmp_path).pixels, labels, torch.device("cpu")
    )
    streamed = StreamSource(samples, 12, 1, False, workers=2, pin_memory=False)
    augment = BatchAugment(AugmentConfig(scale=(0.5, 1.0), hflip=0.5), 12, 3)
    for (xa, ya), (xb, yb) in zip(
        _loader(cached, shuffle=True, augment=augment).epoch(1),
        _loader(streamed, shuffle=True, augment=augment).epoch(1),
        strict=True,
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_order_is_seeded_and_resumable(pattern_root: Path, tmp_path: Path) -> None:
    samples = scan_folder(pattern_root).samples
    source = ArraySource(
        decode_cached(samples, 12, cache_dir=tmp_path).pixels,
        [y for _, y in samples],
        torch.device("cpu"),
    )
    augment = BatchAugment(AugmentConfig(translate=0.2, hflip=0.5), 12, 3)
    loader = _loader(source, shuffle=True, augment=augment)
    full = list(loader.epoch(2))
    assert len(full) == len(loader) == 8
    tail = list(loader.epoch(2, start=5))
    for (xa, ya), (xb, yb) in zip(full[5:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = list(loader.epoch(3))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(full, other, strict=True))
    every = torch.cat([y for _, y in full])
    assert Counter(every.tolist()) == Counter(y for _, y in samples)  # each image once per epoch


def test_affine_identity_and_flip() -> None:
    x = torch.rand(4, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    same, _ = AffineAugment(AugmentConfig(translate=0.0, hflip=0.0), 8)(
        x, torch.zeros(4), generator
    )
    assert torch.allclose(same, x, atol=1e-5)
    flipped, _ = AffineAugment(AugmentConfig(translate=0.0, hflip=1.0), 8)(
        x, torch.zeros(4), generator
    )
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    shifted, _ = AffineAugment(AugmentConfig(translate=0.25, hflip=0.0), 8)(
        x, torch.zeros(4), generator
    )
    for image, original in zip(shifted, x, strict=True):  # whole-pixel shifts copy pixels exactly
        assert any(
            torch.allclose(
                image[:, 2:6, 2:6], original[:, 2 + dy : 6 + dy, 2 + dx : 6 + dx], atol=1e-5
            )
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )


def test_build_data_normalises_and_limits(pattern_root: Path) -> None:
    cfg = config_from_dict(
        {
            "data": {
                "root": str(pattern_root),
                "image_size": 8,
                "augment": False,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
            },
            "train": {"batch_size": 4, "limit_batches": 2},
        }
    )
    bundle = build_data(cfg, torch.device("cpu"))
    assert bundle.cached and bundle.classes == ["class_0", "class_1", "class_2"]
    batches = list(bundle.train.epoch(0))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 8, 8)
    assert batches[0][0].min() >= -1.0 and batches[0][0].max() <= 1.0


def test_skip_list_leaves_files_out(pattern_root: Path, tmp_path: Path) -> None:
    listed = sorted(pattern_root.glob("class_0/*.png"))[:2]
    skip = tmp_path / "skip.txt"
    skip.write_text("\n".join(str(p) for p in listed))
    cfg = config_from_dict(
        {"data": {"root": str(pattern_root), "image_size": 8, "skip_list": str(skip)}}
    )
    bundle = build_data(cfg, torch.device("cpu"))
    kept = {p for items in bundle.manifest.splits.values() for p, _ in items}
    assert not kept & set(listed) and len(bundle.skipped) == 2
