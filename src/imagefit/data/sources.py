"""Where a run's samples come from: the one seam between a dataset's form and the split.

Each source turns ``data.*`` into a :class:`~imagefit.data.splits.SplitManifest` (and the rows
it left out, with why); everything after the manifest (skip list, cache, loaders, evaluation,
``split.json``) is the same whatever the source. A new form of dataset is a new entry in
:data:`SOURCES` and a line in :func:`source_name`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagefit.config import DataConfig
from imagefit.data.labelfile import read_label_file
from imagefit.data.splits import SplitManifest, given_splits, resolve_splits, split_samples
from imagefit.errors import DataError
from imagefit.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    manifest: SplitManifest
    skipped: dict[str, str] = field(default_factory=dict)  # left out before decoding -> why


SOURCES: Registry[Callable[[DataConfig], Resolved]] = Registry("data source")


@SOURCES.register("manifest")
def _from_manifest(d: DataConfig) -> Resolved:
    assert d.split_manifest is not None
    return Resolved(SplitManifest.load(d.split_manifest, d.hf or d.root))


@SOURCES.register("labels")
def _from_label_file(d: DataConfig) -> Resolved:
    assert d.labels is not None
    if not d.root:
        raise DataError(
            f"data.labels={d.labels} needs data.root, the folder its paths are relative to "
            "(--set data.root=DIR)"
        )
    table = read_label_file(
        d.labels,
        d.root,
        path_column=d.path_column,
        label_column=d.label_column,
        split_column=d.split_column,
        on_bad=d.on_bad,
        links=d.links,
        label_sep=d.label_sep if d.task == "multilabel" else None,
    )
    root = Path(d.root)
    if table.splits is None:
        manifest = split_samples(
            root, table.classes, table.samples, d.val_fraction, d.test_fraction, d.split_seed
        )
    else:
        if "train" not in table.splits:
            raise DataError(f"{d.labels}: the split column '{d.split_column}' names no train row")
        manifest = given_splits(
            root, table.classes, table.splits, d.val_fraction, d.split_seed, "labels"
        )
    manifest.task = d.task
    return Resolved(manifest, table.skipped)


@SOURCES.register("hf")
def _from_hf(d: DataConfig) -> Resolved:
    from imagefit.data.hf import hf_manifest  # the datasets library, only when asked for

    return Resolved(hf_manifest(d))


@SOURCES.register("folder")
def _from_folder(d: DataConfig) -> Resolved:
    if not d.root:
        raise DataError("data.root is not set: point it at an ImageFolder (--set data.root=DIR)")
    return Resolved(
        resolve_splits(d.root, d.val_fraction, d.test_fraction, d.split_seed, links=d.links)
    )


def source_name(d: DataConfig) -> str:
    """The source ``d`` asks for: a saved split first, then a label file, then folders."""
    if d.split_manifest:
        return "manifest"
    if d.labels:
        return "labels"
    if d.hf:
        return "hf"
    return "folder"


def resolve_data(d: DataConfig) -> Resolved:
    """The manifest of ``data.*`` and what its source left out."""
    return SOURCES.get(source_name(d))(d)
