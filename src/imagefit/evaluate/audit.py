"""``audit_labels``: which images are probably filed under the wrong class?

Confident learning (Northcutt et al., JAIR 2021, the ``cleanlab`` package) needs, for every
image, class probabilities from a model that never trained on it. Quick cross-validation
provides them: the images are decoded once at low resolution through imagefit's image cache,
split into K stratified folds, and a small model (any registry name, SimpleCNN by default) is
trained on K-1 folds and predicts the held-out one, a few minutes on a CPU. cleanlab then
flags the likely label issues (``find_label_issues``) and scores every image's label
(``get_label_quality_scores``, self-confidence: the probability the held-out model gives its
filed class); the class the model prefers is the suggested one.

Written to ``out``: ``suspects.csv`` (every image, worst label first), ``suspects.png`` (a
contact sheet of the worst), ``label_issues.txt`` (the flagged files, in the format
``data.skip_list`` reads) and ``audit.json`` (settings and totals). Nothing is moved or
relabelled: the suspects are for a person to look at.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from imagefit.data.cache import decode_cached
from imagefit.data.splits import resolve_splits
from imagefit.errors import DataError
from imagefit.evaluate.inference import select_device
from imagefit.fileio import atomic_open, make_dirs, write_json
from imagefit.models.registry import create_model

log = logging.getLogger(__name__)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHEET = 48  # suspects on the contact sheet


@dataclass
class AuditResult:
    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # (N,) filed class
    probabilities: np.ndarray  # (N, C) out-of-fold
    quality: np.ndarray  # (N,) cleanlab label quality, low = suspect
    flagged: np.ndarray  # (N,) bool, cleanlab's label issues
    settings: dict[str, Any]

    @property
    def order(self) -> np.ndarray:
        """Image indices from the most to the least suspect label."""
        return np.argsort(self.quality, kind="stable")

    @property
    def suggested(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def out_of_fold_accuracy(self) -> float:
        return float(np.mean(self.suggested == self.labels))


def _train_fold(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> nn.Module:
    """A plain loop: Adam, cross-entropy, random horizontal flips; x is normalised NCHW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * -(-len(x) // batch_size)
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator, device="cpu").to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            batch = x[idx]
            flip = torch.rand(len(idx), generator=generator, device="cpu").to(x.device) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            loss = nn.functional.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def out_of_fold_probabilities(
    pixels: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = 5,
    model: str = "simple_cnn",
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
) -> np.ndarray:
    """(N, C) probabilities of each image from a model trained on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    dev = select_device(device)
    x = (
        torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float()
    )  # a copy: the cache is read-only
    x = (x / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    x, y = x.to(dev), torch.from_numpy(labels).to(dev)
    probabilities = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        started = time.perf_counter()
        torch.manual_seed(seed + fold)
        generator = torch.Generator().manual_seed(seed + fold)
        net = create_model(model, num_classes).to(dev)
        _train_fold(net, x[train], y[train], epochs, batch_size, lr, generator)
        with torch.no_grad():
            logits = torch.cat([net(x[held][i : i + 256]) for i in range(0, len(held), 256)])
        probabilities[held] = torch.softmax(logits.double(), dim=1).cpu().numpy()
        accuracy = float(np.mean(probabilities[held].argmax(1) == labels[held]))
        log.info(
            "audit fold %d/%d: %d held-out images, accuracy %.3f (%.1f s)",
            fold + 1,
            folds,
            len(held),
            accuracy,
            time.perf_counter() - started,
        )
    return probabilities


def audit_labels(
    root: str | Path,
    folds: int = 5,
    model: str = "simple_cnn",
    image_size: int = 32,
    epochs: int = 30,
    seed: int = 0,
    device: str = "auto",
) -> AuditResult:
    """Cross-validated probabilities and cleanlab's label issues for every image under ``root``
    (``root/<class>`` or ``root/{train,val,test}/<class>``: all splits together)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}")
    manifest = resolve_splits(root)
    samples = [s for items in manifest.splits.values() for s in items]
    classes = manifest.classes
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    if counts.min() < folds:
        small = [classes[i] for i in np.flatnonzero(counts < folds)]
        raise DataError(
            f"{root}: classes {small} have fewer images than --folds {folds}; "
            "lower --folds or add images"
        )
    decoded = decode_cached(samples, image_size, on_bad="skip")
    for position, reason in decoded.bad.items():
        log.warning("audit: left out %s (%s)", samples[position][0], reason)
    kept = [samples[i] for i in decoded.keep]
    labels = np.array([label for _, label in kept], dtype=np.int64)
    probabilities = out_of_fold_probabilities(
        np.asarray(decoded.pixels),
        labels,
        len(classes),
        folds=folds,
        model=model,
        epochs=epochs,
        seed=seed,
        device=device,
    )
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[
        find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    ] = True
    settings = {
        "folds": folds,
        "model": model,
        "image_size": image_size,
        "epochs": epochs,
        "seed": seed,
        "method": "cleanlab find_label_issues (prune_by_noise_rate), self_confidence ranking",
    }
    return AuditResult(
        Path(manifest.root).resolve(),
        classes,
        [path.resolve() for path, _ in kept],
        labels,
        probabilities,
        np.asarray(quality),
        flagged,
        settings,
    )


def write_audit(result: AuditResult, out: str | Path) -> dict[str, Path]:
    """suspects.csv, suspects.png, label_issues.txt and audit.json in ``out``."""
    out = Path(out)
    make_dirs(out)
    files = {
        "suspects": out / "suspects.csv",
        "sheet": out / "suspects.png",
        "skip_list": out / "label_issues.txt",
        "summary": out / "audit.json",
    }
    classes, labels, probs, suggested = (
        result.classes,
        result.labels,
        result.probabilities,
        result.suggested,
    )
    with atomic_open(files["suspects"], "w", what="the suspects") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "rank",
                "path",
                "given",
                "suggested",
                "label_quality",
                "p_given",
                "p_suggested",
                "flagged",
            ]
        )
        for rank, i in enumerate(result.order, start=1):
            writer.writerow(
                [
                    rank,
                    str(result.paths[i]),
                    classes[labels[i]],
                    classes[suggested[i]],
                    f"{result.quality[i]:.4f}",
                    f"{probs[i, labels[i]]:.4f}",
                    f"{probs[i, suggested[i]]:.4f}",
                    int(result.flagged[i]),
                ]
            )
    flagged = [i for i in result.order if result.flagged[i]]
    lines = [
        f"# imagefit data audit {result.root}: {len(flagged)} images whose label is probably wrong",
        "# use with --set data.skip_list=<this file> after looking at them (suspects.png);",
        "# lines starting with # are ignored",
        *(str(result.paths[i]) for i in flagged),
    ]
    with atomic_open(files["skip_list"], "w", what="the skip list") as handle:
        handle.write("\n".join(lines) + "\n")
    _contact_sheet(result, files["sheet"])
    write_json(
        files["summary"],
        {
            "root": str(result.root),
            "classes": classes,
            "images": len(labels),
            "settings": result.settings,
            "out_of_fold_accuracy": result.out_of_fold_accuracy(),
            "flagged": len(flagged),
            "flagged_by_class": {
                name: int(np.sum(result.flagged & (labels == k))) for k, name in enumerate(classes)
            },
        },
    )
    return files


def _contact_sheet(result: AuditResult, path: Path) -> None:
    """The SHEET most suspect images with their filed and suggested class."""
    from PIL import Image

    shown = result.order[:SHEET]
    columns = min(8, max(1, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    fig = Figure(figsize=(columns * 1.6, rows * 1.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, shown, strict=False):
        try:
            with Image.open(result.paths[i]) as image:
                thumb = image.convert("RGB")
                thumb.thumbnail((128, 128))
            ax.imshow(np.asarray(thumb))
        except OSError:
            pass
        given, suggested = result.classes[result.labels[i]], result.classes[result.suggested[i]]
        mark = "*" if result.flagged[i] else ""
        ax.set_title(
            f"{mark}{given} → {suggested}\nq={result.quality[i]:.2f}",
            fontsize=7,
            color="#b00" if result.flagged[i] else "black",
        )
    fig.suptitle("most suspect labels (filed → suggested; * flagged by cleanlab)", fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb", what="the contact sheet") as handle:
        fig.savefig(handle, format="png")
