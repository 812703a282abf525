"""REFERENCE ONLY: a slow, literal port of the official per-point FractalDB renderer.

This mirrors ``fractal_renderer/ifs_function.py`` of the official FractalDB / 2D-OFDB code
(MIT licence, Kataoka et al.; see imagefit/resources/fractal_weights/LICENSE): Python floats in dicts,
one list append per point, one PIL ``paste`` per patch. It exists to check the fast renderer
(``imagefit.datasets.fractal.render``) pixel for pixel and to time the speed-up; never use it to build datasets
(about 4 s per 362-px image). Differences from the original, none of which changes a pixel:
the global NumPy generator is replaced by an equal ``RandomState(100)``, Python's ``random``
mask draws by an explicit ``masks`` stream, and the image is returned instead of saved.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image


def reference_orbit(
    params: np.ndarray, points: int, weight_row: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Official ``set_param`` + ``calculate(points)``: the orbit as Python float lists."""
    weight = [1.0] * 6 if weight_row is None else [float(w) for w in weight_row]
    function, select_function, temp_proba = [], [], 0.0
    for param in params:
        a, b, c, d, e, f, proba = (float(v) for v in param)
        a *= weight[0]
        b *= weight[1]
        c *= weight[2]
        d *= weight[3]
        e *= weight[4]
        f *= weight[5]
        function.append({"a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "proba": proba})
        temp_proba += proba
        select_function.append(temp_proba)
    rand = np.random.RandomState(100).random_sample(points)  # == np.random.seed(100); random()
    prev_x, prev_y = 0.0, 0.0
    xs, ys = [prev_x], [prev_y]
    for i in range(points - 1):
        for j in range(len(select_function)):
            if rand[i] <= select_function[j]:
                next_x = prev_x * function[j]["a"] + prev_y * function[j]["b"] + function[j]["e"]
                next_y = prev_x * function[j]["c"] + prev_y * function[j]["d"] + function[j]["f"]
                break
        xs.append(next_x)
        ys.append(next_y)
        prev_x = next_x
        prev_y = next_y
    return xs, ys


def reference_points(
    params: np.ndarray,
    size: int,
    points: int,
    weight_row: Sequence[float] | None = None,
    pad: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """Official orbit + ``__rescale``: uint16 pixel x and y."""
    xs, ys = reference_orbit(params, points, weight_row)
    return _reference_rescale(xs, ys, size, size, pad, pad)


def _reference_rescale(xs_list, ys_list, image_x, image_y, pad_x, pad_y):
    """Official ``__rescale`` (the NaN branch is the official one, warnings aside)."""
    xs = np.array(xs_list)
    ys = np.array(ys_list)
    with np.errstate(all="ignore"):
        if np.any(np.isnan(xs)):
            nan_index = np.where(np.isnan(xs))
            extend = np.array(range(nan_index[0][0] - 100, nan_index[0][0]))
            delete_row = np.append(extend, nan_index)
            xs = np.delete(xs, delete_row, axis=0)
            ys = np.delete(ys, delete_row, axis=0)
        if np.any(np.isnan(ys)):
            nan_index = np.where(np.isnan(ys))
            extend = np.array(range(nan_index[0][0] - 100, nan_index[0][0]))
            delete_row = np.append(extend, nan_index)
            xs = np.delete(xs, delete_row, axis=0)
            ys = np.delete(ys, delete_row, axis=0)
        if np.min(xs) < 0.0:
            xs -= np.min(xs)
        if np.min(ys) < 0.0:
            ys -= np.min(ys)
        xmax, xmin, ymax, ymin = np.max(xs), np.min(xs), np.max(ys), np.min(ys)
        out_x = np.uint16(xs / (xmax - xmin) * float(image_x - 2 * pad_x) + float(pad_x))
        out_y = np.uint16(ys / (ymax - ymin) * float(image_y - 2 * pad_y) + float(pad_y))
    return out_x, out_y


def reference_color(color: int, n_div: int = 128) -> tuple:
    """Official ``convert_color`` (tuple order as returned, stored as R, G, B)."""
    S = 0.75
    H = 2.0 * math.pi * (float(color % n_div) / float(n_div))
    if H >= 2.0 * math.pi:  # noqa: SIM300 - the official comparison
        H -= 2.0 * math.pi
    h = math.floor((3.0 / math.pi) * H)
    I = 0.75  # noqa: E741
    P = I * (1.0 - S)
    Q = I * (1.0 - S * ((3.0 / math.pi) * H - h))
    T = I * (1.0 - S * ((1.0 - (3.0 / math.pi) * H) + h))
    # The official code rebinds I, P, Q, T to these uint8 values; new names keep one type each.
    I8, P8, Q8, T8 = (np.uint8(v * 255.0) for v in (I, P, Q, T))
    return [(P8, T8, I8), (P8, I8, Q8), (T8, I8, P8), (I8, Q8, P8), (I8, P8, T8), (Q8, P8, I8)][h]


def _make_patch3_3(mask: str, patch_color) -> Image.Image:
    """Official ``make_patch3_3``: a 3x3 RGB patch, pixel (i, j) lit by bit ``mask[i*3+j]``."""
    patch_color = np.array(patch_color)
    patch = np.zeros((3, 3, 3), np.uint8)
    for i in range(0, 3):
        for j in range(0, 3):
            patch[i, j, :] = patch_color * int(mask[i * 3 + j])
    return Image.fromarray(patch)


def _transpose(image: Image.Image, trans_type: int) -> Image.Image:
    """Official ``__transpose`` (the FractalDB flips 0..3)."""
    if trans_type in (1, 3):
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if trans_type in (2, 3):
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def reference_render(
    params: np.ndarray,
    size: int = 362,
    points: int = 200_000,
    draw: str = "patch_gray",
    masks: Iterable[int] | None = None,
    weight_row: Sequence[float] | None = None,
    flip: int = 0,
    pad: int = 6,
) -> np.ndarray:
    """Official ``draw_point`` / ``draw_patch``, one point at a time: (size, size, 3) uint8.

    ``masks`` yields the patch integers (1..511) the official code takes from
    ``random.randrange(1, 512)``; by default a ``random.Random(0)`` stream.
    """
    xs, ys = reference_points(params, size, points, weight_row, pad)
    color = draw.endswith("color")
    if draw.startswith("point"):
        image = np.array(Image.new("RGB", (size, size)))
        for i in range(len(xs)):
            image[ys[i], xs[i], :] = reference_color(i, 128) if color else (127, 127, 127)
        picture = Image.fromarray(image)
    else:
        stream = iter(masks) if masks is not None else _python_masks(random.Random(0))
        picture = Image.new("RGB", (size, size))
        for i in range(len(xs)):
            mask_pattern = f"{next(stream):09b}"
            patch_color = [reference_color(i, 128)] if color else [127, 127, 127]
            picture.paste(_make_patch3_3(mask_pattern, patch_color), (xs[i] + 1, ys[i] + 1))
    picture = picture.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return np.array(_transpose(picture, flip))


def _python_masks(generator: random.Random) -> Iterator[int]:
    """The official mask stream: ``randrange(1, 512)`` forever."""
    while True:
        yield generator.randrange(1, 512)
