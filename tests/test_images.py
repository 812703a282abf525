"""The bad-input policy for single image files: convert what is an image, refuse what is not."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefit.data.images import load_array, load_rgb, resize_center_crop
from imagefit.errors import DataError


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("mode", "fmt", "color"),
    [
        ("L", "PNG", 200),
        ("LA", "PNG", (200, 255)),
        ("RGBA", "PNG", (10, 20, 30, 128)),
        ("CMYK", "JPEG", (0, 0, 0, 0)),
        ("RGB", "BMP", (1, 2, 3)),
        ("RGB", "PPM", (4, 5, 6)),
        ("L", "PPM", 9),
        ("RGB", "WEBP", (7, 8, 9)),
        ("RGB", "TIFF", (10, 11, 12)),
    ],
)
def test_modes_become_rgb(tmp_path: Path, mode: str, fmt: str, color) -> None:
    path = _save(Image.new(mode, (12, 10), color), tmp_path / f"x.{fmt.lower()}", format=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (12, 10)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 3)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    path = _save(image, tmp_path / "p.png", transparency=0)
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [0, 0, 255]


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.full((4, 4), 65535, dtype=np.uint16)
    array[0, 0] = 32768
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    pixels = np.asarray(load_rgb(path))
    assert pixels[1, 1].tolist() == [255, 255, 255]
    assert pixels[0, 0, 0] == 128  # 32768 / 257 -> mid grey, not clipped to 255


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(image, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_rgb(path).size == (10, 20)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    good = _save(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)),
        tmp_path / "full.png",
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.png"):
        load_rgb(cut)


def test_non_image_names_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is text")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        load_rgb(fake)


def test_too_small_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (63, 80)), tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small\.png: image is 63x80.*min_size=64"):
        load_rgb(path, min_size=64)
    assert load_rgb(path, min_size=63).size == (63, 80)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (100, 100)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: warning zone (1x..2x)
    with pytest.raises(DataError, match="decompression bomb"):
        load_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # beyond 2x: Pillow's own error
    with pytest.raises(DataError, match="decompression bomb"):
        load_rgb(path)


def test_resize_center_crop_keeps_the_centre() -> None:
    array = np.zeros((10, 30, 3), dtype=np.uint8)
    array[:, 10:20] = 255  # the centre third is white
    out = np.asarray(resize_center_crop(Image.fromarray(array), 10))
    assert out.shape == (10, 10, 3)
    assert out.mean() > 250


def test_load_array_shape_and_dtype(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (40, 20), (9, 9, 9)), tmp_path / "a.png")
    array = load_array(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
