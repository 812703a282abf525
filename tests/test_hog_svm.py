"""HOG + linear SVM baseline: beats chance clearly on scikit-learn's digits, works from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from imagefit.baselines.hog_svm import hog_features, run_hog_svm, run_hog_svm_on_files

DIGITS = [str(i) for i in range(10)]


def test_digits_clearly_beat_chance() -> None:
    digits = load_digits()  # 8 x 8 images, bundled with scikit-learn: no download
    images, labels = digits.images, digits.target
    # C = 0.001 converges in a third of the default's time, at the same accuracy here.
    result = run_hog_svm(
        images[:900],
        labels[:900],
        images[900:1300],
        labels[900:1300],
        DIGITS,
        image_size=32,
        C=0.001,
    )
    assert result["accuracy"] > 0.8  # chance is 0.1
    assert result["num_samples"] == 400 and result["classes"] == DIGITS
    assert result["params_total"] == 10 * hog_features(images[:1], 32).shape[1] + 10
    assert result["wall_time_s"] > 0 and result["top5_accuracy"] >= result["accuracy"]


def test_two_classes_and_a_class_missing_from_training() -> None:
    rng = np.random.default_rng(0)
    bright = [np.pad(np.ones((8, 8)), 4) + rng.normal(0, 0.05, (16, 16)) for _ in range(10)]
    stripes = [np.tile([0.0, 1.0], (16, 8)) + rng.normal(0, 0.05, (16, 16)) for _ in range(10)]
    images, labels = bright + stripes, [0] * 10 + [1] * 10
    # Class 2 ("unused") has no training images: it can never be predicted, but is reported.
    result = run_hog_svm(
        images[::2],
        labels[::2],
        images[1::2],
        labels[1::2],
        ["square", "stripes", "unused"],
        image_size=16,
    )
    assert result["accuracy"] == 1.0
    assert result["per_class"]["support"] == [5, 5, 0]
    assert result["params_total"] == 1 * hog_features(images[:1], 16).shape[1] + 1  # binary SVM
    with pytest.raises(ValueError, match="two classes"):
        run_hog_svm(images[:5], [0] * 5, images[:2], [0, 0], ["a", "b"])


def test_run_on_files_loads_colour_and_grey_images_and_skips_bad_ones(tmp_path: Path) -> None:
    digits = load_digits()
    files: list[tuple[Path, int]] = []
    for index in range(240):
        pixels = (digits.images[index] * 15).astype(np.uint8)
        image = Image.fromarray(pixels).resize((24, 24))
        if index % 2:
            image = image.convert("RGB")
        path = tmp_path / str(digits.target[index]) / f"{index:04d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        files.append((path, int(digits.target[index])))
    broken = tmp_path / "0" / "broken.png"
    broken.write_bytes(b"not an image")
    result = run_hog_svm_on_files(files[:180] + [(broken, 0)], files[180:], DIGITS, image_size=24)
    assert result["skipped_files"] == 1 and result["num_samples"] == 60
    assert result["accuracy"] > 0.6
    assert set(result) >= {
        "accuracy",
        "f1_macro",
        "confusion_matrix",
        "wall_time_s",
        "params_total",
    }
