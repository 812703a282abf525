"""Fast FractalDB / 2D-OFDB renderer: the official chaos game, rescale and 3x3-patch stamping.

Every step reproduces the official implementation (Kataoka et al., ACCV 2020; Nakamura et al.,
ICCV 2023) bit for bit unless an option says otherwise; ``tests/helpers/fractal_reference.py``
holds the slow, literal per-point port that the tests compare this module against. The official quirks are
options whose defaults give the official behaviour:

- ``point_seed=100``: the point sequence comes from ``RandomState(100)``, so every instance of a
  category shares it (``None`` draws it from ``rng`` instead);
- no burn-in: the start point (0, 0) is kept (``burn_in=k`` drops the first ``k`` points);
- x and y are stretched independently to the canvas (``keep_aspect=True`` keeps the shape);
- ``weight_row`` multiplies a..f (``None`` = all ones; the official 2D-OFDB script used
  ``OFDB_OFFICIAL_WEIGHT_ROW``, which scales ``a`` by 0.2);
- ``vflip=True``: the canvas is flipped top-to-bottom before saving;
- patches: each point stamps a 3x3 patch whose 9 pixels are the bits of a random integer
  1..511 (the official ``'{:09b}'.format(random.randrange(1, 512))``), black bits included.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from PIL import Image

from imagefit.errors import DataError
from imagefit.fileio import make_dirs

DRAW_MODES = ("patch_gray", "point_gray", "patch_color", "point_color")
DRAW_ALIASES = {
    "color": "patch_color",
    "gray": "patch_gray",
    "patch": "patch_gray",
    "point": "point_gray",
}
IMAGE_FORMATS = ("png", "ppm")
OFDB_OFFICIAL_WEIGHT_ROW = (0.2, 1.0, 1.0, 1.0, 1.0, 1.0)  # row 0 of the official weights_0.4.csv
OFFICIAL_POINT_SEED = 100
OFFICIAL_PAD = 6
GRAY = 127
_SHARED_SEQUENCES = 4  # point sequences kept in memory (one per distinct length)


def normalize_draw(draw: str) -> str:
    """Return the official draw-mode name for ``draw`` (aliases: color, gray, patch, point)."""
    mode = DRAW_ALIASES.get(draw, draw)
    if mode not in DRAW_MODES:
        choices = ", ".join(DRAW_MODES + tuple(DRAW_ALIASES))
        raise DataError(f"unknown fractal draw mode {draw!r}; choose one of {choices}")
    return mode


@functools.lru_cache(maxsize=_SHARED_SEQUENCES)
def official_point_sequence(points: int, seed: int = OFFICIAL_POINT_SEED) -> np.ndarray:
    """The uniforms the official renderer draws after ``np.random.seed(seed)`` (read-only)."""
    sequence = np.random.RandomState(seed).random_sample(points)
    sequence.flags.writeable = False
    return sequence


@numba.njit(cache=True)
def cumulative_probabilities(maps: np.ndarray) -> tuple[np.ndarray, bool]:
    """Running sums of column 6 (the official sequential ``temp_proba += proba``) and whether
    they never decrease (true for any valid p >= 0)."""
    cumulative = np.empty(maps.shape[0])
    total = 0.0
    monotone = True
    for j in range(maps.shape[0]):
        total += maps[j, 6]
        monotone = monotone and (j == 0 or total >= cumulative[j - 1]) and total == total
        cumulative[j] = total
    return cumulative, monotone


@numba.njit(inline="always")
def select_map(u: float, cumulative: np.ndarray, monotone: bool) -> int:
    """Index of the first map whose cumulative probability is >= u (len when none is).

    For non-decreasing sums that index equals the count of sums below u, which is computed
    without data-dependent branches (a mispredicted branch per point costs ~40% of the time).
    """
    if monotone:
        j = 0
        for k in range(cumulative.shape[0]):
            j += cumulative[k] < u
        return j
    for k in range(cumulative.shape[0]):
        if u <= cumulative[k]:
            return k
    return cumulative.shape[0]


@numba.njit(cache=True)
def chaos_game(maps: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Iterate the IFS ``maps`` (N x 7: a,b,c,d,e,f,p) exactly like the official float64 code.

    Point 0 is (0, 0); point i+1 applies the first map whose cumulative probability is >=
    ``uniforms[i]`` (the last uniform is drawn but never used, as in the official code).
    Plain float64 multiply and add in the official order, no fused multiply-add: bitwise
    identical to the official Python loop.
    """
    n = uniforms.shape[0]
    xs = np.empty(n)
    ys = np.empty(n)
    if n == 0:
        return xs, ys
    cumulative, monotone = cumulative_probabilities(maps)
    x = 0.0
    y = 0.0
    xs[0] = x
    ys[0] = y
    for i in range(n - 1):
        j = select_map(uniforms[i], cumulative, monotone)
        # No map matches when rounding leaves the last sum below u: the official code then
        # re-appends its previous point, so x and y stay as they are.
        if j < maps.shape[0]:
            next_x = x * maps[j, 0] + y * maps[j, 1] + maps[j, 4]
            y = x * maps[j, 2] + y * maps[j, 3] + maps[j, 5]
            x = next_x
        xs[i + 1] = x
        ys[i + 1] = y
    return xs, ys


def _drop_diverged(values: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """The official NaN rule: delete the first NaN of ``values``, the 100 points before it and
    every NaN (the negative indices of ``range(k - 100, k)`` wrap onto NaN points too)."""
    nan_index = np.where(np.isnan(values))
    extend = np.array(range(nan_index[0][0] - 100, nan_index[0][0]))
    delete_row = np.append(extend, nan_index)
    return np.delete(xs, delete_row, axis=0), np.delete(ys, delete_row, axis=0)


def drop_diverged(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the official NaN rule to x, then to y (a no-op for orbits that stay finite)."""
    if np.any(np.isnan(xs)):
        xs, ys = _drop_diverged(xs, xs, ys)
    if np.any(np.isnan(ys)):
        xs, ys = _drop_diverged(ys, xs, ys)
    return xs, ys


def official_rescale(
    xs: np.ndarray, ys: np.ndarray, width: int, height: int, pad: int = OFFICIAL_PAD
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (uint16) exactly as the official ``__rescale``: drop diverged points,
    shift by the minimum only when it is negative, stretch x and y independently."""
    with np.errstate(all="ignore"):  # NaN/inf casts behave as in the official code, silently
        xs, ys = drop_diverged(xs, ys)
        if xs.size == 0:  # diverged within 100 points: the official code would crash here
            return np.zeros(0, np.uint16), np.zeros(0, np.uint16)
        if np.min(xs) < 0.0:  # same values as the official in-place `-=`, without mutating
            xs = xs - np.min(xs)
        if np.min(ys) < 0.0:
            ys = ys - np.min(ys)
        xmax, xmin, ymax, ymin = np.max(xs), np.min(xs), np.max(ys), np.min(ys)
        px = (xs / (xmax - xmin) * float(width - 2 * pad) + float(pad)).astype(np.uint16)
        py = (ys / (ymax - ymin) * float(height - 2 * pad) + float(pad)).astype(np.uint16)
    return px, py


def fitted_rescale(
    xs: np.ndarray, ys: np.ndarray, size: int, pad: int, keep_aspect: bool, burn_in: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-official rescale: official NaN rule, drop ``burn_in`` points, always shift by the
    minimum, and with ``keep_aspect`` one scale for both axes, centred."""
    xs, ys = drop_diverged(xs, ys)
    xs, ys = xs[burn_in:], ys[burn_in:]
    if xs.size == 0 or not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        return np.zeros(0, np.uint16), np.zeros(0, np.uint16)
    spans = np.array([np.ptp(xs), np.ptp(ys)])
    if keep_aspect:
        spans[:] = spans.max()
    inner = float(size - 2 * pad)
    scale = np.divide(inner, spans, out=np.zeros(2), where=spans > 0)  # flat axis: at the pad
    fx = (xs - xs.min()) * scale[0]
    fy = (ys - ys.min()) * scale[1]
    if keep_aspect:
        fx += (inner - fx.max()) / 2.0
        fy += (inner - fy.max()) / 2.0
    return (fx + pad).astype(np.uint16), (fy + pad).astype(np.uint16)


def weighted_maps(params: np.ndarray, weight_row: Sequence[float] | None) -> np.ndarray:
    """``params`` (N x 7) with a..f multiplied by ``weight_row`` (probabilities unchanged)."""
    maps = np.array(params, dtype=np.float64, order="C", copy=True)
    if maps.ndim != 2 or maps.shape[1] != 7 or maps.shape[0] < 1:
        raise DataError(f"fractal parameters must be an N x 7 array, got shape {maps.shape}")
    if weight_row is not None:
        row = np.asarray(weight_row, dtype=np.float64)
        if row.shape != (6,):
            raise DataError(f"a weight row has 6 factors (a..f), got {list(row)}")
        maps[:, :6] *= row
    return maps


def fractal_points(
    params: np.ndarray,
    size: int = 362,
    points: int = 200_000,
    weight_row: Sequence[float] | None = None,
    *,
    rng: np.random.Generator | None = None,
    point_seed: int | None = OFFICIAL_POINT_SEED,
    pad: int = OFFICIAL_PAD,
    keep_aspect: bool = False,
    burn_in: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y as uint16) of the IFS orbit on a ``size`` x ``size`` canvas."""
    maps = weighted_maps(params, weight_row)
    if point_seed is None:
        uniforms = (rng if rng is not None else np.random.default_rng()).random(points)
    else:
        uniforms = official_point_sequence(points, point_seed)
    xs, ys = chaos_game(maps, uniforms)
    if keep_aspect or burn_in:
        return fitted_rescale(xs, ys, size, pad, keep_aspect, burn_in)
    return official_rescale(xs, ys, size, size, pad)


def _official_color(index: int, n_div: int = 128) -> tuple[int, int, int]:
    """The official ``convert_color``: an HSV-like ramp over the point index (literal)."""
    saturation = 0.75
    hue = 2.0 * math.pi * (float(index % n_div) / float(n_div))
    if hue >= 2.0 * math.pi:
        hue -= 2.0 * math.pi
    h = math.floor((3.0 / math.pi) * hue)
    intensity = 0.75
    p = intensity * (1.0 - saturation)
    q = intensity * (1.0 - saturation * ((3.0 / math.pi) * hue - h))
    t = intensity * (1.0 - saturation * ((1.0 - (3.0 / math.pi) * hue) + h))
    i8, p8, q8, t8 = (int(np.uint8(v * 255.0)) for v in (intensity, p, q, t))
    return [(p8, t8, i8), (p8, i8, q8), (t8, i8, p8), (i8, q8, p8), (i8, p8, t8), (q8, p8, i8)][h]


@functools.lru_cache(maxsize=2)
def palette(draw: str) -> np.ndarray:
    """Colour of point i = ``palette[i % len(palette)]`` (uint8 RGB rows)."""
    if normalize_draw(draw).endswith("gray"):
        return np.full((1, 3), GRAY, np.uint8)
    return np.array([_official_color(i) for i in range(128)], np.uint8)


@numba.njit(cache=True)
def _stamp_points(plane, xs, ys, n_colors):
    """Point i sets pixel (ys[i], xs[i]) to colour index i % n_colors, plus 1 (0 = black);
    later points overwrite earlier ones."""
    height, width = plane.shape
    color = 0
    for i in range(xs.shape[0]):
        if ys[i] < height and xs[i] < width:
            plane[ys[i], xs[i]] = color + 1
        color = color + 1 if color + 1 < n_colors else 0  # i % n_colors without a division


@numba.njit(cache=True)
def _stamp_patches(plane, xs, ys, masks, n_colors):
    """Point i pastes a 3x3 patch at (x+1, y+1) like PIL ``paste``: bit 8 of masks[i] is the
    top-left pixel; 1-bits get colour index i % n_colors, plus 1, and 0-bits paste black (0);
    the canvas edge clips the patch."""
    height, width = plane.shape
    color = 0
    for i in range(xs.shape[0]):
        value = color + 1
        color = color + 1 if color + 1 < n_colors else 0
        mask = masks[i]
        for r in range(3):
            y = ys[i] + 1 + r
            if y < height:
                for c in range(3):
                    x = xs[i] + 1 + c
                    if x < width:
                        plane[y, x] = value if (mask >> (8 - 3 * r - c)) & 1 else 0


def random_masks(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` patch masks: uniform integers 1..511 (9 bits, never all black)."""
    return rng.integers(1, 512, size=count, dtype=np.int32)


def draw_canvas(
    xs: np.ndarray,
    ys: np.ndarray,
    size: int,
    draw: str = "patch_gray",
    masks: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Un-flipped (H, W, 3) uint8 canvas with the points drawn as pixels or 3x3 patches."""
    mode = normalize_draw(draw)
    colors = palette(mode)
    # Stamp colour indices into one uint8 plane (1 byte per pixel, not 3), then look the
    # colours up once: the same pixels as writing RGB per point, three times less traffic.
    plane = np.zeros((size, size), np.uint8)
    if mode.startswith("point"):
        _stamp_points(plane, xs, ys, colors.shape[0])
    else:
        if masks is None:
            masks = random_masks(rng if rng is not None else np.random.default_rng(), xs.shape[0])
        masks = np.ascontiguousarray(masks, dtype=np.int32)
        if masks.shape[0] < xs.shape[0]:
            raise DataError(f"{masks.shape[0]} patch masks for {xs.shape[0]} points")
        _stamp_patches(plane, xs, ys, masks, colors.shape[0])
    return np.concatenate([np.zeros((1, 3), np.uint8), colors])[plane]


def orient(canvas: np.ndarray, flip: int = 0, vflip: bool = True) -> np.ndarray:
    """The saved image: the official top-to-bottom flip (``vflip``), then FractalDB flip
    ``flip``: 0 none, 1 top-bottom, 2 left-right, 3 both."""
    if flip not in (0, 1, 2, 3):
        raise DataError(f"flip must be 0, 1, 2 or 3, got {flip!r}")
    image = canvas[::-1] if vflip else canvas
    if flip in (1, 3):
        image = image[::-1]
    if flip in (2, 3):
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A NumPy Generator from a Generator, an integer seed or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def render(
    params: np.ndarray,
    size: int = 362,
    points: int = 200_000,
    draw: str = "patch_gray",
    rng: np.random.Generator | int | None = 0,
    weight_row: Sequence[float] | None = None,
    flip: int = 0,
    *,
    masks: np.ndarray | None = None,
    point_seed: int | None = OFFICIAL_POINT_SEED,
    vflip: bool = True,
    keep_aspect: bool = False,
    burn_in: int = 0,
    pad: int = OFFICIAL_PAD,
) -> np.ndarray:
    """Render one fractal image, (size, size, 3) uint8 RGB, as the official scripts save it.

    ``rng`` (Generator or seed) draws the patch masks (and the points when ``point_seed`` is
    None); ``masks`` fixes the mask stream instead. See the module docstring for the quirks.
    """
    generator = as_generator(rng)
    xs, ys = fractal_points(
        params,
        size,
        points,
        weight_row,
        rng=generator,
        point_seed=point_seed,
        pad=pad,
        keep_aspect=keep_aspect,
        burn_in=burn_in,
    )
    canvas = draw_canvas(xs, ys, size, draw, masks=masks, rng=generator)
    return orient(canvas, flip, vflip)


# The per-category file writer lives here, not in ``fractal``, so that pool workers import
# only numpy, numba and Pillow (``fractal`` imports torch for the dataset: ~3 s per worker).


@dataclass(frozen=True)
class CategorySpec:
    """How to render one category's files (shared by the 2D-OFDB and FractalDB writers)."""

    out_dir: Path
    weight_rows: tuple[tuple[float, ...] | None, ...]
    instances: int = 1
    flips: int = 1
    size: int = 362
    points: int = 200_000
    draw: str = "patch_gray"
    fmt: str = "png"
    seed: int = 0
    # The official quirks, official by default (see the module docstring).
    keep_aspect: bool = False
    burn_in: int = 0
    vflip: bool = True


def category_key(name: str) -> int:
    """A stable integer for a category name: the number for '00042', else a CRC32 of it, so
    an image's random masks do not depend on which other categories are rendered with it."""
    return int(name) if name.isdigit() else zlib.crc32(name.encode("utf-8"))


def image_name(name: str, row: int, count: int, flip: int, fmt: str) -> str:
    """The official file name, e.g. ``00000_00_count_0_flip0.png``."""
    return f"{name}_{row:02d}_count_{count}_flip{flip}.{fmt}"


def save_image(image: np.ndarray, path: Path, fmt: str) -> None:
    """Write an RGB array as PNG or binary PPM (P6)."""
    Image.fromarray(image).save(path, format="PNG" if fmt == "png" else "PPM")


def write_category(name: str, params: np.ndarray, spec: CategorySpec) -> int:
    """Render and save every image of one category; return how many files were written.

    Per weight row the orbit is computed once (the official point sequence is shared by all
    instances); each instance then re-draws the patch masks from (seed, category, row, count).
    """
    folder = spec.out_dir / name
    make_dirs(folder)
    instances = 1 if normalize_draw(spec.draw).startswith("point") else spec.instances
    written = 0
    for row_index, row in enumerate(spec.weight_rows):
        xs, ys = fractal_points(
            params, spec.size, spec.points, row, keep_aspect=spec.keep_aspect, burn_in=spec.burn_in
        )
        for count in range(instances):
            rng = np.random.default_rng([spec.seed, category_key(name), row_index, count])
            canvas = draw_canvas(xs, ys, spec.size, spec.draw, rng=rng)
            for flip in range(spec.flips):
                target = folder / image_name(name, row_index, count, flip, spec.fmt)
                save_image(orient(canvas, flip, spec.vflip), target, spec.fmt)
                written += 1
    return written


def write_category_job(job: tuple[str, np.ndarray, CategorySpec]) -> int:
    """``write_category`` for a process pool (one picklable argument)."""
    return write_category(*job)
