"""Near-duplicates: resized, re-encoded and slightly cropped copies of real photos are found
across splits and classes; distinct photos are not paired."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.datasets.near_duplicates import near_pairs
from imagefit.datasets.verify import verify_dataset

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"

pytestmark = pytest.mark.skipif(not FLOWERS.is_dir(), reason="needs the flowers photos")


def _photos(name: str, count: int) -> list[Path]:
    return sorted((FLOWERS / name).iterdir())[:count]


def _copy(src: Path, dst: Path, scale: float = 1.0, crop: float = 0.0, fmt: str = "JPEG") -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        image = image.convert("RGB")
        w, h = image.size
        dx, dy = int(w * crop), int(h * crop)
        image = image.crop((dx, dy, w - dx, h - dy))
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        image.save(dst, fmt, **({"quality": 60} if fmt == "JPEG" else {}))


@pytest.fixture
def leaky(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """train/test folders of distinct photos plus three disguised copies across the split."""
    root = tmp_path / "leaky"
    for name in ("daisy", "roses"):
        for i, src in enumerate(_photos(name, 8)):
            folder = root / ("train" if i < 6 else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / src.name)
    daisy, roses = _photos("daisy", 3), _photos("roses", 2)
    planted = {
        # half size, JPEG quality 60, in the test split
        f"test/daisy/{daisy[0].stem}_small.jpg": f"train/daisy/{daisy[0].name}",
        # a PNG re-encode at 70%, filed under another class of the test split
        f"test/roses/{daisy[1].stem}_copy.png": f"train/daisy/{daisy[1].name}",
        # 2% cropped off each side, in the test split
        f"test/roses/{roses[1].stem}_crop.jpg": f"train/roses/{roses[1].name}",
    }
    _copy(daisy[0], root / "test/daisy" / f"{daisy[0].stem}_small.jpg", scale=0.5)
    _copy(daisy[1], root / "test/roses" / f"{daisy[1].stem}_copy.png", scale=0.7, fmt="PNG")
    _copy(roses[1], root / "test/roses" / f"{roses[1].stem}_crop.jpg", crop=0.02)
    return root, planted


def test_verify_finds_disguised_copies_and_not_distinct_photos(leaky) -> None:
    root, planted = leaky
    report = verify_dataset(root, progress=False)
    found = {
        frozenset(f.path.relative_to(root.resolve()).as_posix() for f in (n.first, n.second))
        for n in report.near_duplicates
    }
    assert found == {frozenset(pair) for pair in planted.items()}
    kinds = {tuple(n.kinds) for n in report.near_duplicates}
    assert ("cross_class", "cross_split") in kinds and ("cross_split",) in kinds
    assert report.ok  # near-duplicates warn; they are not errors
    assert any("near-duplicate pairs" in w for w in report.warnings())


def test_cli_threshold_and_verify_json(leaky, tmp_path: Path) -> None:
    root, planted = leaky
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["data", "verify", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "near-duplicate" in result.output
    data = json.loads((out / "verify.json").read_text())
    assert data["near_dup_threshold"] == 8 and len(data["near_duplicates"]) == len(planted)
    result = CliRunner().invoke(
        app, ["data", "verify", str(root), "--out", str(out), "--near-dup-threshold", "-1"]
    )
    assert result.exit_code == 0
    assert json.loads((out / "verify.json").read_text())["near_duplicates"] == []


def test_near_pairs_compares_every_pair_once() -> None:
    hashes = [0, 0b111, 2**64 - 1, 0b1]
    pairs = near_pairs(hashes, hashes, threshold=3)
    assert [(p.first, p.second, p.phash_distance) for p in pairs] == [
        (0, 1, 3),
        (0, 3, 1),
        (1, 3, 2),
    ]
