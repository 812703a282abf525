"""``verify_dataset``: find what would break or bias training before a run starts.

Every image is decoded once through :func:`imagefit.data.images.load_rgb` (the decode policy
training uses, so "verified" means "training can read it") and hashed, in parallel threads.
The report lists:

- bad files: missing, not an image, unreadable or truncated, unsupported mode, smaller than
  ``min_size``, more pixels than the decompression-bomb limit;
- exact duplicates (same bytes): across classes (the label is ambiguous), across the
  train/val/test folders (test leakage), and within a class (a stratified split can put the
  copies on both sides);
- near-duplicates (:mod:`imagefit.datasets.near_duplicates`: resized, re-encoded or slightly
  cropped copies, by perceptual hashes within ``near_dup_threshold``) across classes and
  across splits, listed as warnings: a perceptual hash can pair two distinct photos, so they
  are for a person to look at, not left out automatically;
- structural problems (an empty class folder, a val class that train lacks), ignored files
  without an image extension, class counts per split and the imbalance ratio.

``report.write(out)`` writes ``verify.json`` and ``bad_files.txt``: one absolute path per line,
the format ``data.skip_list`` reads, so a run can leave those files out (counted and logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from imagefit.config import DataConfig
from imagefit.data.balance import imbalance_ratio
from imagefit.data.folder import FolderIndex, LinkPolicy, find_classes, scan_folder
from imagefit.data.images import load_rgb
from imagefit.data.splits import (  # the layout rules training uses
    SPLITS,
    _split_dirs,
    resolve_splits,
)
from imagefit.datasets.near_duplicates import DEFAULT_THRESHOLD, near_pairs, perceptual_hashes
from imagefit.errors import DataError, ImageError
from imagefit.fileio import atomic_write, make_dirs

log = logging.getLogger(__name__)

IMBALANCE_WARNING = 3.0  # largest / smallest train class count above which the report warns
DUPLICATE_KINDS = ("cross_class", "cross_split", "same_class")
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRef:
    """One image file of the dataset and where it sits."""

    path: Path
    split: str  # "train"/"val"/"test", or "all" for a single-folder dataset
    label: str  # class name


@dataclass
class BadFile:
    file: FileRef
    kind: str  # ImageError.kind: missing, not_image, unreadable, unsupported_mode, ...
    message: str


@dataclass
class DuplicateGroup:
    """Files with identical bytes; ``kinds`` says which of them matter."""

    digest: str  # sha256 of the content
    files: list[FileRef]

    @property
    def kinds(self) -> list[str]:
        kinds = []
        if len({f.label for f in self.files}) > 1:
            kinds.append("cross_class")
        if len({f.split for f in self.files}) > 1:
            kinds.append("cross_split")
        if not kinds:
            kinds.append("same_class")
        return kinds

    @property
    def is_error(self) -> bool:
        return self.kinds != ["same_class"]

    def to_skip(self) -> list[FileRef]:
        """Copies to leave out: all of them when their labels disagree, else all but one
        (the copy in the earliest split, train before val before test)."""
        if "cross_class" in self.kinds:
            return list(self.files)
        order = {name: i for i, name in enumerate(SPLITS)}
        keep = min(self.files, key=lambda f: (order.get(f.split, -1), str(f.path)))
        return [f for f in self.files if f is not keep]


@dataclass
class NearDuplicate:
    """Two files with different bytes and (nearly) the same picture."""

    first: FileRef
    second: FileRef
    phash_distance: int
    dhash_distance: int

    @property
    def kinds(self) -> list[str]:
        kinds = []
        if self.first.label != self.second.label:
            kinds.append("cross_class")
        if self.first.split != self.second.split:
            kinds.append("cross_split")
        return kinds or ["same_class"]


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found; ``ok`` when nothing would break or leak."""

    root: Path
    layout: str  # "folders" (root/{train,val,test}/<class>) or "single" (root/<class>)
    classes: list[str]
    min_size: int
    counts: dict[str, dict[str, int]]  # split -> class -> images (bad ones included)
    scanned: int = 0
    bad: list[BadFile] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # no image extension: training ignores
    left_out: dict[str, list[str]] = field(default_factory=dict)  # hidden entries, links
    problems: list[str] = field(default_factory=list)  # structural errors
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    near_dup_threshold: int | None = DEFAULT_THRESHOLD  # None: not searched

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest class count of the train split (of all, single-folder)."""
        counts = self.counts.get("train") or self.counts.get("all") or {}
        return imbalance_ratio([counts.get(name, 0) for name in self.classes])

    @property
    def errors(self) -> int:
        """Bad files + duplicate groups across classes or splits + structural problems."""
        return len(self.bad) + sum(g.is_error for g in self.duplicates) + len(self.problems)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def warnings(self) -> list[str]:
        out = []
        ratio = self.imbalance_ratio
        if self.classes and ratio > IMBALANCE_WARNING:
            out.append(
                f"class imbalance {ratio:.3g}:1 (largest/smallest class); consider "
                "train.class_weights=balanced or data.sampler=balanced"
            )
        same = sum(g.kinds == ["same_class"] for g in self.duplicates)
        if same:
            why = " (a stratified split can put copies in train and test)"
            out.append(
                f"{same} groups of identical files within one class"
                + (why if self.layout == "single" else "")
            )
        for split, counts in self.counts.items():
            missing = [name for name in self.classes if not counts.get(name)]
            if missing and split != "train":
                out.append(f"split '{split}' has no images of {missing}")
        if self.ignored:
            out.append(f"{len(self.ignored)} files without an image extension are ignored")
        for reason, paths in self.left_out.items():
            if paths:
                out.append(f"{len(paths)} {LEFT_OUT[reason]} are left out")
        near = self.near_duplicates_by_kind()
        if near["cross_split"] or near["cross_class"]:
            out.append(
                f"near-duplicate pairs (perceptual hash distance <= {self.near_dup_threshold}): "
                f"{near['cross_split']} across splits (test leakage), {near['cross_class']} "
                "across classes (ambiguous labels); see near_duplicates in verify.json"
            )
        return out

    def near_duplicates_by_kind(self) -> dict[str, int]:
        return {
            kind: sum(kind in n.kinds for n in self.near_duplicates) for kind in DUPLICATE_KINDS
        }

    def bad_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for item in self.bad:
            counts[item.kind] += 1
        return dict(sorted(counts.items()))

    def duplicates_by_kind(self) -> dict[str, int]:
        return {kind: sum(kind in g.kinds for g in self.duplicates) for kind in DUPLICATE_KINDS}

    def skip_paths(self) -> list[Path]:
        """Every file a run should leave out: bad files, then duplicate copies, no repeats."""
        paths = [item.file.path for item in self.bad]
        for group in self.duplicates:
            paths.extend(f.path for f in group.to_skip())
        return list(dict.fromkeys(paths))

    def to_json(self) -> dict[str, Any]:
        def ref(f: FileRef) -> dict[str, str]:
            return {"path": str(f.path), "split": f.split, "class": f.label}

        ratio = self.imbalance_ratio

        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "min_size": self.min_size,
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings(),
            "scanned": self.scanned,
            "counts": self.counts,
            "imbalance_ratio": ratio if math.isfinite(ratio) else None,
            "problems": self.problems,
            "bad_by_kind": self.bad_by_kind(),
            "duplicates_by_kind": self.duplicates_by_kind(),
            "bad_files": [{**ref(b.file), "kind": b.kind, "message": b.message} for b in self.bad],
            "duplicates": [
                {
                    "sha256": g.digest,
                    "kinds": g.kinds,
                    "files": [ref(f) for f in g.files],
                    "skip": [str(f.path) for f in g.to_skip()],
                }
                for g in self.duplicates
            ],
            "ignored": [str(p) for p in self.ignored],
            "left_out": self.left_out,
            "near_dup_threshold": self.near_dup_threshold,
            "near_duplicates_by_kind": self.near_duplicates_by_kind(),
            "near_duplicates": [
                {
                    "kinds": n.kinds,
                    "phash_distance": n.phash_distance,
                    "dhash_distance": n.dhash_distance,
                    "files": [ref(n.first), ref(n.second)],
                }
                for n in self.near_duplicates
            ],
        }

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out/verify.json`` and ``out/bad_files.txt``; return both paths."""
        out = Path(out)
        make_dirs(out, "the report folder")
        report = out / "verify.json"
        atomic_write(report, json.dumps(self.to_json(), indent=1, default=str), durable=False)
        lines = [
            f"# imagefit data verify {self.root}: files to leave out of training",
            "# use with --set data.skip_list=<this file>; lines starting with # are ignored",
        ]
        if self.bad:
            lines.append("# bad files (cannot be decoded as used for training)")
            lines.extend(str(item.file.path) for item in self.bad)
        copies = [p for p in self.skip_paths() if p not in {b.file.path for b in self.bad}]
        if copies:
            lines.append(
                "# duplicate copies (all copies when their classes disagree, else all "
                "but the first: train before val before test)"
            )
            lines.extend(str(p) for p in copies)
        skip = out / "bad_files.txt"
        atomic_write(skip, "\n".join(lines) + "\n", durable=False)
        return report, skip


LEFT_OUT = {"hidden": "hidden files and folders", "links": "links"}


def _index(
    root: Path, links: LinkPolicy
) -> tuple[str, list[str], dict[str, FolderIndex], list[str]]:
    """(layout, classes, split -> FolderIndex, problems) via the loaders' own scanners."""
    dirs = _split_dirs(root)
    problems: list[str] = []
    if not dirs:
        return "single", find_classes(root), {"all": scan_folder(root, links=links)}, problems
    if "train" not in dirs:
        raise DataError(f"{root}: has {sorted(dirs)} split folders but no 'train'")
    classes = find_classes(dirs["train"])
    indexes = {}
    for split, path in dirs.items():
        try:
            indexes[split] = scan_folder(path, classes, links, within=root)
        except DataError as exc:  # one broken split must not hide what the others hold
            problems.append(str(exc))
    return "folders", classes, indexes, problems


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Checked = tuple[str | None, BadFile | None, tuple[int, int] | None]


def _check(file: FileRef, min_size: int, perceptual: bool) -> Checked:
    """(content hash or None, the reason the file is bad or None, perceptual hashes or None)."""
    try:
        digest = _digest(file.path)
    except OSError as exc:
        bad = BadFile(file, "unreadable", f"{file.path}: cannot read ({exc.strerror})")
        return None, bad, None
    try:
        image = load_rgb(file.path, min_size)
    except ImageError as exc:
        return digest, BadFile(file, exc.kind, str(exc)), None
    except DataError as exc:
        return digest, BadFile(file, "unreadable", str(exc)), None
    return digest, None, perceptual_hashes(image) if perceptual else None


def _groups(hashes: Iterable[tuple[FileRef, str]]) -> list[DuplicateGroup]:
    by_digest: dict[str, list[FileRef]] = defaultdict(list)
    for file, digest in hashes:
        by_digest[digest].append(file)
    return [DuplicateGroup(d, files) for d, files in sorted(by_digest.items()) if len(files) > 1]


def _near_duplicates(
    found: list[tuple[FileRef, str, tuple[int, int]]], threshold: int
) -> list[NearDuplicate]:
    """Near pairs with different bytes (byte copies are already duplicate groups)."""
    pairs = near_pairs([h[0] for _, _, h in found], [h[1] for _, _, h in found], threshold)
    return [
        NearDuplicate(found[p.first][0], found[p.second][0], p.phash_distance, p.dhash_distance)
        for p in pairs
        if found[p.first][1] != found[p.second][1]
    ]


def verify_dataset(
    root: str | Path,
    min_size: int = 1,
    workers: int | None = None,
    progress: bool = True,
    data: DataConfig | None = None,
    near_dup_threshold: int | None = DEFAULT_THRESHOLD,
) -> VerifyReport:
    """Check every image under ``root`` (single-folder or train/val/test layout).

    ``data``: the data settings training will use (split fractions and seed, link policy;
    defaults as in a new config). Every check training makes on the dataset's structure runs
    here too, so a dataset that verifies is one that training accepts.
    ``near_dup_threshold``: the Hamming distance (0-64) within which two pictures count as
    near-duplicates; None skips the search.

    Raises DataError only when ``root`` is not a dataset at all (missing, no class folders,
    split folders without train); everything else is reported.
    """
    root = Path(root).resolve()  # absolute, so bad_files.txt works from any directory
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    data = data or DataConfig()
    layout, classes, indexes, problems = _index(root, data.links)
    try:  # the structural checks training makes (class count, empty splits, shared files)
        resolve_splits(root, data.val_fraction, data.test_fraction, data.split_seed, data.links)
    except DataError as exc:
        message = str(exc)
        if message not in problems:
            problems.append(f"training refuses this dataset: {message}")
    files = [
        FileRef(path, split, classes[label])
        for split, index in indexes.items()
        for path, label in index.samples
    ]
    tally = Counter((f.split, f.label) for f in files)
    counts = {split: {name: tally[split, name] for name in classes} for split in indexes}
    report = VerifyReport(
        root,
        layout,
        classes,
        min_size,
        counts,
        scanned=len(files),
        ignored=[p for index in indexes.values() for p in index.ignored],
        left_out={
            reason: [p for index in indexes.values() for p in index.skipped()[reason]]
            for reason in LEFT_OUT
        },
        problems=problems,
        near_dup_threshold=near_dup_threshold,
    )
    perceptual = near_dup_threshold is not None
    workers = workers or min(8, os.cpu_count() or 1)
    hashes: list[tuple[FileRef, str]] = []
    pictures: list[tuple[FileRef, str, tuple[int, int]]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda f: _check(f, min_size, perceptual), files)
        bar = tqdm(
            zip(files, results, strict=True),
            total=len(files),
            desc="verify",
            unit="img",
            disable=None if progress else True,
        )
        for file, (digest, bad, picture) in bar:
            if bad is not None:
                report.bad.append(bad)
            elif digest is not None:  # bad files are listed once, not also as duplicates
                hashes.append((file, digest))
                if picture is not None:
                    pictures.append((file, digest, picture))
    report.duplicates = _groups(hashes)
    if near_dup_threshold is not None:
        report.near_duplicates = _near_duplicates(pictures, near_dup_threshold)
    log.info(
        "verified %s: %d images, %d bad, %d duplicate groups, %d near-duplicate pairs, %d problems",
        root,
        len(files),
        len(report.bad),
        len(report.duplicates),
        len(report.near_duplicates),
        len(problems),
    )
    return report
