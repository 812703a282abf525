"""Decoding one image file into RGB, with the bad-input policy in one place.

Every path that turns a file into pixels (the tensor cache, the streaming loader, ``predict``,
ONNX verification) calls :func:`load_rgb`; evaluation, ``predict``, export checks and serving then call
:func:`resize_center_crop` with the run's ``crop_pct`` and ``interpolation``, so they all see
identical pixels (training samples its crops from :mod:`imagefit.data.store` instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagefit.errors import ImageError

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images: scale, don't clip (Pillow's convert clips)."""
    array = np.asarray(image)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    else:
        max_value = (
            65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        )
        scaled = array.astype(np.float64) * (255.0 / max_value)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: L/LA/P/RGBA/CMYK/I;16/I/F. Alpha is dropped like torchvision."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return image.convert("RGB") if image.mode != "RGB" else image


def _refuse_bomb(path: Path, image: Image.Image) -> None:
    """Refuse more pixels than ``Image.MAX_IMAGE_PIXELS`` before decoding any of them.

    Pillow itself only raises above twice its limit and merely warns in between; turning that
    warning into an error with ``warnings.catch_warnings`` is not thread-safe (the decoders run
    in threads, and one thread leaving the block removed another's filter, so bombs got
    through), hence this explicit check on the header's size.
    """
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{path}: refused, {width}x{height} = {width * height:,} pixels is more than "
            f"{limit:,} (PIL.Image.MAX_IMAGE_PIXELS; decompression bomb?)",
            kind="too_large",
        )


def load_rgb(path: str | Path | IO[bytes], min_size: int = 1, name: str = "") -> Image.Image:
    """Open, verify, EXIF-rotate and convert one image; raise ImageError naming the file.

    ``path`` may also be an open binary stream (an upload), named ``name`` in messages, so that
    a server decodes with exactly this policy. ``ImageError.kind`` says why a file was refused
    (see :class:`imagefit.errors.ImageError`).
    """
    source: Path | IO[bytes]
    if isinstance(path, (str, Path)):
        source = path = Path(path)
    else:
        source, path = path, Path(name or "<stream>")
    try:
        with Image.open(source) as opened:
            _refuse_bomb(path, opened)
            opened.load()
            image = ImageOps.exif_transpose(opened)
            try:
                rgb = to_rgb(image)
            except ValueError as exc:
                raise ImageError(
                    f"{path}: unsupported image mode {image.mode} ({exc})", kind="unsupported_mode"
                ) from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found", kind="missing") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{path}: refused, too many pixels (decompression bomb?): {exc}", kind="too_large"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read", kind="not_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})", kind="unreadable") from None
    if min(rgb.size) < min_size:
        raise ImageError(
            f"{path}: image is {rgb.size[0]}x{rgb.size[1]}, smaller than data.min_size={min_size}",
            kind="too_small",
        )
    return rgb


# data.interpolation -> Pillow filter; Pillow antialiases both when it shrinks (its filters
# widen with the scale factor), which is what torchvision's Resize does on PIL images.
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resize_size(size: int, crop_pct: float = 1.0) -> int:
    """The shorter side before the centre crop: ``int(size / crop_pct)``, as timm computes it."""
    return int(size / crop_pct)


def resize_plan(
    width: int, height: int, size: int, crop_pct: float = 1.0, legacy: bool = False
) -> tuple[int, int, int, int] | None:
    """(new width, new height, left, top) of :func:`resize_center_crop`; None: no resize.

    torchvision's arithmetic, so the evaluation crop is ``Resize(int(size / crop_pct))`` then
    ``CenterCrop(size)`` to the pixel: the longer side becomes ``int(target * long / short)``
    and the crop starts at ``int(round((new - size) / 2))``. Shared with the torch resize of
    :mod:`imagefit.data.decode` and the ONNX graph of ``export.graph_preprocess``.

    ``legacy``: the arithmetic of models trained before crop_pct was recorded (crop_pct 1,
    the longer side rounded, the crop at ``(new - size) // 2``), so they evaluate and predict
    on the pixels they were trained and tested on.
    """
    target = resize_size(size, crop_pct)
    if (width, height) == (size, size) and target == size:
        return None
    if legacy:
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2
    if width <= height:
        new_w, new_h = target, int(target * height / width)
    else:
        new_w, new_h = int(target * width / height), target
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def resize_center_crop(
    image: Image.Image,
    size: int,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    legacy: bool = False,
) -> Image.Image:
    """The evaluation pixels: shorter side to ``int(size / crop_pct)`` (antialiased
    ``interpolation``), then a centred ``size`` x ``size`` crop (``legacy``: see
    :func:`resize_plan`)."""
    plan = resize_plan(*image.size, size, crop_pct, legacy)
    if plan is not None:
        new_w, new_h, left, top = plan
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), FILTERS[interpolation])
        image = image.crop((left, top, left + size, top + size))
    return image


def load_array(
    path: str | Path,
    size: int,
    min_size: int = 1,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    legacy: bool = False,
) -> np.ndarray:
    """File -> (size, size, 3) uint8, the evaluation preprocessing before normalisation."""
    image = resize_center_crop(load_rgb(path, min_size), size, crop_pct, interpolation, legacy)
    return np.asarray(image, dtype=np.uint8)
