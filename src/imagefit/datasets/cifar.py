"""CIFAR-10: download the official archives, read both official formats, write an ImageFolder.

Two formats are published: ``cifar-10-batches-py`` (pickled dicts) and ``cifar-10-batches-bin``
(fixed-size records). Both store each image as 3072 bytes, all red then all green then all blue
(channel-major, CHW), which the readers turn into the usual ``(32, 32, 3)`` HWC layout. The
pickles are loaded with an unpickler that can only build numpy arrays, so a doctored file cannot
run code. The class order (airplane, automobile, ...) is already alphabetical, so an ImageFolder
written here indexes its classes exactly like the original labels.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from imagefit.datasets.archive import download, md5sum, safe_extract
from imagefit.errors import DataError

log = logging.getLogger(__name__)

SIDE = 32
PIXELS = 3 * SIDE * SIDE  # bytes per image
RECORD = 1 + PIXELS  # binary format: one label byte, then the pixels
PER_BATCH = 10_000  # images in each official batch file
SPLITS = ("train", "test")


@dataclass(frozen=True)
class CifarFormat:
    """Where one published format comes from and which files it holds."""

    url: str
    md5: str
    folder: str  # the single top-level folder inside the archive
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str

    @property
    def archive_name(self) -> str:
        return Path(urlparse(self.url).path).name

    def files(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise DataError(f"unknown CIFAR-10 split {split!r}; expected one of {SPLITS}")
        return self.train if split == "train" else self.test


# Tests swap an entry for a local URL; nothing else should change these.
FORMATS: dict[str, CifarFormat] = {
    "python": CifarFormat(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
    ),
    "binary": CifarFormat(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        md5="c32a1d4ab5d03f1284b67883e8d87530",
        folder="cifar-10-batches-bin",
        train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test=("test_batch.bin",),
        meta="batches.meta.txt",
    ),
}


def get_format(fmt: str) -> CifarFormat:
    """The :class:`CifarFormat` named ``fmt`` ("python" or "binary")."""
    if fmt not in FORMATS:
        raise DataError(f"unknown CIFAR-10 format {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


# --- download and extraction -------------------------------------------------------------------


def download_cifar10(root: str | Path, fmt: str = "python", progress: bool = True) -> Path:
    """Download (unless a verified archive is there), extract; return the batches folder."""
    return ensure_cifar10(root, fmt, download_missing=True, progress=progress)


def ensure_cifar10(
    root: str | Path, fmt: str = "python", download_missing: bool = False, progress: bool = True
) -> Path:
    """Return ``root/cifar-10-batches-{py,bin}``, extracting the archive in ``root`` if needed.

    Without ``download_missing`` nothing is fetched: a missing archive raises
    :class:`DataError` naming the URL and the path to place it at.
    """
    spec, root = get_format(fmt), Path(root)
    folder, archive = root / spec.folder, root / spec.archive_name
    if folder.is_dir():  # extraction renames it into place only when complete
        return folder
    if download_missing:
        download(spec.url, archive, spec.md5, progress)
    elif not archive.is_file():
        raise DataError(
            f"CIFAR-10 ({fmt}) not found: neither {folder} nor {archive} exists. Download it "
            f"with --download, or fetch {spec.url} yourself and place it at {archive}"
        )
    elif (actual := md5sum(archive)) != spec.md5:
        raise DataError(
            f"{archive}: MD5 {actual} is not the official {spec.md5}; the file is damaged or "
            f"not {spec.url}. Delete it and download again"
        )
    safe_extract(archive, root)
    if not folder.is_dir():
        raise DataError(f"{archive}: holds no {spec.folder}/ folder")
    return folder


# --- reading -----------------------------------------------------------------------------------


def find_cifar10(root: str | Path, fmt: str | None = None) -> tuple[Path, str]:
    """Locate the batches folder under ``root`` (or ``root`` itself); return it and its format.

    With ``fmt`` None the python format is preferred when both are present.
    """
    root = Path(root)
    for name in [fmt] if fmt else list(FORMATS):
        spec = get_format(name)
        for candidate in (root / spec.folder, root):
            if any((candidate / file).is_file() for file in (spec.meta, *spec.train, *spec.test)):
                return candidate, name
    wanted = " or ".join(FORMATS[name].folder for name in ([fmt] if fmt else FORMATS))
    raise DataError(
        f"no CIFAR-10 batches in {root}: expected {root}/{wanted}. "
        "Run `imagefit data cifar10 --download`, or extract the official archive there"
    )


def read_cifar10(
    root: str | Path, split: str = "train", fmt: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split: ``(images (N, 32, 32, 3) uint8, labels (N,) int64, class names)``."""
    folder, fmt = find_cifar10(root, fmt)
    spec = get_format(fmt)
    reader = _read_python_batch if fmt == "python" else _read_binary_batch
    batches = [reader(_existing(folder / file)) for file in spec.files(split)]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    classes = _read_meta(_existing(folder / spec.meta), fmt)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(
            f"{folder}: labels span {labels.min()}..{labels.max()} but {spec.meta} names "
            f"{len(classes)} classes"
        )
    return images, labels, classes


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file missing: {path}")
    return path


def _chw_to_hwc(rows: np.ndarray) -> np.ndarray:
    # Each row is R plane, G plane, B plane (CHW); models and PNGs want HWC.
    return np.ascontiguousarray(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def _check_count(path: Path, count: int) -> None:
    if count != PER_BATCH:  # allowed (subsets, test fixtures), but worth a word for real data
        log.warning("%s: holds %d images; the official batch files hold %d", path, count, PER_BATCH)


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size == 0 or size % RECORD:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {RECORD}-byte records (1 label byte "
            f"+ {PIXELS} pixel bytes); the file is truncated or not CIFAR-10 binary"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD)
    _check_count(path, len(records))
    return _chw_to_hwc(records[:, 1:]), records[:, 0].astype(np.int64)


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' is not a 2-D uint8 array")
    if data.shape[1] != PIXELS:
        raise DataError(f"{path}: 'data' rows hold {data.shape[1]} bytes, expected {PIXELS}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: 'labels' is not a list of integers ({error})") from error
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but 'labels' has shape {labels.shape}")
    _check_count(path, len(data))
    return _chw_to_hwc(data), labels


_CLASS_NAME = re.compile(r"^[\w][\w .+-]*$")  # becomes a folder name: no separators, no '..'


def _read_meta(path: Path, fmt: str) -> list[str]:
    if fmt == "python":
        names = load_pickle(path).get("label_names")
        if not isinstance(names, list):
            raise DataError(f"{path}: no 'label_names' list")
        classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        classes = [line.strip() for line in lines if line.strip()]
    bad = [name for name in classes if not _CLASS_NAME.match(name)]
    if not classes or bad or len(set(classes)) != len(classes):
        raise DataError(f"{path}: class names must be unique plain names, got {classes}")
    return classes


# --- safe unpickling ---------------------------------------------------------------------------

# Exactly what a numpy array (numpy 1.x or 2.x, pickle protocol 2 to 5) needs to be rebuilt;
# none of these can run arbitrary code. Everything else (os.system, eval, ...) is refused.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol 2 writes a Python 3 bytes object
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: str | Path) -> dict[str, Any]:
    """Load a CIFAR python pickle safely; keys come back as ``str``.

    Only plain containers and numpy arrays can be built; anything else raises
    :class:`DataError`. The official files were written by Python 2, hence ``bytes`` keys.
    """
    try:
        with open(path, "rb") as handle:
            loaded = _RestrictedUnpickler(handle, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as error:
        raise DataError(f"{path}: not a safe CIFAR-10 python pickle ({error})") from error
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: holds a {type(loaded).__name__}, expected a dict")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in loaded.items()}


# --- ImageFolder conversion --------------------------------------------------------------------


def cifar10_to_folder(
    root: str | Path,
    out: str | Path,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
    workers: int | None = None,
    fmt: str | None = None,
) -> Path:
    """Write ``out/<split>/<class>/<index:05d>.png`` for each split; return ``out``.

    ``index`` is the image's position in its split, so the output is deterministic. A split
    folder that already exists is complete (it is renamed into place last) and is kept.
    """
    out = Path(out)
    for split in splits:
        target = out / split
        if target.is_dir():
            log.info("%s: exists, kept as it is", target)
            continue
        images, labels, classes = read_cifar10(root, split, fmt)
        _write_split(images, labels, classes, target, progress, workers)
        log.info("wrote %d %s images to %s", len(images), split, target)
    return out


def _write_split(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    target: Path,
    progress: bool,
    workers: int | None,
) -> None:
    # Staged beside `out`, not inside it: a leftover inside would look like a split or a class.
    parent = target.parent.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.parent.name}.{target.name}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=parent))
    try:
        for name in classes:
            (staging / name).mkdir()
        paths = [staging / classes[label] / f"{i:05d}.png" for i, label in enumerate(labels)]
        with ThreadPoolExecutor(workers) as pool:  # PNG encoding and file I/O release the GIL
            jobs = pool.map(_save_png, images, paths)
            bar = tqdm(
                jobs,
                total=len(paths),
                unit="img",
                desc=f"CIFAR-10 {target.name}",
                disable=None if progress else True,
            )
            for _ in bar:
                pass
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")  # (32, 32, 3) uint8 is RGB
