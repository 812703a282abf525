"""CIFAR-10 readers, converter and download, on small files written in both real formats."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefit.datasets import cifar
from imagefit.datasets.cifar import (
    cifar10_to_folder,
    download_cifar10,
    ensure_cifar10,
    find_cifar10,
    load_pickle,
    read_cifar10,
)
from imagefit.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 4  # 5 train batches -> 20 train images, 2 per class
TEST_SIZE = 10


def _fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(count) % 10).astype(np.int64)
    # Image 0: R, G, B planes of distinct constants plus a ramp, so a CHW/HWC mix-up shows.
    images[0, ..., 0], images[0, ..., 1], images[0, ..., 2] = 10, 20, 30
    images[0, 0, :, 0] = np.arange(32)
    return images, labels


def _rows(images: np.ndarray) -> np.ndarray:
    """The file layout, written from the format's description: R plane, G plane, B plane."""
    return np.stack([np.concatenate([img[..., c].ravel() for c in range(3)]) for img in images])


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": _fake_split(5 * PER_BATCH, seed=1), "test": _fake_split(TEST_SIZE, seed=2)}


def _batches(data: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    images, labels = data["train"]
    parts = [
        (
            f"data_batch_{i + 1}",
            images[i * PER_BATCH : (i + 1) * PER_BATCH],
            labels[i * PER_BATCH : (i + 1) * PER_BATCH],
        )
        for i in range(5)
    ]
    return [*parts, ("test_batch", *data["test"])]


def write_python_cifar(root: Path, data: dict) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, (name, images, labels) in enumerate(_batches(data)):
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": _rows(images),
            b"filenames": [b"x.png"] * len(images),
        }
        protocol = (2, 3, 4, 5)[i % 4]  # every protocol's way of storing numpy arrays
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": PER_BATCH}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_binary_cifar(root: Path, data: dict) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, images, labels in _batches(data):
        records = np.concatenate([labels[:, None].astype(np.uint8), _rows(images)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")  # as the real file
    return folder


WRITERS = {"python": write_python_cifar, "binary": write_binary_cifar}


# --- readers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip(tmp_path: Path, data: dict, fmt: str, split: str) -> None:
    WRITERS[fmt](tmp_path, data)
    images, labels, classes = read_cifar10(tmp_path, split)
    assert images.dtype == np.uint8 and images.shape == data[split][0].shape
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, data[split][0])
    np.testing.assert_array_equal(labels, data[split][1])
    assert classes == CLASSES


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_channel_layout(tmp_path: Path, data: dict, fmt: str) -> None:
    WRITERS[fmt](tmp_path, data)
    images, _, _ = read_cifar10(tmp_path, "train")
    assert tuple(images[0, 5, 7]) == (10, 20, 30)  # pixel (y=5, x=7) is (R, G, B)
    np.testing.assert_array_equal(images[0, 0, :, 0], np.arange(32))  # a row runs along x
    assert images[0].flags.c_contiguous


def test_finds_batches_folder_or_its_parent(tmp_path: Path, data: dict) -> None:
    py, binary = write_python_cifar(tmp_path, data), write_binary_cifar(tmp_path, data)
    assert find_cifar10(tmp_path) == (py, "python")  # python preferred when both exist
    assert find_cifar10(tmp_path, "binary") == (binary, "binary")
    assert find_cifar10(binary) == (binary, "binary")
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        find_cifar10(tmp_path / "nothing")


def _py2_str(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING, how Python 2 wrote str


def _py2_uint8_matrix(raw: bytes, rows: int, cols: int) -> bytes:
    """A numpy uint8 array exactly as Python 2 cPickle (protocol 2) wrote the official files."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R(K\x01J"
        + struct.pack("<i", rows)
        + b"J"
        + struct.pack("<i", cols)
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
        + struct.pack("<I", len(raw))
        + raw
        + b"tb"
    )


def test_python2_pickles_like_the_official_files(tmp_path: Path, data: dict) -> None:
    folder = write_python_cifar(tmp_path, data)
    images, labels = data["test"]
    labels_op = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    body = (
        _py2_str(b"data")
        + _py2_uint8_matrix(_rows(images).tobytes(), len(images), 3072)
        + _py2_str(b"labels")
        + labels_op
    )
    (folder / "test_batch").write_bytes(b"\x80\x02}(" + body + b"u.")
    names = b"".join(_py2_str(c.encode()) for c in CLASSES)
    (folder / "batches.meta").write_bytes(
        b"\x80\x02}(" + _py2_str(b"label_names") + b"](" + names + b"eu."
    )
    got, got_labels, classes = read_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert classes == CLASSES


class _Evil:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", ["system", "eval"])
def test_malicious_pickle_is_refused(tmp_path: Path, data: dict, call: str) -> None:
    folder = write_python_cifar(tmp_path, data)
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if call == "system" else f"open({str(marker)!r}, 'w')"
    evil = _Evil(os.system if call == "system" else eval, command)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": evil, b"labels": []}))
    with pytest.raises(DataError, match="data_batch_2.*refused global"):
        read_cifar10(tmp_path, "train")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickle.dumps([1, 2, 3]), "expected a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "100 bytes"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "labels"),
        (b"\x80\x02}(U\x04data", "not a safe"),  # truncated
    ],
)
def test_malformed_python_batch(tmp_path: Path, data: dict, payload: bytes, message: str) -> None:
    folder = write_python_cifar(tmp_path, data)
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=message):
        read_cifar10(tmp_path, "test")


def test_truncated_binary_names_file_and_size(tmp_path: Path, data: dict) -> None:
    folder = write_binary_cifar(tmp_path, data)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    size = PER_BATCH * 3073 - 100
    with pytest.raises(DataError, match=rf"data_batch_3\.bin: {size} bytes"):
        read_cifar10(tmp_path, "train")


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_missing_file_is_named(tmp_path: Path, data: dict, fmt: str) -> None:
    folder = WRITERS[fmt](tmp_path, data)
    name = "data_batch_4" + (".bin" if fmt == "binary" else "")
    (folder / name).unlink()
    with pytest.raises(DataError, match=f"missing: .*{name}"):
        read_cifar10(tmp_path, "train")


def test_labels_must_match_classes(tmp_path: Path, data: dict) -> None:
    folder = write_binary_cifar(tmp_path, data)
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 classes"):
        read_cifar10(tmp_path, "test")


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden"])
def test_class_names_cannot_escape_output(tmp_path: Path, data: dict, name: str) -> None:
    folder = write_binary_cifar(tmp_path, data)
    (folder / "batches.meta.txt").write_text("\n".join([name, *CLASSES[1:]]))
    with pytest.raises(DataError, match="class names"):
        read_cifar10(tmp_path, "test")


def test_unknown_split_and_format(tmp_path: Path, data: dict) -> None:
    write_binary_cifar(tmp_path, data)
    with pytest.raises(DataError, match="split 'val'"):
        read_cifar10(tmp_path, "val")
    with pytest.raises(DataError, match="format 'tfrecord'"):
        read_cifar10(tmp_path, "train", fmt="tfrecord")


def test_load_pickle_decodes_bytes_keys(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({b"a": 1, "b": 2}))
    assert load_pickle(path) == {"a": 1, "b": 2}


# --- ImageFolder conversion --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_to_folder_counts_and_pixels(tmp_path: Path, data: dict, fmt: str) -> None:
    WRITERS[fmt](tmp_path / "raw", data)
    out = cifar10_to_folder(tmp_path / "raw", tmp_path / "out", progress=False, workers=4)
    for split, (images, labels) in data.items():
        assert sorted(p.name for p in (out / split).iterdir()) == CLASSES
        for index, class_name in enumerate(CLASSES):
            assert len(list((out / split / class_name).glob("*.png"))) == (labels == index).sum()
        for i in (0, len(images) - 1):
            png = out / split / CLASSES[labels[i]] / f"{i:05d}.png"
            with Image.open(png) as picture:
                assert picture.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(picture), images[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no staging left


def _digest_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_to_folder_is_deterministic_and_keeps_finished_splits(tmp_path: Path, data: dict) -> None:
    write_python_cifar(tmp_path / "raw", data)
    first = cifar10_to_folder(tmp_path / "raw", tmp_path / "a", progress=False, workers=1)
    second = cifar10_to_folder(tmp_path / "raw", tmp_path / "b", progress=False, workers=8)
    assert _digest_tree(first) == _digest_tree(second)
    marker = first / "train" / "airplane" / "keep.txt"
    marker.write_text("mine")
    cifar10_to_folder(tmp_path / "raw", first, splits=("train",), progress=False)
    assert marker.read_text() == "mine"  # a finished split is not rewritten


def test_to_folder_only_requested_splits(tmp_path: Path, data: dict) -> None:
    write_binary_cifar(tmp_path / "raw", data)
    out = cifar10_to_folder(tmp_path / "raw", tmp_path / "out", splits=("test",), progress=False)
    assert [p.name for p in out.iterdir()] == ["test"]


# --- download and extraction -------------------------------------------------------------------


def _official_archive(tmp_path: Path, data: dict, fmt: str) -> tuple[Path, str]:
    """A tarball laid out like the official one, and its MD5."""
    folder = WRITERS[fmt](tmp_path / "build", data)
    archive = tmp_path / "served" / cifar.FORMATS[fmt].archive_name
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _serve(monkeypatch: pytest.MonkeyPatch, fmt: str, archive: Path, md5: str) -> None:
    spec = dataclasses.replace(cifar.FORMATS[fmt], url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(cifar.FORMATS, fmt, spec)


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no download expected")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_official_urls_and_checksums() -> None:
    assert cifar.FORMATS["python"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar.FORMATS["python"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.FORMATS["binary"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar.FORMATS["binary"].md5 == "c32a1d4ab5d03f1284b67883e8d87530"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_download_extract_read(
    tmp_path: Path, data: dict, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = _official_archive(tmp_path, data, fmt)
    _serve(monkeypatch, fmt, archive, md5)
    root = tmp_path / "root"
    folder = download_cifar10(root, fmt, progress=False)
    assert folder == root / cifar.FORMATS[fmt].folder
    assert (root / archive.name).read_bytes() == archive.read_bytes()
    np.testing.assert_array_equal(read_cifar10(root, "test", fmt)[0], data["test"][0])

    _no_network(monkeypatch)
    assert download_cifar10(root, fmt, progress=False) == folder  # extracted: nothing to do
    os.rename(folder, tmp_path / "moved")
    assert download_cifar10(root, fmt, progress=False) == folder  # verified archive: re-extract
    assert sorted(p.name for p in root.iterdir()) == sorted([archive.name, folder.name])


def test_download_checksum_mismatch(
    tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = _official_archive(tmp_path, data, "python")
    _serve(monkeypatch, "python", archive, "f" * 32)
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / "cifar-10-batches-py").exists()


def test_offline_without_archive_explains_manual_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError) as info:
        ensure_cifar10(tmp_path, "binary")
    message = str(info.value)
    assert (
        "cifar-10-binary.tar.gz" in message and str(tmp_path / "cifar-10-binary.tar.gz") in message
    )


def test_placed_archive_is_verified_then_extracted(
    tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = _official_archive(tmp_path, data, "python")
    monkeypatch.setitem(
        cifar.FORMATS, "python", dataclasses.replace(cifar.FORMATS["python"], md5=md5)
    )
    _no_network(monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    (root / archive.name).write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(DataError, match="not the official"):
        ensure_cifar10(root, "python")
    (root / archive.name).write_bytes(archive.read_bytes())
    assert ensure_cifar10(root, "python") == root / "cifar-10-batches-py"


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cli_converts_and_the_folder_trains(tmp_path: Path, data: dict, fmt: str) -> None:
    from typer.testing import CliRunner

    from imagefit.cli import app
    from imagefit.data.splits import resolve_splits

    writer = write_python_cifar if fmt == "python" else write_binary_cifar
    writer(tmp_path, data)
    out = tmp_path / "folder"
    result = CliRunner().invoke(
        app, ["data", "cifar10", "--root", str(tmp_path), "--format", fmt, "--to-folder", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = resolve_splits(out, val_fraction=0.5)  # a split layout the trainer reads
    images, labels, classes = read_cifar10(tmp_path, "test", fmt=fmt)
    assert manifest.classes == classes and len(manifest.splits["test"]) == len(labels)
    first = manifest.splits["test"][0]
    assert np.array_equal(np.asarray(Image.open(first[0])), images[int(first[0].stem)])
