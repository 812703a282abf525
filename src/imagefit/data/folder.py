"""Scanning an ImageFolder tree: ``root/<class>/<image>``, classes indexed by sorted name.

The class order is torchvision's (``sorted`` folder names, files found recursively), so an
imagefit checkpoint and a torchvision ``ImageFolder`` agree on every label.

What a scan never does (each is a wrong label or a leak that no error would show later):

- count one file twice, or give it two labels: a file reached through several paths (a link
  to it, a linked folder, a link loop such as ``class_a/loop -> ..``) is counted once, under
  the path that does not go through a link when there is one; links that would give one file
  two labels are skipped, and so are loops;
- leave the root through a link, unless ``links="follow"`` asks for it (``"skip"`` ignores
  every link);
- read hidden entries: dot-files and dot-folders (``.ipynb_checkpoints``, ``.git``, editor
  backups) are not data.

Whatever it leaves out is listed on the :class:`FolderIndex` and logged, one line per kind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imagefit.data.images import is_image_file
from imagefit.errors import DataError

log = logging.getLogger(__name__)

Sample = tuple[Path, int]  # (image file, class index)
LinkPolicy = Literal["inside", "follow", "skip"]
LINK_POLICIES: tuple[LinkPolicy, ...] = ("inside", "follow", "skip")


@dataclass
class FolderIndex:
    """What one ImageFolder tree holds, and what the scan left out (with why)."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)  # files without an image extension
    hidden: list[Path] = field(default_factory=list)  # dot-files and dot-folders
    links: dict[str, str] = field(default_factory=dict)  # skipped link path -> why

    def skipped(self) -> dict[str, list[str]]:
        """Everything left out, by reason, for reports (``verify.json``, logs)."""
        return {
            "hidden": [str(p) for p in self.hidden],
            "links": [f"{path}: {why}" for path, why in self.links.items()],
            "not_images": [str(p) for p in self.ignored],
        }


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_classes(root: Path) -> list[str]:
    """The sorted names of ``root``'s class folders (hidden folders are not classes)."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not is_hidden(entry.name)
    )
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    return classes


class _Walk:
    """One scan's state: the real files and folders seen so far, and what was left out."""

    def __init__(self, root: Path, links: LinkPolicy, within: Path):
        if links not in LINK_POLICIES:
            raise DataError(f"data.links={links!r}: choose one of {', '.join(LINK_POLICIES)}")
        self.root_real = root.resolve()
        self.within = within.resolve()  # links may not leave this folder (data.links=inside)
        self.policy = links
        # (device, inode) -> (path, label, through a link): one entry per file, hard links too
        self.owner: dict[tuple[int, int], tuple[Path, int, bool]] = {}
        self.hidden: list[Path] = []
        self.ignored: list[Path] = []
        self.links: dict[str, str] = {}

    def _inside(self, real: Path) -> bool:
        return real == self.within or self.within in real.parents

    def _allowed_link(self, path: Path) -> Path | None:
        """The link's real target when the policy lets the scan through it, else None."""
        if self.policy == "skip":
            self.links[str(path)] = "links are skipped (data.links=skip)"
            return None
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop of links
            self.links[str(path)] = "broken link"
            return None
        if self.policy == "inside" and not self._inside(real):
            self.links[str(path)] = f"points out of the dataset root, to {real} (data.links=follow)"
            return None
        return real

    def walk(self, folder: Path, label: int, via_link: bool, seen: frozenset[Path]) -> None:
        """Add the images under ``folder``; ``seen``: the real folders on the way down."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{folder}: cannot list the folder ({exc.strerror})") from None
        for entry in entries:
            path = Path(entry.path)
            if is_hidden(entry.name):
                self.hidden.append(path)
                continue
            linked = entry.is_symlink()
            real = self._allowed_link(path) if linked else path.resolve()
            if real is None:
                continue
            if real.is_dir():
                if real in seen:
                    self.links[str(path)] = "a loop: the folder contains itself"
                    continue
                self.walk(path, label, via_link or linked, seen | {real})
            elif is_image_file(path):
                self._add(path, real, label, via_link or linked)
            else:
                self.ignored.append(path)

    def _add(self, path: Path, real: Path, label: int, via_link: bool) -> None:
        stat = real.stat()
        key = (stat.st_dev, stat.st_ino)
        if key not in self.owner:
            self.owner[key] = (path, label, via_link)
            return
        first, first_label, first_via_link = self.owner[key]
        if first_label != label and via_link == first_via_link:
            raise DataError(
                f"{path} and {first} are the same file ({real}) in two classes; a file can "
                "have one label: remove one of them"
            )
        if first_via_link and not via_link:  # the file's own place wins over a link to it
            self.owner[key] = (path, label, via_link)
            path, first = first, path
        self.links[str(path)] = f"the same file as {first}"

    def samples(self) -> list[Sample]:
        return sorted(((path, label) for path, label, _ in self.owner.values()), key=_order)


def _order(sample: Sample) -> tuple[int, str]:
    return sample[1], str(sample[0])


def scan_folder(
    root: str | Path,
    classes: list[str] | None = None,
    links: LinkPolicy = "inside",
    within: str | Path | None = None,
) -> FolderIndex:
    """List the images of ``root/<class>/**``; ``classes`` fixes the index (e.g. from train).

    ``within``: the folder links may not leave (default ``root``; a split folder's dataset).

    Raises DataError for a missing root, an empty class folder, or (with ``classes`` given) a
    class folder that the reference class list lacks: either would shift or invent labels.
    """
    root = Path(root)
    found = find_classes(root)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not among the classes {classes}")
    walk = _Walk(root, links, Path(within) if within is not None else root)
    walk.hidden.extend(Path(e.path) for e in os.scandir(root) if is_hidden(e.name))
    # The root is "seen" from the start: a link back to it (or above) is a loop, never a
    # second pass over the classes under the wrong label.
    top = frozenset({walk.root_real})
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue  # a split may lack a class; the caller decides whether that matters
        if class_dir.is_symlink() and walk._allowed_link(class_dir) is None:
            raise DataError(
                f"{class_dir}: class folder is a link that {walk.links[str(class_dir)]}"
            )
        walk.walk(class_dir, label, class_dir.is_symlink(), top | {class_dir.resolve()})
    samples = walk.samples()
    present = {label for _, label in samples}
    for label, name in enumerate(classes):
        if (root / name).is_dir() and label not in present:
            raise DataError(f"{root / name}: class folder has no image files")
    index = FolderIndex(root, list(classes), samples, walk.ignored, walk.hidden, walk.links)
    _log_left_out(index)
    return index


_LEFT_OUT = {
    "hidden": "ignored %d hidden files and folders (dot-names are not data)",
    "links": "skipped %d links",
    "not_images": "ignored %d non-image files",
}


def _log_left_out(index: FolderIndex) -> None:
    for reason, paths in index.skipped().items():
        if paths:
            shown = "; ".join(paths[:3]) + ("; ..." if len(paths) > 3 else "")
            log.warning("%s: " + _LEFT_OUT[reason] + " (%s)", index.root, len(paths), shown)
