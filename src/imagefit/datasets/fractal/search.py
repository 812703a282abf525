"""FractalDB category search (random IFS systems filtered by filling rate) and parameter CSVs.

``compat="official"`` replays the official ``param_search/ifs_search.py`` draw for draw on a
legacy ``RandomState(seed)`` (the official ``np.random.seed(1)``), so its categories equal the
official CSV files byte for byte. ``compat="fast"`` (the default) applies the same acceptance
rule to systems drawn from a counter-based generator keyed by (seed, draw index): draws are
independent, so they are evaluated in parallel threads and the result depends only on the
seed, never on the thread count.
"""

from __future__ import annotations

import logging
import math
import time
from importlib import resources
from pathlib import Path

import numba
import numpy as np
from tqdm import tqdm

from imagefit.datasets.fractal.render import chaos_game, official_rescale, select_map
from imagefit.errors import DataError
from imagefit.fileio import make_dirs

logger = logging.getLogger(__name__)

SEARCH_SIZE = 512  # the official search draws each candidate on a 512 x 512 canvas
SEARCH_PAD = 6
SEARCH_POINTS = 100_000
MAX_MAPS = 7  # randint(2, 8) maps per system
COMPAT_MODES = ("fast", "official")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _progress(total: int, enabled: bool, desc: str) -> tqdm:
    """A tqdm bar that stays quiet when disabled or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit="category", disable=None if enabled else True)


# ---------------------------------------------------------------- official-compatible search


def official_draw(rs: np.random.RandomState) -> np.ndarray:
    """One candidate system, consuming ``rs`` exactly like the official search loop."""
    param_size = rs.randint(2, 8)
    params = np.zeros((param_size, 7), dtype=float)
    sum_proba = 0.0
    for i in range(param_size):
        a, b, c, d, e, f = rs.uniform(-1.0, 1.0, 6)
        prob = abs(a * d - b * c)
        sum_proba += prob
        params[i, 0:7] = a, b, c, d, e, f, prob
    for i in range(param_size):
        params[i, 6] /= sum_proba
    return params


def official_fill_rate(params: np.ndarray, uniforms: np.ndarray) -> float:
    """Filling rate of the official 512-px single-pixel drawing (0 when it cannot be drawn)."""
    xs, ys = official_rescale(*chaos_game(params, uniforms), SEARCH_SIZE, SEARCH_SIZE, SEARCH_PAD)
    if xs.size == 0 or xs.max() >= SEARCH_SIZE or ys.max() >= SEARCH_SIZE:
        return 0.0  # the official script would crash on this draw; no seed-1 category does
    lit = np.zeros(SEARCH_SIZE * SEARCH_SIZE, dtype=bool)
    lit[ys.astype(np.int64) * SEARCH_SIZE + xs] = True
    return np.count_nonzero(lit) / float(SEARCH_SIZE * SEARCH_SIZE)


def _search_official(
    n_categories: int, fill_rate: float, seed: int, points: int, bar: tqdm
) -> tuple[list[np.ndarray], int]:
    """Sequential official search; returns the categories and the number of draws."""
    rs = np.random.RandomState(seed)
    found: list[np.ndarray] = []
    draws = 0
    while len(found) < n_categories:
        params = official_draw(rs)
        uniforms = rs.random_sample(points)  # the official `calculate` draws these next
        draws += 1
        if official_fill_rate(params, uniforms) >= fill_rate:
            found.append(params)
            bar.update(1)
    return found, draws


# ------------------------------------------------------------------------- fast search


@numba.njit(inline="always")
def _mix64(z):
    """SplitMix64 finaliser: a bijective 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _next_uniform(state):
    """Advance a SplitMix64 state; return (new state, uniform double in [0, 1))."""
    state = state + _GOLDEN
    return state, float(_mix64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def _fast_candidate(key, draw, maps):
    """Fill ``maps`` (MAX_MAPS x 7) with draw ``draw``'s system; return (n_maps, stream)."""
    state = _mix64(key ^ _mix64(np.uint64(draw) + _GOLDEN))
    state, u = _next_uniform(state)
    n_maps = 2 + min(int(u * 6.0), 5)
    total = 0.0
    for i in range(n_maps):
        for k in range(6):
            state, u = _next_uniform(state)
            maps[i, k] = 2.0 * u - 1.0
        maps[i, 6] = abs(maps[i, 0] * maps[i, 3] - maps[i, 1] * maps[i, 2])
        total += maps[i, 6]
    for i in range(n_maps):
        maps[i, 6] /= total
    return n_maps, state


@numba.njit(cache=True)
def _advance(maps, cumulative, state, xs, ys, start, stop):
    """Fill points start..stop-1 of the orbit from point start-1; stop early at the first
    non-finite point. Returns (state, index of the first point not written)."""
    x, y = xs[start - 1], ys[start - 1]
    n_maps = cumulative.shape[0]
    for i in range(start, stop):
        state, u = _next_uniform(state)
        j = min(select_map(u, cumulative, True), n_maps - 1)
        next_x = x * maps[j, 0] + y * maps[j, 1] + maps[j, 4]
        y = x * maps[j, 2] + y * maps[j, 3] + maps[j, 5]
        x = next_x
        if not (math.isfinite(x) and math.isfinite(y)):
            return state, i
        xs[i] = x
        ys[i] = y
    return state, stop


@numba.njit(cache=True)
def _distinct_pixels(xs, ys, count, lit, pad):
    """Pixels lit by the first ``count`` points drawn the official way on the zeroed square
    canvas ``lit`` (shift by the minimum, stretch each axis to [pad, size - pad], truncate);
    -1 when they cannot be drawn."""
    size = lit.shape[0]
    xmin, xmax = xs[:count].min(), xs[:count].max()
    ymin, ymax = ys[:count].min(), ys[:count].max()
    span_x, span_y = xmax - xmin, ymax - ymin
    if not (0.0 < span_x < math.inf and 0.0 < span_y < math.inf):
        return -1  # a flat orbit, or one so wide that the scaling overflows
    inner = float(size - 2 * pad)
    lit_count = 0
    for i in range(count):
        fx = (xs[i] - xmin) / span_x * inner + pad
        fy = (ys[i] - ymin) / span_y * inner + pad
        if not (0.0 <= fx < size and 0.0 <= fy < size):
            return -1  # compiled code has no bounds checks: refuse instead of overrunning
        px, py = int(fx), int(fy)
        lit_count += 1 - lit[py, px]
        lit[py, px] = 1
    return lit_count


@numba.njit(cache=True)
def _fast_fill_rate(maps, n_maps, state, points, pad, fill_rate, xs, ys, lit):
    """The official acceptance measure of one system, its uniforms drawn on the fly
    (``xs``, ``ys``, ``lit``: reusable buffers of ``points`` and size x size).

    Early rejection: after the first tenth of the orbit, a system whose distinct-pixel rate
    is below the average rate the whole orbit needs is rejected without finishing (distinct
    rates only fall as the attractor fills; over 20,000 seeded draws this never rejected a
    system that passes, while it stops ~45% of the draws early). A diverging orbit keeps its
    points up to 100 before the first non-finite one (the official NaN rule).
    """
    size = lit.shape[0]
    xs[0] = ys[0] = 0.0
    cumulative = np.cumsum(maps[:n_maps, 6])
    checkpoint = max(points // 10, 2)
    state, end = _advance(maps, cumulative, state, xs, ys, 1, checkpoint)
    if end == checkpoint:
        needed = fill_rate * size * size * checkpoint / points
        lit[:] = 0
        if _distinct_pixels(xs, ys, checkpoint, lit, pad) < needed:
            return 0.0
        state, end = _advance(maps, cumulative, state, xs, ys, checkpoint, points)
    keep = end if end == points else end - 100
    if keep < 2:
        return 0.0
    lit[:] = 0
    return max(_distinct_pixels(xs, ys, keep, lit, pad), 0) / float(size * size)


_CHUNK = 16  # draws per parallel task: buffers are allocated once per chunk, not per draw


@numba.njit(parallel=True, cache=True)
def _fast_batch(key, first, count, points, fill_rate, maps_out, n_out, fill_out):
    """Evaluate draws first .. first+count-1 in parallel (each depends only on key, draw)."""
    for chunk in numba.prange((count + _CHUNK - 1) // _CHUNK):
        xs = np.empty(points)
        ys = np.empty(points)
        lit = np.empty((SEARCH_SIZE, SEARCH_SIZE), np.uint8)
        for k in range(chunk * _CHUNK, min(count, (chunk + 1) * _CHUNK)):
            n_maps, state = _fast_candidate(key, first + k, maps_out[k])
            n_out[k] = n_maps
            fill_out[k] = _fast_fill_rate(
                maps_out[k], n_maps, state, points, SEARCH_PAD, fill_rate, xs, ys, lit
            )


def _search_fast(
    n_categories: int, fill_rate: float, seed: int, points: int, bar: tqdm, batch: int = 256
) -> tuple[list[np.ndarray], int]:
    """Batched parallel search; categories are taken in draw order, so the thread count does
    not change the result."""
    key = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    found: list[np.ndarray] = []
    first = 0
    maps = np.zeros((batch, MAX_MAPS, 7))
    n_maps = np.zeros(batch, np.int64)
    fills = np.zeros(batch)
    while len(found) < n_categories:
        _fast_batch(key, first, batch, points, fill_rate, maps, n_maps, fills)
        for k in np.flatnonzero(fills >= fill_rate)[: n_categories - len(found)]:
            found.append(maps[k, : n_maps[k]].copy())
            bar.update(1)
        first += batch
    return found, first


def search_categories(
    n_categories: int,
    fill_rate: float = 0.2,
    seed: int = 1,
    compat: str = "fast",
    progress: bool = True,
    *,
    points: int = SEARCH_POINTS,
    workers: int | None = None,
) -> list[np.ndarray]:
    """Search ``n_categories`` IFS categories whose 512-px drawing fills >= ``fill_rate``.

    Each category is an N x 7 array (a, b, c, d, e, f, p), 2 <= N <= 7. ``compat="official"``
    reproduces the official search (seed 1 gives the official FractalDB-1k categories);
    ``"fast"`` is parallel over ``workers`` threads (default: all cores) and deterministic
    from ``seed``.
    """
    if compat not in COMPAT_MODES:
        raise DataError(f"unknown search mode {compat!r}; choose one of {', '.join(COMPAT_MODES)}")
    if n_categories < 0 or not 0.0 < fill_rate <= 1.0 or points < 2:
        raise DataError(
            f"need categories >= 0, 0 < fill rate <= 1 and points >= 2, got {n_categories}, "
            f"{fill_rate}, {points}"
        )
    start = time.perf_counter()
    previous_threads = numba.get_num_threads()
    if workers is not None:
        # numba.config defines its options through globals() at import, invisible to mypy
        limit = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        numba.set_num_threads(max(1, min(workers, limit)))
    try:
        with _progress(n_categories, progress, f"fractal search ({compat})") as bar:
            search = _search_official if compat == "official" else _search_fast
            found, draws = search(n_categories, fill_rate, seed, points, bar)
    finally:
        numba.set_num_threads(previous_threads)
    logger.info(
        "found %d fractal categories in %d draws (%s, seed %d) in %.1f s",
        len(found),
        draws,
        compat,
        seed,
        time.perf_counter() - start,
    )
    return found


# ------------------------------------------------------------------------ parameter files


def write_params(params: list[np.ndarray], out_dir: str | Path) -> list[Path]:
    """Write ``00000.csv``, ``00001.csv``... in the official format (``np.savetxt``, %.18e)."""
    out = Path(out_dir)
    make_dirs(out)
    paths = []
    for index, category in enumerate(params):
        path = out / f"{index:05d}.csv"
        np.savetxt(path, np.asarray(category, dtype=np.float64), delimiter=",")
        paths.append(path)
    logger.info("wrote %d fractal parameter files to %s", len(paths), out)
    return paths


def read_number_rows(path: str | Path, columns: int, what: str) -> np.ndarray:
    """Parse a headerless CSV of ``columns`` finite numbers per row (CRLF and a missing last
    newline allowed); raise DataError naming the file and line otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {what} file {path}: {error}") from error
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(field) for field in line.split(",")]
        except ValueError:
            row = []
        if len(row) != columns or not all(math.isfinite(v) for v in row):
            raise DataError(
                f"{path}, line {line_number}: expected {columns} comma-separated numbers "
                f"({what}), got {line.strip()!r}"
            )
        rows.append(row)
    if not rows:
        raise DataError(f"{what} file {path} is empty")
    return np.array(rows, dtype=np.float64)


def list_param_files(params_dir: str | Path) -> list[Path]:
    """The category CSV files of ``params_dir``, sorted by name (the official order)."""
    folder = Path(params_dir)
    if not folder.is_dir():
        raise DataError(f"fractal parameter folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".csv" and p.is_file())
    if not files:
        raise DataError(f"fractal parameter folder {folder} holds no .csv files")
    return files


def read_param_file(path: str | Path) -> np.ndarray:
    """One category: N x 7 (a, b, c, d, e, f, p), exactly the values written."""
    return read_number_rows(path, 7, "fractal parameters a,b,c,d,e,f,p")


def read_params(params_dir: str | Path) -> list[np.ndarray]:
    """Every category of ``params_dir`` in file-name order."""
    return [read_param_file(path) for path in list_param_files(params_dir)]


def shipped_weights() -> dict[str, Path]:
    """The official FractalDB weight files that ship with imagefit, by name: "0.4" -> file."""
    folder = resources.files("imagefit.resources") / "fractal_weights"
    files = (Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".csv"))
    return {path.stem.removeprefix("weights_"): path for path in files}


def resolve_weights(name_or_path: str | Path) -> Path:
    """A weight file: an existing path, or the name of a shipped one ("0.4", "weights_0.4.csv")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_weights()
    key = path.stem.removeprefix("weights_") if path.suffix == ".csv" else str(name_or_path)
    if key in shipped:
        return shipped[key]
    names = ", ".join(sorted(shipped, key=float))
    raise DataError(
        f"weight file {name_or_path} not found; give a CSV file or one of the "
        f"official ones: {names}"
    )


def read_weights(path: str | Path) -> np.ndarray:
    """A FractalDB weight file: rows of 6 factors for a..f (e.g. ``weights_0.4.csv``); a bare
    name such as "0.4" reads the official file shipped with imagefit."""
    return read_number_rows(resolve_weights(path), 6, "weight factors for a,b,c,d,e,f")
