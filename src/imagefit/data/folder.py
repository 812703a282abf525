"""Scanning an ImageFolder tree: ``root/<class>/<image>``, classes indexed by sorted name.

The class order is torchvision's (``sorted`` folder names, files found recursively), so an
imagefit checkpoint and a torchvision ``ImageFolder`` agree on every label.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagefit.data.images import is_image_file
from imagefit.errors import DataError

log = logging.getLogger(__name__)

Sample = tuple[Path, int]  # (image file, class index)


@dataclass
class FolderIndex:
    """What one ImageFolder tree holds."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)  # files without an image extension


def find_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    return classes


def scan_folder(root: str | Path, classes: list[str] | None = None) -> FolderIndex:
    """List the images of ``root/<class>/**``; ``classes`` fixes the index (e.g. from train).

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
    samples: list[Sample] = []
    ignored: list[Path] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue  # a split may lack a class; the caller decides whether that matters
        files = sorted(
            Path(dirpath) / filename
            for dirpath, _, filenames in os.walk(class_dir, followlinks=True)
            for filename in filenames
        )
        images = [f for f in files if is_image_file(f)]
        ignored.extend(f for f in files if not is_image_file(f))
        if not images:
            raise DataError(f"{class_dir}: class folder has no image files")
        samples.extend((f, label) for f in images)
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:5])
        log.warning(
            "%s: ignored %d non-image files (%s%s)",
            root,
            len(ignored),
            shown,
            ", ..." if len(ignored) > 5 else "",
        )
    return FolderIndex(root=root, classes=list(classes), samples=samples, ignored=ignored)
