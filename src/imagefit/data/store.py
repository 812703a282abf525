"""What a pixel source holds per image: the evaluation crop, or the whole image for training.

Evaluation pixels are ``resize_center_crop``'s (S, S, 3) crop. Training pixels are the *store*:
the whole image, longer side resized to ``data.store_size`` (antialiased), at the top-left of
a square ``store_size`` canvas padded with zeros, with its valid (width, height) recorded. The
random-resized crop (:mod:`imagefit.data.affine`) samples its box inside that valid box, so it
sees the whole image at its own aspect ratio, as torchvision's ``RandomResizedCrop`` on the
decoded file does, while the dataset still decodes once into one uint8 array (cache) or per
epoch (streaming) with the same function: both paths hold the same pixels.

Why the longer side: one square canvas per image keeps the array rectangular and its memory
``N * store_size^2 * 3`` whatever the aspect ratios, with no image cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imagefit.data.decode import decode_array, resize_tensor, rgb_tensor
from imagefit.data.images import FILTERS, load_rgb, resize_center_crop

Box = tuple[int, int]  # (width, height) of the image on its canvas, from the top-left corner


def store_plan(width: int, height: int, store_size: int) -> Box:
    """(width, height) of an image whose longer side becomes ``store_size``."""
    scale = store_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def store_image(image: Image.Image, store_size: int, interpolation: str) -> tuple[np.ndarray, Box]:
    """RGB image -> ((store_size, store_size, 3) uint8 canvas, its valid box)."""
    box = store_plan(*image.size, store_size)
    if box != image.size:
        image = image.resize(box, FILTERS[interpolation])
    canvas = np.zeros((store_size, store_size, 3), np.uint8)
    canvas[: box[1], : box[0]] = np.asarray(image, dtype=np.uint8)
    return canvas, box


def store_tensor(
    image: torch.Tensor, store_size: int, interpolation: str
) -> tuple[np.ndarray, Box]:
    """(1, 3, H, W) uint8 -> as :func:`store_image`, with torch's antialiased resize."""
    box = store_plan(image.shape[3], image.shape[2], store_size)
    resized = resize_tensor(image, box[0], box[1], interpolation)
    canvas = np.zeros((store_size, store_size, 3), np.uint8)
    canvas[: box[1], : box[0]] = resized[0].permute(1, 2, 0).numpy()
    return canvas, box


@dataclass(frozen=True)
class PixelSpec:
    """How a file becomes the pixels a source holds (and what keys its cache entry)."""

    size: int  # evaluation: the crop side (data.image_size); store: data.store_size
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    decoder: str = "pillow"
    store: bool = False  # the whole image on a canvas, for training crops
    legacy: bool = False  # models from before crop_pct was recorded (images.resize_plan)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], decoder: str = "pillow") -> PixelSpec:
        """The evaluation pixels of a trained model's meta (checkpoint or ONNX); meta written
        before crop_pct and interpolation were recorded evaluated with 1.0, bilinear and the
        arithmetic of their time (``legacy``)."""
        return cls(
            int(meta["image_size"]),
            float(meta.get("crop_pct") or 1.0),
            str(meta.get("interpolation") or "bilinear"),
            decoder,
            legacy="crop_pct" not in meta,
        )

    def crop(self, image: Image.Image) -> np.ndarray:
        """An RGB image (an upload) -> its (S, S, 3) uint8 evaluation pixels."""
        return np.asarray(
            resize_center_crop(image, self.size, self.crop_pct, self.interpolation, self.legacy),
            dtype=np.uint8,
        )

    def image(self, image: Image.Image) -> tuple[np.ndarray, Box]:
        """An RGB image (a dataset row, a decoded file) -> its pixels and valid box."""
        if self.store:
            return store_image(image, self.size, self.interpolation)
        return self.crop(image), (self.size, self.size)

    def array(self, path: str | Path, min_size: int = 1) -> np.ndarray:
        """File -> (S, S, 3) uint8 (the pixels without the valid box)."""
        return self.decode(path, min_size)[0]

    def tag(self) -> str:
        """The cache key's part for this spec; today's evaluation default keeps the old form."""
        tag = "" if self.decoder == "pillow" else f":{self.decoder}"
        if self.crop_pct != 1.0 or self.interpolation != "bilinear":
            tag += f":crop{self.crop_pct!r}:{self.interpolation}"
        return tag + (":store" if self.store else "") + (":legacy" if self.legacy else "")

    def decode(self, path: str | Path, min_size: int = 1) -> tuple[np.ndarray, Box]:
        """File -> ((S, S, 3) uint8, valid (width, height)); raises ImageError naming it."""
        if not self.store:
            pixels = decode_array(
                path,
                self.size,
                min_size,
                self.decoder,
                self.crop_pct,
                self.interpolation,
                self.legacy,
            )
            return pixels, (self.size, self.size)
        if self.decoder == "torchvision":
            return store_tensor(rgb_tensor(path, min_size), self.size, self.interpolation)
        return self.image(load_rgb(path, min_size))
