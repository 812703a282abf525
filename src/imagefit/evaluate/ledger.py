"""The test-split ledger: what a run was tested on, and how often its test split was looked at.

``RUN/ledger.json`` holds the sha256 of every file of the run's splits, recorded when the run
starts (``split_sha256``: split -> relative path -> hex digest), and one entry per evaluation
of the test split (``test_evaluations``: time and what evaluated it). A held-out test split
stays honest only while it is used once; the count shows how often it was not, and the hashes
show when the files behind ``split.json`` were edited, replaced or removed since training, so
that a later ``imagefit eval`` would not measure what the run was tested on.

Hashing reuses :class:`imagefit.data.cache.FileHashes` with the image cache's index, so files
the cache already hashed are only stat-ed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefit.data.cache import HASH_INDEX, FileHashes, default_cache_dir
from imagefit.data.splits import SplitManifest
from imagefit.fileio import write_json
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)


def read_ledger(run_dir: str | Path) -> dict[str, Any]:
    """The run's ledger, or an empty one when it has none (or it is unreadable: warned)."""
    path = RunLayout(Path(run_dir)).ledger
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable ledger (%s); starting a new one", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def split_digests(
    manifest: SplitManifest, splits: Iterable[str] | None = None
) -> dict[str, dict[str, str]]:
    """sha256 (hex) of each file of ``splits`` (default all), keyed by path relative to the root.

    A file that cannot be read gets the digest ``"missing"``.
    """
    names = list(splits) if splits is not None else list(manifest.splits)
    out: dict[str, dict[str, str]] = {}
    with FileHashes(default_cache_dir() / HASH_INDEX) as hashes:
        for name in names:
            digests = {}
            for path, _ in manifest.splits.get(name, []):
                key = path.relative_to(manifest.root).as_posix()
                try:
                    digests[key] = hashes.digest(path).hex()
                except OSError:
                    digests[key] = "missing"
            out[name] = digests
    return out


def record_split(
    run_dir: str | Path, manifest: SplitManifest, splits: Iterable[str] | None = None
) -> None:
    """Write the file hashes of ``splits`` (default all) into the ledger, once: a resumed run
    keeps the first ones."""
    run_dir = Path(run_dir)
    ledger = read_ledger(run_dir)
    if ledger.get("split_sha256"):
        return
    started = time.perf_counter()
    ledger["split_sha256"] = split_digests(manifest, splits)
    ledger.setdefault("test_evaluations", [])
    write_json(RunLayout(run_dir).ledger, ledger)
    log.debug("%s: hashed the split's files in %.2f s", run_dir, time.perf_counter() - started)


@dataclass
class SplitChanges:
    """How the files of one split differ from what the ledger recorded."""

    split: str
    changed: list[str] = field(default_factory=list)  # same path, other content
    missing: list[str] = field(default_factory=list)  # recorded, now unreadable
    recorded: bool = True  # False: the run has no hashes to compare with

    @property
    def any(self) -> bool:
        return bool(self.changed or self.missing)

    def describe(self, shown: int = 3) -> str:
        parts = []
        for what, files in (("changed", self.changed), ("missing", self.missing)):
            if files:
                more = f" and {len(files) - shown} more" if len(files) > shown else ""
                parts.append(f"{len(files)} {what} ({', '.join(files[:shown])}{more})")
        return "; ".join(parts)


def split_changes(run_dir: str | Path, manifest: SplitManifest, split: str) -> SplitChanges:
    """Compare the files of ``split`` now with the hashes the run recorded when it trained."""
    recorded = read_ledger(run_dir).get("split_sha256", {}).get(split)
    if not recorded:
        return SplitChanges(split, recorded=False)
    now = split_digests(manifest, [split])[split]
    result = SplitChanges(split)
    for key, digest in recorded.items():
        current = now.get(key, "missing")
        if current == "missing":
            result.missing.append(key)
        elif current != digest:
            result.changed.append(key)
    return result


def note_test_use(run_dir: str | Path, by: str) -> int:
    """Count one evaluation of the run's test split (``by``: what evaluated it); returns the
    number of evaluations so far, this one included."""
    run_dir = Path(run_dir)
    ledger = read_ledger(run_dir)
    uses = ledger.setdefault("test_evaluations", [])
    uses.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": by})
    write_json(RunLayout(run_dir).ledger, ledger)
    if len(uses) > 1:
        log.info(
            "%s: its test split has now been evaluated %d times; a number chosen after "
            "looking at the test split more than once is no longer a held-out estimate",
            run_dir,
            len(uses),
        )
    return len(uses)


def count_test_uses(run_dir: str | Path) -> int:
    """How many times the run's test split has been evaluated."""
    return len(read_ledger(run_dir).get("test_evaluations", []))
