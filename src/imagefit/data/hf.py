"""A Hugging Face dataset as the data (``data.hf``), through the ``datasets`` library.

``data.hf`` names a ``save_to_disk`` folder (``datasets.load_from_disk``), or anything
``datasets.load_dataset`` takes: a local parquet or script folder, or a hub name (fetched into
the ``datasets`` cache; with ``HF_DATASETS_OFFLINE=1`` only what is cached). The class names
are those of the label column's ``ClassLabel`` feature, in its order.

A row is named in the split manifest by a path that is not a file: ``<hf split>/<row>`` under
``data.hf`` (the manifest's format is unchanged, and a resumed run reads its rows back from
it). Images are read as their encoded bytes and decoded by :func:`load_rgb`, like files, so a
dataset made from a folder gives the folder's pixels, class index and (same row order) split.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagefit.config import DataConfig
from imagefit.data.folder import Sample
from imagefit.data.images import load_rgb
from imagefit.data.splits import SPLIT_ALIASES, SplitManifest, stratified_split
from imagefit.data.store import Box, PixelSpec
from imagefit.errors import DataError, ImageError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("data.hf needs the `datasets` package (pip install datasets)") from None
    return datasets


def open_dataset(name: str) -> Any:
    """``datasets.Dataset`` or ``DatasetDict`` of ``data.hf``; DataError naming it if unreadable."""
    datasets = _datasets()
    path = Path(name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(name)
    except (OSError, ValueError, FileNotFoundError, ConnectionError) as exc:
        raise DataError(f"data.hf={name}: cannot load ({type(exc).__name__}: {exc})") from None


def _parts(dataset: Any, d: DataConfig) -> dict[str, Any]:
    """The named HF splits to read (one name -> Dataset)."""
    if not hasattr(dataset, "keys"):  # a single Dataset
        return {d.hf_split or "train": dataset}
    if d.hf_split is not None:
        if d.hf_split not in dataset:
            raise DataError(
                f"data.hf={d.hf}: no split '{d.hf_split}' (it has {', '.join(dataset)})"
            )
        return {d.hf_split: dataset[d.hf_split]}
    return dict(dataset)


def _classes(part: Any, d: DataConfig) -> list[str]:
    for column in (d.hf_image_column, d.hf_label_column):
        if column not in part.column_names:
            raise DataError(
                f"data.hf={d.hf}: no column '{column}' (it has {', '.join(part.column_names)}); "
                "set data.hf_image_column / data.hf_label_column"
            )
    feature = part.features[d.hf_label_column]
    if not hasattr(feature, "names"):
        raise DataError(
            f"data.hf={d.hf}: column '{d.hf_label_column}' is {type(feature).__name__}, not a "
            "ClassLabel (datasets' class_encode_column makes one)"
        )
    return list(feature.names)


def _rows(name: str, part: Any, root: Path, label_column: str) -> list[Sample]:
    labels = part[label_column]
    return [(root / name / f"{row:09d}", int(label)) for row, label in enumerate(labels)]


def hf_manifest(d: DataConfig) -> SplitManifest:
    """Split ``data.hf`` as a folder is split: one HF split by the fractions, or its own splits."""
    assert d.hf is not None
    parts = _parts(open_dataset(d.hf), d)
    classes = _classes(next(iter(parts.values())), d)
    root = Path(d.hf)
    if len(parts) == 1:
        ((name, part),) = parts.items()
        fractions = {
            "train": 1 - d.val_fraction - d.test_fraction,
            "val": d.val_fraction,
            "test": d.test_fraction,
        }
        splits = stratified_split(
            _rows(name, part, root, d.hf_label_column), fractions, d.split_seed
        )
        return SplitManifest(root, classes, splits, "stratified", d.split_seed, fractions)
    found: dict[str, list[Sample]] = {}
    for split, aliases in SPLIT_ALIASES.items():
        alias = next((a for a in aliases if a in parts), None)
        if alias is not None:
            if _classes(parts[alias], d) != classes:
                raise DataError(f"data.hf={d.hf}: split '{alias}' has other class names")
            found[split] = _rows(alias, parts[alias], root, d.hf_label_column)
    if "train" not in found:
        raise DataError(
            f"data.hf={d.hf}: no train split among {', '.join(parts)}; set data.hf_split"
        )
    carved_from: dict[str, float] | None = None
    if "val" not in found and d.val_fraction > 0:
        carved = stratified_split(
            found["train"], {"train": 1 - d.val_fraction, "val": d.val_fraction}, d.split_seed
        )
        found.update(carved)
        carved_from = {"val_of_train": d.val_fraction}
    found.setdefault("val", [])
    found.setdefault("test", [])
    return SplitManifest(root, classes, found, "folders", d.split_seed, carved_from)


class HFSource:
    """Rows of an HF dataset decoded per batch (a :class:`PixelSource`)."""

    def __init__(self, d: DataConfig, samples: Sequence[Sample], spec: PixelSpec):
        datasets = _datasets()
        assert d.hf is not None
        opened = open_dataset(d.hf)
        self.parts = {
            name: part.cast_column(d.hf_image_column, datasets.Image(decode=False))
            for name, part in _parts(opened, d).items()
        }
        self.rows = [(path.parent.name, int(path.name)) for path, _ in samples]
        self.labels = [label for _, label in samples]
        self.column, self.spec, self.min_size = d.hf_image_column, spec, d.min_size
        self.size = spec.size
        self.where = d.hf

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, position: int) -> tuple[np.ndarray, Box]:
        name, row = self.rows[position]
        image = self.parts[name][row][self.column]
        label = f"{self.where}[{name}][{row}]"
        try:
            data = (
                image["bytes"]
                if image.get("bytes") is not None
                else Path(image["path"]).read_bytes()
            )
            rgb = load_rgb(io.BytesIO(data), self.min_size, name=label)
        except OSError as exc:
            raise ImageError(f"{label}: cannot read image ({exc})", kind="unreadable") from None
        return self.spec.image(rgb)  # what a file gives: the store, or the evaluation crop

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        for indices in index_batches:
            decoded = [self.decode(int(i)) for i in indices]
            pixels = torch.from_numpy(np.stack([image for image, _ in decoded]))
            labels = torch.tensor([self.labels[int(i)] for i in indices], dtype=torch.int64)
            if self.spec.store:
                yield pixels, labels, torch.tensor([box for _, box in decoded], dtype=torch.int64)
            else:
                yield pixels, labels

    def decode_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, S, S, 3) uint8 of every row and, for the store, their (N, 2) valid boxes."""
        out = np.empty((len(self), self.size, self.size, 3), dtype=np.uint8)
        boxes = np.empty((len(self), 2), dtype=np.int64)
        for position in range(len(self)):
            out[position], boxes[position] = self.decode(position)
        return out, boxes if self.spec.store else None
