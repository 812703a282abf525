"""Label files: one row per image (its path, its label, optionally its split) as CSV, JSON
Lines or Parquet, instead of one folder per class.

A label file becomes the same samples a folder scan gives (``root / path``, class index by
sorted label name, the same sample order), so the split, the cache and everything downstream
cannot tell the two apart: the same images as folders or as a file train identically.

Every row is checked before anything is decoded, because a wrong row found later is a wrong
label nobody sees: a missing file, an empty label, a path listed twice, a path that leaves
``data.root``, a split that is not train/val/test, a val/test label that train never shows.
Each is an error naming ``file:line`` (the line a text editor shows; Parquet: the row), or,
with ``data.on_bad: skip``, a counted skip listed with the other skipped files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from imagefit.data.folder import LinkPolicy, Sample
from imagefit.data.images import is_image_file
from imagefit.data.multilabel import MAX_CLASSES, encode
from imagefit.data.splits import SPLIT_ALIASES
from imagefit.errors import DataError
from imagefit.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    read: Callable[[Path], pd.DataFrame]
    first_line: int  # the line (row) number of the first record: CSV has a header line
    unit: str  # "line" for text files, "row" for Parquet


def _read_csv(path: Path) -> pd.DataFrame:
    # Every cell as text, and an empty cell as "" (not NaN): labels such as "NA" or "1" are
    # class names, not missing values or numbers.
    return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


FORMATS: Registry[Format] = Registry("label file format")
FORMATS.add(".csv", Format(_read_csv, 2, "line"))
FORMATS.add(".jsonl", Format(_read_jsonl, 1, "line"))
FORMATS.add(".parquet", Format(_read_parquet, 1, "row"))

SPLIT_NAMES = {alias: split for split, aliases in SPLIT_ALIASES.items() for alias in aliases}


@dataclass
class LabelTable:
    """What a label file says: classes, samples, each sample's split when the file gives it."""

    file: Path
    classes: list[str]
    samples: list[Sample]
    splits: dict[str, list[Sample]] | None  # None: the file has no split column
    skipped: dict[str, str] = field(default_factory=dict)  # path (or file:line) -> why


@dataclass
class _Row:
    where: str  # file:line
    path: Path
    labels: tuple[str, ...]  # one label; a multi-label row: its labels, sorted
    split: str | None


def read_table(path: Path) -> tuple[pd.DataFrame, Format]:
    """The label file's rows as text cells, and its format."""
    if not path.is_file():
        raise DataError(f"data.labels: file not found: {path}")
    fmt = FORMATS.get(path.suffix.lower(), key="data.labels (file extension)")
    try:
        frame = fmt.read(path)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{path}: cannot read the label file ({exc})") from None
    return frame, fmt


def read_label_file(
    path: str | Path,
    root: str | Path,
    *,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str = "split",
    on_bad: str = "error",
    links: LinkPolicy = "inside",
    label_sep: str | None = None,
) -> LabelTable:
    """Read and check ``path``; image paths are relative to ``root`` (or absolute inside it).

    ``label_sep``: the labels of a row are a multi-label set separated by it; each sample's
    label is then the bit set of its classes (:mod:`imagefit.data.multilabel`)."""
    path, root = Path(path), Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder not found: {root}")
    frame, fmt = read_table(path)
    missing = [c for c in (path_column, label_column) if c not in frame.columns]
    if missing:
        keys = {path_column: "data.path_column", label_column: "data.label_column"}
        named = ", ".join(f"'{c}' ({keys[c]})" for c in missing)
        raise DataError(
            f"{path}: no column {named}; the file has columns {list(map(str, frame.columns))}"
        )
    has_split = split_column in frame.columns
    problems: dict[str, str] = {}  # where -> what is wrong (in file order)
    rows: list[_Row] = []
    seen: dict[Path, str] = {}
    checker = _PathCheck(root, links)
    for number, values in enumerate(frame.to_dict("records")):
        line = fmt.first_line + number
        where = f"{path}:{line}" if fmt.unit == "line" else f"{path} row {line}"
        row, problem = _row(
            values, where, path_column, label_column, split_column, has_split, label_sep
        )
        if row is not None:
            problem = checker.check(row.path)
            if problem is None:
                row.path = checker.sample_path(row.path)
                if row.path in seen:
                    problem = f"{row.path} is listed twice (also at {seen[row.path]})"
        if problem is not None:
            problems[where] = problem
            continue
        assert row is not None
        seen[row.path] = where
        rows.append(row)
    rows = _drop_unlearnable(rows, problems)
    if problems:
        if on_bad != "skip":
            first = next(iter(problems))
            more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
            raise DataError(
                f"{first}: {problems[first]}{more}; fix the file or set data.on_bad=skip"
            )
        log.warning("%s: skipped %d bad rows", path, len(problems))
    if not rows:
        raise DataError(f"{path}: no usable rows")
    skipped = {w: f"{w}: {why}" for w, why in problems.items()}
    return _table(path, rows, has_split, skipped, multilabel=label_sep is not None)


def _text(value: object) -> str:
    """A cell as stripped text; missing cells (NaN/None in JSON Lines, Parquet) are empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def _row(
    values: dict,
    where: str,
    path_column: str,
    label_column: str,
    split_column: str,
    has_split: bool,
    label_sep: str | None,
) -> tuple[_Row | None, str | None]:
    raw_path = _text(values[path_column])
    if not raw_path:
        return None, f"empty path ('{path_column}')"
    label = _text(values[label_column])
    if not label:
        return None, f"{raw_path}: empty label ('{label_column}')"
    labels: tuple[str, ...] = (label,)
    if label_sep is not None:
        parts = [part.strip() for part in label.split(label_sep)]
        if not all(parts):
            return None, f"{raw_path}: empty label in {label!r} (data.label_sep={label_sep!r})"
        labels = tuple(sorted(set(parts)))
    split = None
    if has_split:
        named = _text(values[split_column])
        split = SPLIT_NAMES.get(named.lower())
        if split is None:
            return None, (
                f"{raw_path}: split {named!r} ('{split_column}') is not one of train, val, test"
            )
    return _Row(where, Path(raw_path), labels, split), None


class _PathCheck:
    """Resolves a row's path against the root and says what is wrong with it, if anything."""

    def __init__(self, root: Path, links: LinkPolicy):
        self.root = Path(os.path.normpath(root.absolute()))
        self.root_real = root.resolve()
        self.links = links
        self.original = root

    def check(self, given: Path) -> str | None:
        absolute = given if given.is_absolute() else self.root / given
        lexical = Path(os.path.normpath(absolute))
        if lexical != self.root and self.root not in lexical.parents:
            return f"{given} is outside data.root ({self.original})"
        if not lexical.is_file():
            return f"{given}: file not found" + ("" if lexical.exists() else f" ({lexical})")
        if not is_image_file(lexical):
            return f"{given}: not an image file name"
        if self.links != "follow":
            real = lexical.resolve()
            if self.root_real not in real.parents:
                return (
                    f"{given} is a link out of data.root, to {real} (set data.links=follow "
                    "to read it)"
                )
        return None

    def sample_path(self, given: Path) -> Path:
        """The path a folder scan of the root would give for this file."""
        absolute = given if given.is_absolute() else self.root / given
        relative = Path(os.path.normpath(absolute)).relative_to(self.root)
        return self.original / relative


def _drop_unlearnable(rows: list[_Row], problems: dict[str, str]) -> list[_Row]:
    """Rows whose label the train split never shows: nothing could learn it, so a val/test
    score on it would measure nothing."""
    if not any(row.split for row in rows):
        return rows
    taught = {label for row in rows if row.split == "train" for label in row.labels}
    kept = []
    for row in rows:
        unknown = [label for label in row.labels if label not in taught]
        if not unknown:
            kept.append(row)
        else:
            problems[row.where] = (
                f"{row.path}: label {unknown[0]!r} ({row.split}) has no train rows; a class "
                "nothing is trained on is unknown to the model"
            )
    return kept


def _table(
    path: Path, rows: list[_Row], has_split: bool, skipped: dict[str, str], multilabel: bool
) -> LabelTable:
    # as folders: the class index by sorted name
    classes = sorted({label for row in rows for label in row.labels})
    index = {name: i for i, name in enumerate(classes)}
    if multilabel and len(classes) > MAX_CLASSES:
        raise DataError(
            f"{path}: {len(classes)} classes; multi-label training takes at most {MAX_CLASSES}"
        )

    def target(row: _Row) -> int:
        if multilabel:
            return encode(index[label] for label in row.labels)
        return index[row.labels[0]]

    samples = sorted(((row.path, target(row)) for row in rows), key=_order)
    if not has_split:
        return LabelTable(path, classes, samples, None, skipped)
    splits: dict[str, list[Sample]] = {}
    for row in rows:
        assert row.split is not None
        splits.setdefault(row.split, []).append((row.path, target(row)))
    for items in splits.values():
        items.sort(key=_order)
    return LabelTable(path, classes, samples, splits, skipped)


def _order(sample: Sample) -> tuple[int, str]:
    # The order of a folder scan (by class, then path), so a stratified split with the same
    # seed picks the same files from a label file as from the folders.
    return sample[1], str(sample[0])
