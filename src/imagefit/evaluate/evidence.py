"""What a run folder holds beyond its records, gathered for the report: how sure its test
accuracy is, how well calibrated its probabilities are, which mistakes it makes, and whether
its test split is still held out.

Everything is read from files the post-run steps wrote (``test_predictions.npz``,
``calibration.json``, ``gallery/gallery.json``, ``ledger.json``): a report never evaluates a
model, so writing one does not count as a look at the test split. What is absent stays None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefit.errors import ImagefitError
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import read_json

log = logging.getLogger(__name__)


@dataclass
class AccuracyInterval:
    """Test accuracy from the stored per-image predictions, with its bootstrap interval."""

    accuracy: float
    low: float
    high: float
    images: int
    level: float


@dataclass
class LedgerNote:
    """How often the test split was evaluated, and which of its files changed since training."""

    evaluations: int
    changed: list[str] = field(default_factory=list)  # changed or unreadable now
    checked: bool = False  # False: no recorded hashes or no split.json to compare with
    problem: str | None = None  # why the files could not be checked


@dataclass
class RunEvidence:
    interval: AccuracyInterval | None = None
    calibration: dict[str, Any] | None = None
    gallery: dict[str, Any] | None = None
    gallery_dir: Path | None = None
    ledger: LedgerNote | None = None


def accuracy_interval(run_dir: Path) -> AccuracyInterval | None:
    """Bootstrap interval of the test accuracy from ``test_predictions.npz`` (None without)."""
    from imagefit.evaluate.compare import LEVEL, bootstrap_interval
    from imagefit.evaluate.predictions import SplitPredictions

    path = RunLayout(run_dir).test_predictions
    if not path.is_file():
        return None
    try:
        predictions = SplitPredictions.load(path)
        correct = predictions.correct.astype(float)
        low, high = bootstrap_interval(correct)
    except ImagefitError as exc:
        log.warning("%s: no accuracy interval (%s)", path, exc)
        return None
    return AccuracyInterval(float(correct.mean()), low, high, len(correct), LEVEL)


def ledger_note(run_dir: Path) -> LedgerNote | None:
    """The ledger's test-evaluation count and the test files changed since the run trained.

    Comparing hashes of the test files now; the image cache's hash index makes this a stat
    per file for files hashed before.
    """
    from imagefit.data.splits import SplitManifest
    from imagefit.evaluate.ledger import read_ledger, split_changes

    run = RunLayout(run_dir)
    if not run.ledger.is_file():
        return None
    ledger = read_ledger(run.root)
    note = LedgerNote(evaluations=len(ledger.get("test_evaluations", [])))
    if not ledger.get("split_sha256", {}).get("test") or not run.split.is_file():
        return note
    try:
        changes = split_changes(run.root, SplitManifest.load(run.split), "test")
    except (ImagefitError, OSError) as exc:
        note.problem = str(exc)
        return note
    note.checked = changes.recorded
    note.changed = changes.changed + changes.missing
    return note


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_SHOWN = ("ece", "nll", "ece_calibrated", "nll_calibrated")


def read_calibration(run_dir: Path) -> dict[str, Any] | None:
    """``calibration.json`` when it has what the report shows: the temperature and, for the
    test (else val) split, ECE and NLL before and after (None otherwise, warned)."""
    path = RunLayout(run_dir).calibration
    data = read_json(path)
    if data is None:
        return None
    shown = (data.get("test") or data.get("val")) if isinstance(data, dict) else None
    if (
        not isinstance(shown, dict)
        or not _number(data.get("temperature"))
        or not all(_number(shown.get(k)) for k in _SHOWN)
    ):
        log.warning("%s: not a calibration record; left out of the report", path)
        return None
    return data


def read_evidence(run_dir: str | Path) -> RunEvidence:
    """Everything above for one run folder; what is not there is None."""
    run = RunLayout(Path(run_dir))
    gallery_dir = run.gallery
    gallery = read_json(gallery_dir / layout.GALLERY_JSON)
    return RunEvidence(
        interval=accuracy_interval(run.root),
        calibration=read_calibration(run.root),
        gallery=gallery if isinstance(gallery, dict) else None,
        gallery_dir=gallery_dir,
        ledger=ledger_note(run.root),
    )


def _baseline_row(row: Any) -> bool:
    """A row of :func:`imagefit.evaluate.compare.variants_vs_baseline` (the baseline's own
    row has no interval)."""
    if not isinstance(row, dict) or not _number(row.get("accuracy")):
        return False
    if "interval" not in row:
        return True
    interval = row["interval"]
    return (
        _number(row.get("difference"))
        and isinstance(interval, list)
        and len(interval) == 2
        and all(_number(v) for v in interval)
    )


def read_vs_baseline(sweep_dir: Path) -> list[dict[str, Any]] | None:
    """The rows of ``vs_baseline.json`` in ``sweep_dir`` (None when absent or unreadable)."""
    path = Path(sweep_dir) / layout.VS_BASELINE
    rows = read_json(path)
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(_baseline_row(r) for r in rows):
        log.warning("%s: not a comparison with the baseline; left out of the report", path)
        return None
    return rows
