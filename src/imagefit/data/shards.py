"""WebDataset tar shards of a dataset's splits, and the index that describes them.

``write_shards(manifest, out)`` writes each split as ``OUT/<split>-NNNNNN.tar`` with the
``webdataset`` library's ``ShardWriter`` (plain tar files any WebDataset reader can stream:
``<key>.<ext>`` holds the image file's bytes as they were, ``<key>.cls`` the class index,
``<key>.json`` the source path and label), then ``OUT/index.json`` and ``OUT/split.json``
(the manifest the shards were cut from, so a run trained from shards records the same
files in its ``split.json``). The index holds what streaming cannot learn without reading
every shard: the class names, each shard's sample count and each split's class counts.

Shards and index are read through ``fsspec``, so ``data.shards`` may be a local folder or any
URL fsspec knows (``file://``, ``s3://``, ``gs://``, ``https://`` ...).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from imagefit.data.images import load_rgb
from imagefit.data.splits import SplitManifest
from imagefit.errors import DataError, ImageError
from imagefit.fileio import write_json
from imagefit.runs.layout import SPLIT

log = logging.getLogger(__name__)

INDEX = "index.json"  # beside the shards: classes, splits, shard names and counts
FORMAT = "imagefit-shards"
SHARD_PATTERN = "{split}-%06d.tar"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9 bytes (KB/MB/GB/TB decimal, KiB/MiB/GiB binary, a bare number: bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise DataError(f"--shard-size {text!r}: expected a size such as 500MB, 1GB or 2GiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise DataError(f"--shard-size {text!r}: must be at least one byte")
    return size


@dataclass(frozen=True)
class ShardEntry:
    """One tar file of a split: where it is and how many samples it holds."""

    url: str
    count: int


@dataclass
class ShardIndex:
    """``index.json`` as read from ``base`` (a folder or URL)."""

    base: str
    classes: list[str]
    splits: dict[str, list[ShardEntry]]
    class_counts: dict[str, list[int]]
    source: str
    manifest: str | None  # the split.json beside the shards, if written

    def count(self, split: str) -> int:
        return sum(entry.count for entry in self.splits.get(split, []))


def join_url(base: str, name: str) -> str:
    """``name`` inside the folder or URL ``base`` (fsspec URLs use ``/`` everywhere)."""
    return posixpath.join(base.rstrip("/"), name) if "://" in base else str(Path(base) / name)


def read_text(url: str) -> str:
    """A small text file by path or fsspec URL; DataError naming it when it cannot be read."""
    import fsspec

    try:
        with fsspec.open(url, "rt", encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{url}: cannot read ({type(exc).__name__}: {exc})") from None


def read_index(base: str) -> ShardIndex:
    """Read ``base/index.json`` (``base``: a folder or URL of shards written by write_shards)."""
    url = join_url(base, INDEX)
    try:
        raw = json.loads(read_text(url))
    except ValueError as exc:
        raise DataError(f"{url}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(
            f"{url}: not an imagefit shard index (write one with `imagefit data shards`)"
        )
    try:
        splits = {
            name: [ShardEntry(join_url(base, s["name"]), int(s["count"])) for s in split["shards"]]
            for name, split in raw["splits"].items()
        }
        counts = {name: list(split["class_counts"]) for name, split in raw["splits"].items()}
        classes = list(raw["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{url}: shard index is missing or mistypes {exc}") from None
    if "train" not in splits:
        raise DataError(f"{url}: the shard index has no 'train' split")
    manifest = join_url(base, raw["manifest"]) if raw.get("manifest") else None
    return ShardIndex(base, classes, splits, counts, str(raw.get("source", "")), manifest)


def index_manifest(index: ShardIndex) -> SplitManifest | None:
    """The split.json the shards were cut from (paths under the original root), or None."""
    if index.manifest is None:
        return None
    raw = read_text(index.manifest)
    try:
        return SplitManifest.from_json_text(raw, None)
    except DataError as exc:
        raise DataError(f"{index.manifest}: {exc}") from None


def _extension(path: Path) -> str:
    # WebDataset splits a member name at its first dot: the key may not contain one.
    return path.suffix.lower().lstrip(".") or "img"


def write_shards(
    manifest: SplitManifest,
    out: str | Path,
    shard_size: int = 10**9,
    max_count: int = 100_000,
    min_size: int = 1,
    skip_bad: bool = False,
) -> dict:
    """Write every split of ``manifest`` as tar shards under ``out``; return the index.

    Each image is decoded once here (and the shards hold the original bytes), so a bad file is
    refused or, with ``skip_bad``, left out now: a stream cannot skip a sample without
    changing the epoch's length that every process has agreed on.
    """
    import webdataset as wds

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict] = {}
    kept_splits: dict[str, list] = {}
    for split, items in manifest.splits.items():
        counts: dict[str, int] = {}
        class_counts = [0] * len(manifest.classes)
        kept = []
        pattern = str(out / SHARD_PATTERN.format(split=split))
        with wds.ShardWriter(pattern, maxsize=shard_size, maxcount=max_count, verbose=0) as sink:
            for position, (path, label) in enumerate(items):
                data = path.read_bytes()
                try:
                    load_rgb(io.BytesIO(data), min_size, name=str(path))
                except ImageError:
                    if not skip_bad:
                        raise
                    log.warning("left out of the shards: bad image %s", path)
                    continue
                relative = path.relative_to(manifest.root).as_posix()
                sink.write(
                    {
                        "__key__": f"{position:09d}",
                        _extension(path): data,
                        "cls": label,
                        "json": {"path": relative, "label": label},
                    }
                )
                name = Path(sink.fname).name
                counts[name] = counts.get(name, 0) + 1
                class_counts[label] += 1
                kept.append((path, label))
        kept_splits[split] = kept
        splits[split] = {
            "count": sum(counts.values()),
            "class_counts": class_counts,
            "shards": [{"name": name, "count": count} for name, count in counts.items()],
        }
        log.info("%s: %d images in %d shards", split, splits[split]["count"], len(counts))
    written = SplitManifest(
        manifest.root,
        manifest.classes,
        kept_splits,
        manifest.layout,
        manifest.seed,
        manifest.fractions,
    )
    written.save(out / SPLIT)
    index = {
        "format": FORMAT,
        "version": 1,
        "source": str(manifest.root),
        "layout": manifest.layout,
        "seed": manifest.seed,
        "fractions": manifest.fractions,
        "classes": manifest.classes,
        "manifest": SPLIT,
        "splits": splits,
    }
    write_json(out / INDEX, index)
    return index
