"""Decoding one image file into RGB, with the bad-input policy in one place.

Every path that turns a file into pixels (the tensor cache, the streaming loader, ``predict``,
ONNX verification) calls :func:`load_rgb` and :func:`resize_center_crop`, so training,
evaluation and inference see identical pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagefit.errors import DataError

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".webp", ".tif", ".tiff",
)  # fmt: skip


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit single-channel images: scale, don't clip (Pillow's convert clips)."""
    array = np.asarray(image)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    else:
        max_value = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        scaled = array.astype(np.float64) * (255.0 / max_value)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: L/LA/P/RGBA/CMYK/I;16/I/F. Alpha is dropped like torchvision."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb(path: str | Path, min_size: int = 1) -> Image.Image:
    """Open, verify, EXIF-rotate and convert one image; raise DataError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A decompression bomb is refused, not loaded: Pillow only warns below 2x its limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = to_rgb(image)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, too many pixels (decompression bomb?): {exc}") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if min(rgb.size) < min_size:
        raise DataError(
            f"{path}: image is {rgb.size[0]}x{rgb.size[1]}, smaller than data.min_size={min_size}"
        )
    return rgb


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear, antialiased), then a centred ``size`` x ``size`` crop."""
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def load_array(path: str | Path, size: int, min_size: int = 1) -> np.ndarray:
    """File -> (size, size, 3) uint8, the canonical preprocessing before normalisation."""
    return np.asarray(resize_center_crop(load_rgb(path, min_size), size), dtype=np.uint8)
