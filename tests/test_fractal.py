"""Fractal generator: official-compatible search, renderer == literal reference, writers,
determinism and the on-the-fly dataset."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagefit.datasets.fractal.dataset import (
    OFDB_OFFICIAL_WEIGHT_ROW,
    FractalDataset,
    read_params,
    read_weights,
    render,
    search_categories,
    write_fractaldb,
    write_ofdb,
    write_params,
)
from imagefit.datasets.fractal.render import chaos_game, official_point_sequence, random_masks
from imagefit.datasets.fractal.search import official_fill_rate
from imagefit.errors import DataError

from helpers.fractal_reference import reference_orbit, reference_render

OFFICIAL_DIR = Path(__file__).parent / "data" / "fractaldb1k-official-params"  # the official CSVs
# SHA-256 of the official 00000.csv .. 00009.csv: the files above must be the official ones.
OFFICIAL_SHA256 = [
    "2fe76fe188a5ea3084890f576a74d92b6316f71e3e15785c7dc70458f448d34b",
    "4473d595c53f7c8e1bc657c07194d521b097ac90cb83d448ebad3a5d9d6eaef9",
    "01be2e15a379d149a0d13b1c554f814a2ad57b7fa8cd27b599beac668bbf936e",
    "7868d719bd325031383873208e9fcf454d0d4e451ebb964948addb1608aa37fd",
    "f0876ebf11792b68a81522d17af9b2c23a20b6b4c513e877338583b0310e05a6",
    "325338dab301b56a74f279d84549782d3fed877569cd54f290d3a721bf9be134",
    "abf0a607f2613a4fdb48c751579f614f087f0b9ce3c99381e4d4038ed8240942",
    "1bf89caac01a8950993c994400f4d6f0c3b658857251523c25dcb7ce5447a865",
    "71bc086121ddad990e4cf6f7d31ca91e6f4ee7f5166181d751783b5ec7eb80e3",
    "a4d6287683f859f3ab25a53ba4f5e29e373cce705bf1b69df9d5d8e4bf872efc",
]
POINTS = 20_000  # enough for every code path; the literal reference costs ~25 us per point


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official-compatible search of 10 categories, written as CSV files."""
    folder = tmp_path_factory.mktemp("official-params")
    write_params(search_categories(10, compat="official", progress=False), folder)
    return folder


@pytest.fixture(scope="module")
def official_params(official_dir: Path) -> list[np.ndarray]:
    return read_params(official_dir)


def small_params_dir(official_dir: Path, target: Path, count: int = 3) -> Path:
    """The first ``count`` official categories in their own folder."""
    target.mkdir(parents=True)
    for path in sorted(official_dir.glob("*.csv"))[:count]:
        shutil.copy(path, target / path.name)
    return target


def file_digests(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# ------------------------------------------------------------------------------ search


def test_official_search_reproduces_official_csv_bytes(official_dir: Path) -> None:
    names = [f"{index:05d}.csv" for index in range(10)]
    assert sorted(p.name for p in official_dir.iterdir()) == names
    for name, expected in zip(names, OFFICIAL_SHA256, strict=True):
        data = (official_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == expected, name
        assert data == (OFFICIAL_DIR / name).read_bytes(), name


def test_chaos_game_is_bitwise_the_official_float64_loop(official_params: list[np.ndarray]) -> None:
    for params, row in [(official_params[0], None), (official_params[4], OFDB_OFFICIAL_WEIGHT_ROW)]:
        maps = params.copy()
        if row is not None:
            maps[:, :6] *= np.asarray(row)
        xs, ys = chaos_game(maps, official_point_sequence(POINTS))
        ref_x, ref_y = reference_orbit(params, POINTS, row)
        assert xs.view(np.uint64).tolist() == np.array(ref_x).view(np.uint64).tolist()
        assert ys.view(np.uint64).tolist() == np.array(ref_y).view(np.uint64).tolist()


def test_fast_search_is_deterministic_and_valid() -> None:
    first = search_categories(6, seed=7, progress=False, workers=1)
    again = search_categories(6, seed=7, progress=False, workers=2)
    other = search_categories(6, seed=8, progress=False)
    assert len(first) == 6
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=False))
    uniforms = official_point_sequence(100_000)
    for params in first:
        a, b, c, d = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
        assert 2 <= len(params) <= 7 and np.all(np.abs(params[:, :6]) <= 1.0)
        np.testing.assert_allclose(
            params[:, 6], np.abs(a * d - b * c) / np.abs(a * d - b * c).sum()
        )
        # accepted on its own point stream; on the official one the attractor fills alike
        assert official_fill_rate(params, uniforms) >= 0.16


def test_params_round_trip_exactly(tmp_path: Path, official_params: list[np.ndarray]) -> None:
    paths = write_params(official_params[:3], tmp_path / "p")
    assert [p.name for p in paths] == ["00000.csv", "00001.csv", "00002.csv"]
    first_line = paths[0].read_text().splitlines()[0].split(",")
    assert len(first_line) == 7 and all("e" in field and len(field) >= 24 for field in first_line)
    for written, read in zip(official_params[:3], read_params(tmp_path / "p"), strict=True):
        assert written.tobytes() == read.tobytes()


def test_bad_input_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing-dir"):
        read_params(tmp_path / "missing-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv"):
        read_params(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.csv").write_text("0.1,0.2,0.3,0.4,0.5,0.6,1.0\n0.1,0.2,oops,0.4,0.5,0.6,0\n")
    with pytest.raises(DataError, match=r"00000\.csv, line 2"):
        read_params(bad)
    with pytest.raises(DataError, match=r"00000\.csv, line 2"):
        write_ofdb(bad, tmp_path / "out", progress=False)
    (tmp_path / "w.csv").write_text("1,1,1,1,1\n")
    with pytest.raises(DataError, match=r"w\.csv, line 1"):
        read_weights(tmp_path / "w.csv")
    with pytest.raises(DataError, match="draw mode"):
        render(np.array([[0.5, 0, 0, 0.5, 0, 0, 1.0]]), draw="sparkle")


# ------------------------------------------------------------------------------ render


@pytest.mark.parametrize("index", [0, 3, 8])
def test_point_mode_matches_reference_pixel_for_pixel(
    official_params: list[np.ndarray], index: int
) -> None:
    fast = render(official_params[index], 362, POINTS, "point_gray")
    slow = reference_render(official_params[index], 362, POINTS, "point_gray")
    assert fast.shape == (362, 362, 3) and fast.dtype == np.uint8
    assert set(np.unique(fast).tolist()) == {0, 127}
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize(("index", "row", "flip"), [(1, None, 0), (4, OFDB_OFFICIAL_WEIGHT_ROW, 3)])
def test_patch_mode_matches_reference_with_fixed_masks(
    official_params: list[np.ndarray], index: int, row: tuple | None, flip: int
) -> None:
    masks = random_masks(np.random.default_rng(index), POINTS)
    fast = render(
        official_params[index], 362, POINTS, "patch_gray", weight_row=row, flip=flip, masks=masks
    )
    slow = reference_render(
        official_params[index], 362, POINTS, "patch_gray", masks.tolist(), weight_row=row, flip=flip
    )
    np.testing.assert_array_equal(fast, slow)
    assert (fast == 127).any() and (fast == 0).any()


def test_color_modes_match_reference(official_params: list[np.ndarray]) -> None:
    masks = random_masks(np.random.default_rng(5), 5_000)
    for draw in ("point_color", "patch_color"):
        fast = render(official_params[6], 128, 5_000, draw, masks=masks, flip=2)
        slow = reference_render(official_params[6], 128, 5_000, draw, masks.tolist(), flip=2)
        np.testing.assert_array_equal(fast, slow)
        assert len(np.unique(fast.reshape(-1, 3), axis=0)) > 10  # a colour ramp, not grey


def test_official_quirks_are_options(official_params: list[np.ndarray]) -> None:
    params = official_params[2]
    base = render(params, 96, 5_000, "patch_gray", rng=1)
    assert np.array_equal(render(params, 96, 5_000, "patch_gray", rng=1), base)
    assert not np.array_equal(render(params, 96, 5_000, "patch_gray", rng=2), base)
    # point_seed=100: every instance shares one point sequence, so point images are equal
    assert np.array_equal(
        render(params, 96, 5_000, "point_gray", rng=1),
        render(params, 96, 5_000, "point_gray", rng=2),
    )
    assert not np.array_equal(
        render(params, 96, 5_000, "point_gray", rng=1, point_seed=None),
        render(params, 96, 5_000, "point_gray", rng=2, point_seed=None),
    )
    assert np.array_equal(render(params, 96, 5_000, rng=1, vflip=False), base[::-1])
    assert np.array_equal(render(params, 96, 5_000, rng=1, flip=1), base[::-1])
    assert np.array_equal(render(params, 96, 5_000, rng=1, flip=2), base[:, ::-1])
    assert np.array_equal(render(params, 96, 5_000, rng=1, flip=3), base[::-1, ::-1])
    weighted = render(params, 96, 5_000, rng=1, weight_row=OFDB_OFFICIAL_WEIGHT_ROW)
    assert not np.array_equal(weighted, base)
    for keep_aspect, spans in [(False, [84, 84]), (True, [84, 69])]:  # pad 6: 96 - 12 = 84
        image = render(params, 96, 5_000, "point_gray", keep_aspect=keep_aspect, burn_in=100)
        rows, cols = np.nonzero(image[..., 0])
        assert sorted([np.ptp(rows), np.ptp(cols)], reverse=True) == spans


# ------------------------------------------------------------------------------ writers


def test_write_ofdb_png_layout_and_worker_determinism(official_dir: Path, tmp_path: Path) -> None:
    params = small_params_dir(official_dir, tmp_path / "params")
    one = write_ofdb(params, tmp_path / "one", points=POINTS, workers=1, progress=False)
    two = write_ofdb(params, tmp_path / "two", points=POINTS, workers=2, progress=False)
    assert one == two == 3
    digests = file_digests(tmp_path / "one")
    assert list(digests) == [f"{i:05d}/{i:05d}_00_count_0_flip0.png" for i in range(3)]
    assert digests == file_digests(tmp_path / "two")
    dataset = FractalDataset(params, points=POINTS)
    for index, name in enumerate(digests):
        with Image.open(tmp_path / "one" / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (362, 362)
            pixels = np.asarray(image)
        assert set(np.unique(pixels).tolist()) == {0, 127}
        assert np.array_equal(pixels, dataset.render_array(index)[0])  # files == on the fly


def test_write_ofdb_ppm_matches_png(official_dir: Path, tmp_path: Path) -> None:
    params = small_params_dir(official_dir, tmp_path / "params", count=2)
    write_ofdb(params, tmp_path / "png", size=64, points=3_000, workers=1, progress=False)
    write_ofdb(params, tmp_path / "ppm", size=64, points=3_000, fmt="ppm", progress=False)
    for index in range(2):
        name = f"{index:05d}/{index:05d}_00_count_0_flip0"
        ppm = tmp_path / "ppm" / f"{name}.ppm"
        assert ppm.read_bytes().startswith(b"P6")
        with Image.open(ppm) as image, Image.open(tmp_path / "png" / f"{name}.png") as png:
            assert image.size == (64, 64) and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), np.asarray(png))


def test_write_fractaldb_official_names_and_flips(official_dir: Path, tmp_path: Path) -> None:
    params = small_params_dir(official_dir, tmp_path / "params", count=2)
    weights = tmp_path / "weights.csv"
    weights.write_bytes(b"0.2,1,1,1,1,1\r\n1,1,1,1,1,1")  # CRLF, no final newline: official
    written = write_fractaldb(
        params,
        tmp_path / "db",
        weights,
        instances=2,
        flips=4,
        size=64,
        points=3_000,
        workers=2,
        progress=False,
    )
    assert written == 2 * 2 * 2 * 4
    names = sorted(p.name for p in (tmp_path / "db" / "00001").iterdir())
    assert names == sorted(
        f"00001_{r:02d}_count_{c}_flip{f}.png" for r in range(2) for c in range(2) for f in range(4)
    )

    def load(name: str) -> np.ndarray:
        with Image.open(tmp_path / "db" / "00001" / name) as image:
            return np.asarray(image)

    base = load("00001_01_count_0_flip0.png")
    assert np.array_equal(load("00001_01_count_0_flip1.png"), base[::-1])
    assert np.array_equal(load("00001_01_count_0_flip2.png"), base[:, ::-1])
    assert np.array_equal(load("00001_01_count_0_flip3.png"), base[::-1, ::-1])
    assert not np.array_equal(load("00001_01_count_1_flip0.png"), base)  # new patch masks
    assert not np.array_equal(load("00001_00_count_0_flip0.png"), base)  # other weight row


# ------------------------------------------------------------------------------ dataset


def test_fractal_dataset_is_deterministic(official_params: list[np.ndarray]) -> None:
    kwargs = {"size": 48, "points": 3_000, "instances_per_class": 2, "seed": 3}
    dataset = FractalDataset(official_params[:4], **kwargs)
    assert len(dataset) == 8 and dataset.classes == ["00000", "00001", "00002", "00003"]
    image, label = dataset[5]
    assert isinstance(image, Image.Image) and image.size == (48, 48) and label == 1
    again = FractalDataset(official_params[:4], **kwargs)
    for index in (0, 5, 7):
        assert np.array_equal(np.asarray(dataset[index][0]), np.asarray(again[index][0]))
    assert not np.array_equal(np.asarray(dataset[1][0]), np.asarray(dataset[5][0]))
    reseeded = FractalDataset(official_params[:4], **{**kwargs, "seed": 4})
    assert not np.array_equal(np.asarray(dataset[5][0]), np.asarray(reseeded[5][0]))
    tensors = FractalDataset(official_params[:4], **kwargs, as_tensor=True, length=11)
    tensor, label = tensors[6]
    assert len(tensors) == 11 and label == 2 and tensors[10][1] == 2
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 48, 48)
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(dataset[6][0]))
    with pytest.raises(IndexError):
        dataset[8]
