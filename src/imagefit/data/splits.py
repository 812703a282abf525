"""Train/val/test splits: split layouts on disk, or a stratified, seeded split of one folder.

The result is a :class:`SplitManifest` that every run writes as ``split.json``, so evaluation
later uses exactly the files the run held out, and the test split is never used for selection.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.data.folder import LinkPolicy, Sample, find_classes, scan_folder
from imagefit.errors import DataError
from imagefit.fileio import atomic_write, make_dirs
from imagefit.runs.layout import SPLIT

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


@dataclass
class SplitManifest:
    """Which file is in which split, with the class list that defines the labels."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    layout: str  # "folders" (root/{train,val,test}) or "stratified" (split by us)
    seed: int | None = None
    fractions: dict[str, float] | None = None
    # multilabel: each label is the bit set of the image's classes (data.multilabel)
    task: str = "single"

    def to_json(self) -> dict:
        task = {"task": self.task} if self.task != "single" else {}  # single: as ever
        return {
            **task,
            "version": 1,
            "root": str(Path(self.root).absolute()),  # a run stores data paths absolute
            "layout": self.layout,
            "seed": self.seed,
            "fractions": self.fractions,
            "classes": self.classes,
            "counts": {name: len(items) for name, items in self.splits.items()},
            "splits": {
                name: [[p.relative_to(self.root).as_posix(), label] for p, label in items]
                for name, items in self.splits.items()
            },
        }

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1), what="the split manifest")

    @classmethod
    def load(cls, path: str | Path, root: str | Path | None = None) -> SplitManifest:
        """Read a manifest; ``root`` relocates it (the dataset moved, the files did not change).

        Anything but a manifest as :meth:`save` writes it (unreadable, not JSON, a key missing
        or of the wrong type, an unknown split, an absolute path, a label outside the class
        list) is a :class:`DataError` that names the file and what is wrong.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise DataError(f"{path}: not a valid split manifest ({exc})") from None
        try:
            return cls._from_json(raw, root)
        except _Invalid as exc:
            raise DataError(f"{path}: not a valid split manifest: {exc}") from None

    @classmethod
    def from_json_text(cls, text: str, root: str | Path | None = None) -> SplitManifest:
        """A manifest from its JSON text (e.g. read through fsspec beside a dataset's shards)."""
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"not a valid split manifest ({exc})") from None
        try:
            return cls._from_json(raw, root)
        except _Invalid as exc:
            raise DataError(f"not a valid split manifest: {exc}") from None

    @classmethod
    def _from_json(cls, raw: object, root: str | Path | None) -> SplitManifest:
        if not isinstance(raw, dict):
            raise _Invalid(f"expected a JSON object, got {_kind(raw)}")
        required = ["classes", "splits", "layout"] + (["root"] if root is None else [])
        missing = [key for key in required if key not in raw]
        if missing:
            raise _Invalid("missing " + ", ".join(f"'{key}'" for key in missing))
        base = Path(root) if root is not None else Path(_typed(raw, "root", str, "a path"))
        classes = _typed(raw, "classes", list, "a list of class names")
        if not all(isinstance(name, str) for name in classes):
            raise _Invalid("'classes' must be a list of class names (strings)")
        if len(set(classes)) != len(classes):
            raise _Invalid("'classes' names a class twice")
        layout = _typed(raw, "layout", str, "a string")
        seed = raw.get("seed")
        if seed is not None and not _is_int(seed):
            raise _Invalid(f"'seed' must be an integer or null, got {_kind(seed)}")
        fractions = raw.get("fractions")
        if fractions is not None and not (
            isinstance(fractions, dict) and all(_is_number(v) for v in fractions.values())
        ):
            raise _Invalid("'fractions' must be an object of numbers or null")
        named = _typed(raw, "splits", dict, "an object of splits")
        unknown = sorted(set(named) - set(SPLITS))
        if unknown:
            raise _Invalid(f"unknown split(s) {unknown}; the splits are {list(SPLITS)}")
        if "train" not in named:
            raise _Invalid("no 'train' split")
        task = raw.get("task", "single")
        if task not in ("single", "multilabel"):
            raise _Invalid(f"'task' must be single or multilabel, got {task!r}")
        # a multi-label label is a bit set of the classes
        limit = 2 ** len(classes) if task == "multilabel" else len(classes)
        splits = {name: _samples(name, items, base, limit) for name, items in named.items()}
        return cls(base, classes, splits, layout, seed, fractions, task)


class _Invalid(Exception):
    """What is wrong with a manifest's JSON (SplitManifest.load adds the file)."""


def _kind(value: object) -> str:
    """The JSON name of ``value``'s type, for messages."""
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _shape(item: object) -> str:
    if not isinstance(item, list):
        return _kind(item)
    if len(item) != 2:
        return f"an array of {len(item)}"
    return f"[{_kind(item[0])}, {_kind(item[1])}]"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed(raw: dict, key: str, kind: type, what: str) -> Any:
    value = raw[key]
    if not isinstance(value, kind):
        raise _Invalid(f"'{key}' must be {what}, got {_kind(value)}")
    return value


def _samples(name: str, items: object, base: Path, count: int) -> list[Sample]:
    """Split ``name``'s ``[[relative path, label], ...]`` as samples under ``base``."""
    if not isinstance(items, list):
        raise _Invalid(f"split '{name}' must be a list of [path, label] pairs, got {_kind(items)}")
    samples = []
    for position, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and _is_int(item[1])
        ):
            raise _Invalid(
                f"split '{name}' item {position} must be a [path, integer label] "
                f"pair, got {_shape(item)}"
            )
        rel, label = item
        if not rel or Path(rel).is_absolute():  # save() could not write it back
            raise _Invalid(
                f"split '{name}' item {position}: the path must be relative to the "
                f"root, got {rel[:80]!r}"
            )
        if not 0 <= label < count:
            raise _Invalid(
                f"split '{name}' has labels outside the class list (item {position}: "
                f"label {label}, {count} classes)"
            )
        samples.append((base / rel, label))
    return samples


def _refuse_shared_files(root: Path, splits: dict[str, list[Sample]]) -> None:
    """One file (the same inode: a link or a hard link) in two split folders is a leak."""
    where: dict[tuple[int, int], tuple[str, Path]] = {}
    for name, samples in splits.items():
        for path, _ in samples:
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino)
            if key in where and where[key][0] != name:
                other, first = where[key]
                raise DataError(
                    f"{root}: {path} ({name}) and {first} ({other}) are the same file; a file "
                    "belongs to one split: remove the link"
                )
            where.setdefault(key, (name, path))


def _split_dirs(root: Path) -> dict[str, Path]:
    present = {entry.name.lower(): entry for entry in root.iterdir() if entry.is_dir()}
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in present:
                found[split] = present[alias]
                break
    return found


def stratified_split(
    samples: list[Sample], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Split per class with a seeded shuffle; each split gets round(n * fraction) of a class.

    Per-class rounding keeps class ratios in every split, which sklearn's global stratified
    split cannot do for classes with very few images.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Sample]] = {name: [] for name in fractions}
    held_out = [name for name in fractions if name != "train"]
    for label in sorted({label for _, label in samples}):
        members = [s for s in samples if s[1] == label]
        order = rng.permutation(len(members))
        start = 0
        for name in held_out:
            count = int(round(len(members) * fractions[name]))
            count = min(count, len(members) - start - 1)  # always leave one for training
            out[name].extend(members[i] for i in order[start : start + count])
            start += count
        out["train"].extend(members[i] for i in order[start:])
    for items in out.values():
        items.sort(key=lambda s: (s[1], str(s[0])))
    return out


def resolve_splits(
    root: str | Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    links: LinkPolicy = "inside",
) -> SplitManifest:
    """Find or make train/val/test for ``root``.

    ``root/{train,val,test}`` are used as they are; a missing ``val`` is carved from train
    (stratified, ``val_fraction`` of train). A plain ``root/<class>`` folder is split
    ``1 - val - test / val / test`` per class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    dirs = _split_dirs(root)
    if not dirs:
        index = scan_folder(root, links=links)
        return split_samples(root, index.classes, index.samples, val_fraction, test_fraction, seed)
    if "train" not in dirs:
        raise DataError(f"{root}: has {sorted(dirs)} split folders but no 'train'")
    classes = find_classes(dirs["train"])
    splits = {
        name: scan_folder(path, classes, links, within=root).samples for name, path in dirs.items()
    }
    _refuse_shared_files(root, splits)
    return given_splits(root, classes, splits, val_fraction, seed, "folders")


def split_samples(
    root: Path,
    classes: list[str],
    samples: list[Sample],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> SplitManifest:
    """The manifest of ``samples`` split per class (stratified, seeded) into train/val/test."""
    fractions = {
        "train": 1 - val_fraction - test_fraction,
        "val": val_fraction,
        "test": test_fraction,
    }
    if fractions["train"] <= 0:
        raise DataError(f"val_fraction + test_fraction = {val_fraction + test_fraction} >= 1")
    splits = stratified_split(samples, fractions, seed)
    manifest = SplitManifest(root, classes, splits, "stratified", seed, fractions)
    _check(manifest, need_val=val_fraction > 0)
    return manifest


def given_splits(
    root: Path,
    classes: list[str],
    splits: dict[str, list[Sample]],
    val_fraction: float,
    seed: int,
    layout: str,
) -> SplitManifest:
    """The manifest of splits fixed by the dataset; a missing val is carved from train."""
    fractions = None
    if "val" not in splits and val_fraction == 0:
        splits["val"] = []
    elif "val" not in splits:
        carved = stratified_split(
            splits["train"], {"train": 1 - val_fraction, "val": val_fraction}, seed
        )
        splits.update(carved)
        fractions = {"val_of_train": val_fraction}
        log.info(
            "%s: no val split; carved %d images from train (seed %d)",
            root,
            len(splits["val"]),
            seed,
        )
    splits.setdefault("test", [])
    manifest = SplitManifest(root, classes, splits, layout, seed, fractions)
    _check(manifest, need_val=val_fraction > 0)
    return manifest


def _check(manifest: SplitManifest, need_val: bool = True) -> None:
    if len(manifest.classes) < 2:
        raise DataError(
            f"{manifest.root}: found {len(manifest.classes)} class ({manifest.classes}); "
            "a classifier needs at least 2 class folders"
        )
    if not manifest.splits["train"]:
        raise DataError(f"{manifest.root}: the train split is empty")
    if need_val and not manifest.splits["val"]:
        raise DataError(
            f"{manifest.root}: the val split is empty; add images or raise val_fraction"
        )
    if not manifest.splits["test"]:
        log.warning(
            "%s: no test split; a run reports its final metrics on val (optimistic)",
            manifest.root,
        )


def write_split_folders(manifest: SplitManifest, out: str | Path) -> Path:
    """Copy each split to ``out/<split>/<class>/<file>`` and write ``out/split.json``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"output folder {out} exists and is not empty")
    relocated: dict[str, list[Sample]] = {}
    for split, items in manifest.splits.items():
        relocated[split] = []
        for path, label in items:
            target = out / split / manifest.classes[label] / path.name
            if target.exists():  # same file name in nested folders of one class
                target = target.with_name(f"{path.parent.name}_{path.name}")
            make_dirs(target.parent)
            shutil.copy2(path, target)
            relocated[split].append((target, label))
    copy = SplitManifest(
        out, manifest.classes, relocated, "folders", manifest.seed, manifest.fractions
    )
    copy.save(out / SPLIT)
    return out
