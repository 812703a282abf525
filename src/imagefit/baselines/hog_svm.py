"""HOG features + linear SVM: the classical baseline a CNN has to beat (seed 002's).

Images are made grey, resized to ``image_size`` squared, described by a histogram of oriented
gradients (scikit-image) and classified by ``StandardScaler`` + ``LinearSVC`` (scikit-learn).
Scores go through :func:`imagefit.evaluate.metrics.compute_metrics`, the same path as the CNNs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.feature import hog
from skimage.transform import resize
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from imagefit.evaluate.metrics import compute_metrics

log = logging.getLogger(__name__)


def _grey(image: Any) -> np.ndarray:
    """``image`` (PIL image or (H, W) / (H, W, C) array) as a float (H, W) array."""
    if isinstance(image, Image.Image):
        image = image.convert("L")
    pixels = np.asarray(image)
    if np.issubdtype(pixels.dtype, np.integer):
        pixels = pixels / float(np.iinfo(pixels.dtype).max)
    pixels = pixels.astype(np.float64)
    if pixels.ndim == 3:
        # HOG's block normalisation makes the exact grey weighting unimportant.
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {pixels.shape}")
    return pixels


def hog_features(
    images: Sequence[Any],
    image_size: int = 64,
    orientations: int = 9,
    pixels_per_cell: int | None = None,
    cells_per_block: int = 2,
) -> np.ndarray:
    """(N, D) HOG descriptors of ``images`` resized to ``image_size`` squared.

    ``pixels_per_cell`` defaults to ``image_size // 8``: an 8 x 8 grid of cells at any size."""
    cell = pixels_per_cell or max(2, image_size // 8)
    rows = []
    for image in images:
        pixels = _grey(image)
        if pixels.shape != (image_size, image_size):
            pixels = resize(pixels, (image_size, image_size), anti_aliasing=True)
        rows.append(
            hog(
                pixels,
                orientations=orientations,
                pixels_per_cell=(cell, cell),
                cells_per_block=(cells_per_block, cells_per_block),
                block_norm="L2-Hys",
            )
        )
    return np.stack(rows).astype(np.float32)


def _scores(model: Pipeline, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) decision scores over all classes, whatever subset the SVM was trained on."""
    decision = model.decision_function(features)
    seen = model.classes_
    if decision.ndim == 1:  # two classes: one margin, positive for classes_[1]
        decision = np.stack([-decision, decision], axis=1)
    # Classes missing from the training set can never be predicted: score them lowest.
    scores = np.full((len(features), num_classes), decision.min() - 1.0)
    scores[:, seen] = decision
    return scores


def run_hog_svm(
    train_images: Sequence[Any],
    train_labels: Sequence[int],
    test_images: Sequence[Any],
    test_labels: Sequence[int],
    classes: Sequence[str],
    image_size: int = 64,
    orientations: int = 9,
    pixels_per_cell: int | None = None,
    cells_per_block: int = 2,
    C: float = 0.01,
    max_iter: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit HOG + linear SVM on the training images and score the test images.

    Returns :func:`compute_metrics`' dict plus ``wall_time_s`` (features, fit and prediction)
    and ``params_total`` (SVM weights and biases). The small default ``C`` suits the
    standardised ~1,800-dimensional HOG vectors: liblinear converges several times faster
    than at C = 1, with the same accuracy on digits."""
    started = time.perf_counter()
    y_train = np.asarray(train_labels, dtype=np.int64)
    if len(np.unique(y_train)) < 2:
        raise ValueError("the HOG+SVM baseline needs training images of at least two classes")
    features = partial(
        hog_features,
        image_size=image_size,
        orientations=orientations,
        pixels_per_cell=pixels_per_cell,
        cells_per_block=cells_per_block,
    )
    model = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=max_iter, random_state=seed))
    model.fit(features(train_images), y_train)
    scores = _scores(model, features(test_images), len(classes))
    svm = model[-1]
    metrics = compute_metrics(np.asarray(test_labels, dtype=np.int64), scores, classes)
    return {
        **metrics,
        "wall_time_s": time.perf_counter() - started,
        "params_total": int(svm.coef_.size + svm.intercept_.size),
    }


def load_grey_images(
    files: Sequence[tuple[Path, int]], image_size: int
) -> tuple[list[np.ndarray], list[int], int]:
    """Grey ``image_size``-squared uint8 arrays and labels of ``files``, and how many files
    were unreadable (skipped with a warning, like the data layer does)."""
    images, labels, skipped = [], [], 0
    for path, label in files:
        try:
            with Image.open(path) as handle:
                grey = handle.convert("L").resize(
                    (image_size, image_size), Image.Resampling.BILINEAR
                )
        except (OSError, UnidentifiedImageError, ValueError) as error:
            log.warning("%s: unreadable, skipped (%s)", path, error)
            skipped += 1
            continue
        images.append(np.asarray(grey))
        labels.append(int(label))
    return images, labels, skipped


def run_hog_svm_on_files(
    train: Sequence[tuple[Path, int]],
    test: Sequence[tuple[Path, int]],
    classes: Sequence[str],
    image_size: int = 64,
    **options: Any,
) -> dict[str, Any]:
    """:func:`run_hog_svm` on ImageFolder-style ``(path, label)`` lists, loaded with PIL.

    ``wall_time_s`` here includes loading the images (as a CNN run's does); ``skipped_files``
    counts unreadable files. ``options`` go to :func:`run_hog_svm`."""
    started = time.perf_counter()
    train_images, train_labels, skipped_train = load_grey_images(train, image_size)
    test_images, test_labels, skipped_test = load_grey_images(test, image_size)
    if not test_images:
        raise ValueError("no readable test images")
    result = run_hog_svm(
        train_images,
        train_labels,
        test_images,
        test_labels,
        classes,
        image_size=image_size,
        **options,
    )
    result["wall_time_s"] = time.perf_counter() - started
    result["skipped_files"] = skipped_train + skipped_test
    return result
