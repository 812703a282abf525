"""Explanations: where in an image the model looked (Grad-CAM), and which mistakes it makes.

Grad-CAM (Selvaraju et al. 2017, via the ``grad-cam`` package) weights the feature maps of a
convolutional layer by the gradient of the class score and keeps the positive part: a coarse
heat map of the regions that raised the score. The layer is the model's last convolutional
stage: timm's ``feature_info[-1]`` (``layer4`` of a ResNet, ``blocks.6`` of an EfficientNet),
or the last ``Conv2d`` of a model without it (SimpleCNN). A model whose layers give no
(B, C, H, W) map, such as a vision transformer's tokens, is refused with an
:class:`ExplainError`.

:func:`mistakes_gallery` is the post-run step for the report: the test images the model got
wrong with the highest confidence and examples of the most confused class pairs, each with a
thumbnail, its true and predicted class, the probability and the Grad-CAM overlay.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from imagefit.data.inputs import Problem, expand_images, normalise
from imagefit.data.store import PixelSpec
from imagefit.errors import DataError, ImagefitError
from imagefit.evaluate.predictions import run_test_predictions
from imagefit.fileio import atomic_open, make_dirs, write_json
from imagefit.models.trained import load_trained, resolve_checkpoint
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)

MIN_SHOWN = 224  # overlays of small inputs are enlarged to this many px to be readable


class ExplainError(ImagefitError):
    """The model has no layer Grad-CAM can use."""


def target_layer(model: nn.Module, arch: str, image_size: int) -> tuple[str, nn.Module]:
    """(name, module) of the last convolutional stage whose output is a (B, C, H, W) map."""
    candidates: list[str] = []
    info = getattr(model, "feature_info", None)
    if info is not None:
        with contextlib.suppress(IndexError, KeyError, TypeError):  # no usable stage entry
            candidates.append(info[-1]["module"])
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    candidates.extend(reversed(convs))
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            shapes.setdefault(name, tuple(output.shape) if isinstance(output, torch.Tensor) else ())

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in set(candidates)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    for name in dict.fromkeys(candidates):
        shape = shapes.get(name, ())
        # A map: 4-D, channels second (timm's NHWC stages would have C last), more than 1x1.
        if len(shape) == 4 and shape[2] * shape[3] > 1 and _channels_first(model, name, shape):
            return name, model.get_submodule(name)
    raise ExplainError(
        f"{arch}: no convolutional layer with a spatial (B, C, H, W) output at "
        f"{image_size} px for Grad-CAM; explain supports CNNs (timm ResNets, EfficientNets, "
        "ConvNeXts, ... and simple_cnn), not token-based models such as vision transformers"
    )


def _channels_first(model: nn.Module, name: str, shape: tuple[int, ...]) -> bool:
    info = getattr(model, "feature_info", None)
    if info is None:
        return True  # a plain Conv2d output is NCHW
    for entry in info:
        if entry.get("module") == name:
            return shape[1] == entry.get("num_chs", shape[1])
    return True


def gradcam(
    model: nn.Module, layer: nn.Module, x: np.ndarray, classes: Sequence[int]
) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] of inputs ``x`` (N, 3, S, S) for ``classes`` (N,)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(
            input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c) for c in classes]
        )


def overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 image with the (S, S) heat map blended over it, at least MIN_SHOWN px."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    size = pixels.shape[0]
    if size < MIN_SHOWN:
        pixels = np.asarray(Image.fromarray(pixels).resize((MIN_SHOWN, MIN_SHOWN)))
        heat = np.asarray(
            Image.fromarray(heat.astype(np.float32)).resize(
                (MIN_SHOWN, MIN_SHOWN), Image.Resampling.BILINEAR
            )
        )
    return show_cam_on_image(pixels.astype(np.float32) / 255, heat, use_rgb=True)


class _Explainer:
    """A loaded model with its Grad-CAM layer and preprocessing."""

    def __init__(self, target: str | Path):
        self.checkpoint = resolve_checkpoint(target)
        self.model, self.meta, _ = load_trained(self.checkpoint)
        self.size = self.meta["image_size"]
        self.spec = PixelSpec.from_meta(self.meta)  # the run's evaluation pixels
        self.layer_name, self.layer = target_layer(self.model, self.meta["arch"], self.size)
        self.temperature = float(self.meta.get("temperature") or 1.0)

    def explain(
        self, pixels: np.ndarray, classes: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, C), heat maps (N, S, S)) for ``classes`` (default: predicted)."""
        x = normalise(pixels, self.meta["mean"], self.meta["std"])
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x)).double() / self.temperature
        probs = torch.softmax(logits, dim=1).numpy()
        chosen = list(classes) if classes is not None else probs.argmax(1).tolist()
        return probs, gradcam(self.model, self.layer, x, chosen)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_open(path, "wb", what="the overlay") as handle:
        Image.fromarray(pixels).save(handle, "PNG")


def explain_images(
    target: str | Path, images: Sequence[str | Path], out: str | Path
) -> list[dict[str, Any]]:
    """Grad-CAM overlays of ``images`` (files or folders) for the predicted class, written as
    ``out/<stem>.gradcam.png``; one dict per image (or ``error`` for an unreadable one)."""
    explainer = _Explainer(target)
    out = Path(out)
    make_dirs(out)
    results: list[dict[str, Any]] = []
    used: Counter[str] = Counter()
    for item in expand_images(images):
        if isinstance(item, tuple):
            problem: Problem = item
            results.append({"file": str(problem[0]), "error": problem[1]})
            continue
        try:
            pixels = explainer.spec.array(item)
        except DataError as exc:
            results.append({"file": str(item), "error": str(exc)})
            continue
        probs, heat = explainer.explain(pixels[None])
        index = int(probs[0].argmax())
        used[item.stem] += 1
        stem = item.stem if used[item.stem] == 1 else f"{item.stem}-{used[item.stem]}"
        path = out / f"{stem}.gradcam.png"
        _save_png(path, overlay(pixels, heat[0]))
        results.append(
            {
                "file": str(item),
                "label": explainer.meta["classes"][index],
                "probability": float(probs[0, index]),
                "layer": explainer.layer_name,
                "overlay": str(path),
            }
        )
    return results


def mistakes_gallery(
    run_dir: str | Path, out: str | Path | None = None, count: int = 12, pairs: int = 3
) -> dict[str, Any]:
    """Post-run step: the ``count`` most confident test mistakes and up to 4 examples of each
    of the ``pairs`` most confused (true, predicted) class pairs, with Grad-CAM overlays.

    Writes ``out`` (default ``RUN/gallery``): ``mistakes.png`` and ``confused_pairs.png`` (for
    the report), ``overlays/*.png`` and ``gallery.json``. Returns gallery.json's content.
    """
    checkpoint = resolve_checkpoint(run_dir)
    out = Path(out) if out is not None else RunLayout(checkpoint.parent).gallery
    make_dirs(out / "overlays")
    explainer = _Explainer(checkpoint)
    preds = run_test_predictions(checkpoint.parent)
    probs = preds.probabilities(explainer.temperature)
    predicted, labels = probs.argmax(1), preds.labels
    wrong = np.flatnonzero(predicted != labels)
    confident = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]
    confusion = Counter(zip(labels[wrong].tolist(), predicted[wrong].tolist(), strict=True))
    top_pairs = [pair for pair, _ in confusion.most_common(pairs)]
    examples = {
        pair: [int(i) for i in wrong if (labels[i], predicted[i]) == pair][:4] for pair in top_pairs
    }
    chosen = list(dict.fromkeys([*confident.tolist(), *(i for v in examples.values() for i in v)]))
    entries: dict[int, dict[str, Any]] = {}
    classes = preds.classes
    for i in chosen:
        try:
            pixels = explainer.spec.array(preds.file(i))
        except DataError as exc:
            log.warning("gallery: skipped %s", exc)
            continue
        _, heat = explainer.explain(pixels[None], [int(predicted[i])])
        path = out / "overlays" / f"{len(entries):03d}.png"
        shown = overlay(pixels, heat[0])
        _save_png(path, shown)
        entries[i] = {
            "file": str(preds.file(i)),
            "true": classes[labels[i]],
            "predicted": classes[predicted[i]],
            "probability": float(probs[i, predicted[i]]),
            "overlay": str(path.relative_to(out)),
            "_pixels": pixels,
            "_overlay": shown,
        }
    mistakes = [entries[i] for i in confident.tolist() if i in entries]
    confused = [
        {
            "true": classes[t],
            "predicted": classes[p],
            "count": confusion[t, p],
            "examples": [entries[i] for i in examples[t, p] if i in entries],
        }
        for t, p in top_pairs
    ]
    if mistakes:
        _grid(mistakes, out / "mistakes.png", "most confident mistakes")
    shown_pairs = [
        {**e, "caption": f"{c['true']} → {c['predicted']} ({c['count']}×)"}
        for c in confused
        for e in c["examples"]
    ]
    if shown_pairs:
        _grid(shown_pairs, out / "confused_pairs.png", "most confused class pairs")
    result = {
        "run": str(checkpoint.parent),
        "layer": explainer.layer_name,
        "test_images": len(labels),
        "mistakes_total": len(wrong),
        "mistakes": [_public(e) for e in mistakes],
        "confused_pairs": [
            {**c, "examples": [_public(e) for e in c["examples"]]} for c in confused
        ],
        "images": {
            name: name for name in ("mistakes.png", "confused_pairs.png") if (out / name).is_file()
        },
    }
    write_json(out / layout.GALLERY_JSON, result)
    return result


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.startswith("_") and k != "caption"}


def _grid(entries: list[dict[str, Any]], path: Path, title: str) -> None:
    """Rows of (thumbnail, overlay) pairs with true/predicted/probability captions."""
    columns = min(4, len(entries))
    rows = -(-len(entries) // columns)
    fig = Figure(figsize=(columns * 3.2, rows * 1.9 + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns * 2, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, entry in enumerate(entries):
        r, c = divmod(n, columns)
        thumb, heat = axes[r, 2 * c], axes[r, 2 * c + 1]
        thumb.imshow(entry["_pixels"])
        heat.imshow(entry["_overlay"])
        caption = entry.get("caption") or f"{entry['true']} → {entry['predicted']}"
        thumb.set_title(f"{caption}\np={entry['probability']:.2f}", fontsize=7, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb", what="the gallery") as handle:
        fig.savefig(handle, format="png")
