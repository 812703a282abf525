"""Image file -> ``(S, S, 3)`` uint8 by a named decoder (``data.decoder``).

``pillow`` is :func:`imagefit.data.images.load_array`: the reference pixels. ``torchvision``
decodes plain JPEGs (RGB or greyscale) with ``torchvision.io.decode_jpeg`` (libjpeg-turbo: the
same pixels as Pillow, tested) and resizes every image with torch's antialiased bilinear
(``F.interpolate(antialias=True)``), which is 2-4x faster than Pillow's resize on one core.
Torch keeps 16-bit filter weights where Pillow keeps 22-bit ones, so the two resizes differ by
at most 1 level on a few percent of pixels (tests/test_fast.py bounds it). Everything else -
other formats and modes, EXIF rotation rules, bad-file policy - is Pillow's, and a run records
its decoder, so its cache, evaluation and predictions all see the pixels it trained on.

torchvision 0.29 deprecates its ``torchvision.io`` decoders in favour of TorchCodec (a
DeprecationWarning, hidden by default); when they go, this decoder is the one place to port.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imagefit.data.images import _refuse_bomb, load_array, load_rgb, resize_plan
from imagefit.errors import ConfigError, ImageError

ArrayDecoder = Callable[[str | Path, int, int, float, str, bool], np.ndarray]


def _jpeg_tensor(path: Path, min_size: int) -> torch.Tensor | None:
    """(3, H, W) uint8 of a plain JPEG, EXIF-rotated; None when Pillow should handle the file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            if header.format != "JPEG" or header.mode not in ("RGB", "L"):
                return None  # CMYK, 16-bit and other formats: Pillow's conversions
            _refuse_bomb(path, header)
    except (OSError, SyntaxError, ValueError):
        return None  # missing or unreadable: load_rgb raises the canonical error
    try:
        tensor = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=True,
        )
    except RuntimeError as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})", kind="unreadable") from None
    if min(tensor.shape[1:]) < min_size:
        raise ImageError(
            f"{path}: image is {tensor.shape[2]}x{tensor.shape[1]}, smaller than "
            f"data.min_size={min_size}",
            kind="too_small",
        )
    return tensor


MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}  # data.interpolation -> torch mode


def resize_tensor(image: torch.Tensor, width: int, height: int, interpolation: str) -> torch.Tensor:
    """(1, 3, H, W) uint8 -> (1, 3, height, width), antialiased like Pillow."""
    if image.shape[2:] == (height, width):
        return image
    return F.interpolate(
        image,
        size=(height, width),
        mode=MODES[interpolation],
        antialias=True,
        align_corners=False,
    )


def resize_center_crop_tensor(
    image: torch.Tensor,
    size: int,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    legacy: bool = False,
) -> torch.Tensor:
    """(1, 3, H, W) uint8 -> (1, 3, S, S): the box of ``resize_center_crop``, torch's filter."""
    plan = resize_plan(image.shape[3], image.shape[2], size, crop_pct, legacy)
    if plan is None:
        return image
    new_w, new_h, left, top = plan
    resized = resize_tensor(image, new_w, new_h, interpolation)
    return resized[:, :, top : top + size, left : left + size]


def rgb_tensor(path: str | Path, min_size: int = 1) -> torch.Tensor:
    """(1, 3, H, W) uint8 with channels_last strides (the layout torch's uint8 resize is
    fastest on): torchvision's JPEG decoder, Pillow for everything else."""
    path = Path(path)
    chw = _jpeg_tensor(path, min_size)
    if chw is None:
        hwc = torch.from_numpy(np.array(load_rgb(path, min_size), dtype=np.uint8))
    else:
        hwc = chw.permute(1, 2, 0)
    return hwc.contiguous()[None].permute(0, 3, 1, 2)


def load_array_torchvision(
    path: str | Path,
    size: int,
    min_size: int = 1,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    legacy: bool = False,
) -> np.ndarray:
    """File -> (size, size, 3) uint8 with torchvision's JPEG decoder and torch's resize."""
    image = rgb_tensor(path, min_size)
    out = resize_center_crop_tensor(image, size, crop_pct, interpolation, legacy)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


# (path, size, min_size, crop_pct, interpolation, legacy) -> (size, size, 3) uint8 pixels
DECODERS: dict[str, ArrayDecoder] = {"pillow": load_array, "torchvision": load_array_torchvision}


def get_decoder(name: str) -> ArrayDecoder:
    if name not in DECODERS:
        raise ConfigError(f"data.decoder '{name}' is not one of: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


def decode_array(
    path: str | Path,
    size: int,
    min_size: int = 1,
    decoder: str = "pillow",
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    legacy: bool = False,
) -> np.ndarray:
    """File -> (size, size, 3) uint8 evaluation pixels by ``decoder`` (see the module docstring)."""
    return get_decoder(decoder)(path, size, min_size, crop_pct, interpolation, legacy)
