"""The label audit finds planted label flips among real photos."""

import csv
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"

pytestmark = pytest.mark.skipif(not FLOWERS.is_dir(), reason="needs the flowers photos")


def _small_flowers(root: Path, classes: tuple[str, ...], count: int) -> None:
    for name in classes:
        (root / name).mkdir(parents=True)
        for src in sorted((FLOWERS / name).iterdir())[:count]:
            with Image.open(src) as image:
                image = image.convert("RGB")
                image.thumbnail((64, 64))
                image.save(root / name / src.name, quality=90)


def test_audit_ranks_planted_label_flips_near_the_top(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    _small_flowers(root, ("dandelion", "roses"), 30)
    planted = set()
    for src in sorted((root / "dandelion").iterdir())[:4]:  # four dandelions filed as roses
        target = root / "roses" / f"filed_wrong_{src.name}"
        src.rename(target)
        planted.add(str(target.resolve()))
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        ["data", "audit", str(root), "--out", str(out), "--folds", "5", "--epochs", "30"],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "suspects.csv").open()))
    assert len(rows) == 60 and [int(r["rank"]) for r in rows] == list(range(1, 61))
    top = [r for r in rows[:12] if r["path"] in planted]
    assert len(top) >= 3, [(r["rank"], r["path"]) for r in rows if r["path"] in planted]
    assert all(r["given"] == "roses" and r["suggested"] == "dandelion" for r in top)
    listed = {
        line
        for line in (out / "label_issues.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert len(listed & planted) >= 3
    assert listed == {r["path"] for r in rows if r["flagged"] == "1"}
    assert (out / "suspects.png").stat().st_size > 10_000
