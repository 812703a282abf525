"""Shared fixtures: tiny real image folders and tiny configs, so every test trains in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefit.config import Config, config_from_dict


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read or write the user's image cache."""
    monkeypatch.setenv("IMAGEFIT_CACHE", str(tmp_path_factory.getbasetemp() / "imagefit-cache"))


def write_pattern_folder(
    root: Path, classes: int = 3, per_class: int = 12, size: int = 16, seed: int = 0
) -> Path:
    """Class k = a bright square in quadrant k on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        for index in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            half = size // 2
            y, x = divmod(label % 4, 2)
            pixels[y * half : (y + 1) * half, x * half : (x + 1) * half, label % 3] = 230
            target = root / f"class_{label}" / f"img_{index:03d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target)
    return root


FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"


def write_photo_folder(
    root: Path, classes: tuple[str, ...] = ("daisy", "roses"), per_class: int = 12, size: int = 48
) -> Path:
    """Real flower photos, the first ``per_class`` of each class, shrunk to ``size`` px (longer
    side, aspect kept) so tests decode them in milliseconds."""
    if not FLOWERS.is_dir():
        pytest.skip(f"the real photos are not here: {FLOWERS}")
    for name in classes:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((FLOWERS / name).iterdir())[:per_class]:
            with Image.open(source) as image:
                image = image.convert("RGB")
                image.thumbnail((size, size))
                image.save(target / f"{source.stem}.jpg", quality=90)
    return root


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    return write_photo_folder(tmp_path / "photos")


@pytest.fixture
def pattern_root(tmp_path: Path) -> Path:
    return write_pattern_folder(tmp_path / "patterns")


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagefit.datasets.digits import write_digits

    return write_digits(tmp_path_factory.mktemp("digits") / "digits")


class StopAfter:
    """A stop flag that turns on after ``checks`` looks: a signal arriving at a chosen step."""

    def __init__(self, checks: int):
        self.checks = checks

    def __bool__(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def interrupt_after(monkeypatch: pytest.MonkeyPatch, checks: int) -> None:
    """Make fit() see a stop request (as from SIGTERM) at its ``checks``-th look."""
    from imagefit.train import fit as fit_module

    @contextmanager
    def fake_stop() -> Iterator[StopAfter]:
        yield StopAfter(checks)

    monkeypatch.setattr(fit_module, "graceful_stop", fake_stop)


def tiny_config(root: Path, out: Path, **sections: dict) -> Config:
    """simple_cnn at 16 px, 2 epochs, batch 8: a full run in about a second."""
    tree = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0},
        "augment": {"translate": 0.1},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 8, "seed": 0, "threads": 1},
        "output": {"dir": str(out), "name": "run"},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return config_from_dict(tree)


@pytest.fixture
def quick_pictures(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Stand-ins for the plotting functions (matplotlib takes ~1 s a figure on this CPU, and
    plots have their own tests); returns the calls made."""
    calls: list[tuple] = []

    def plot_comparison(run_dirs: list[Path], out_dir: Path) -> list[Path]:
        calls.append(("plot_comparison", [Path(d) for d in run_dirs], Path(out_dir)))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "comparison.png").write_bytes(b"png")
        return [Path(out_dir) / "comparison.png"]

    def write_report(run_dirs: list[Path], out: Path, title: str | None = None) -> Path:
        calls.append(("write_report", [Path(d) for d in run_dirs], Path(out)))
        Path(out).write_text("<html></html>")
        return Path(out)

    monkeypatch.setattr("imagefit.evaluate.plots.plot_run", lambda run_dir: [])
    monkeypatch.setattr("imagefit.evaluate.plots.plot_comparison", plot_comparison)
    monkeypatch.setattr("imagefit.evaluate.report.write_report", write_report)
    return calls
