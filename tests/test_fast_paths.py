"""Speed features keep results: fused/foreach optimizers, torch.compile, disk-backed cache
batches, the torchvision decoder, distributed sharding of batch lists, the cheaper norm."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagefit.config import FinetuneConfig, OptimConfig, config_from_dict
from imagefit.data import cache as cache_module
from imagefit.data.cache import decode_cached
from imagefit.data.decode import _jpeg_tensor, decode_array, load_array_torchvision
from imagefit.data.disk import DiskArraySource
from imagefit.data.images import load_array, load_rgb
from imagefit.data.loaders import ArraySource, Loader, StreamSource, build_data, make_source
from imagefit.errors import ConfigError, ImageError
from imagefit.models.simple_cnn import SimpleCNN
from imagefit.train import distributed
from imagefit.train.fit import fit
from imagefit.train.loop import grad_norm
from imagefit.train.optim import create_optimizer, kernel_options

from conftest import tiny_config, write_pattern_folder

# torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec (see decode.py).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", {"fused": True}),
        ("auto", "cpu", {"fused": True}),
        ("auto", "mps", {"foreach": True}),
        ("foreach", "cuda", {"foreach": True}),
        ("loop", "cuda", {"foreach": False}),
        ("fused", "cpu", {"fused": True}),
    ],
)
def test_optimizer_kernels_resolve_per_device(setting: str, device: str, expected: dict) -> None:
    assert kernel_options(setting, torch.device(device)) == expected


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimizer_steps_like_the_loop(name: str) -> None:
    steps = {}
    for implementation in ("auto", "loop"):
        torch.manual_seed(0)
        model = SimpleCNN(3)
        optimizer = create_optimizer(
            model, OptimConfig(name=name, implementation=implementation), FinetuneConfig()
        )
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 3, 16, 16)).square().mean().backward()
            optimizer.step()
        steps[implementation] = model.state_dict()
        assert bool(optimizer.defaults["fused"]) is (implementation == "auto")
    for key, value in steps["auto"].items():
        torch.testing.assert_close(value, steps["loop"][key], rtol=1e-5, atol=1e-6)


def test_fused_on_a_device_without_kernels_names_the_key() -> None:
    with pytest.raises(ConfigError, match="optim.implementation 'fused'"):
        kernel_options("fused", torch.device("meta"))


def test_grad_norm_leaves_gradients_alone() -> None:
    model = SimpleCNN(3)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = grad_norm(list(model.parameters()), None)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters(), strict=True))
    assert torch.allclose(norm, torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))


def test_compile_option_trains_the_same(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inductor needs minutes on a 2-core CPU; the eager backend runs dynamo's capture, which is
    # what train.compile wires in, and must leave the numbers unchanged.
    compiled, real_compile = [], torch.compile

    def eager_compile(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return real_compile(module, backend="eager")

    plain = fit(tiny_config(pattern_root, tmp_path / "a", train={"epochs": 1}))
    monkeypatch.setattr(distributed.torch, "compile", eager_compile, raising=True)
    with_compile = fit(
        tiny_config(pattern_root, tmp_path / "b", train={"epochs": 1, "compile": True})
    )
    monkeypatch.undo()
    assert compiled and isinstance(compiled[0], SimpleCNN)
    assert plain.history[0]["train_loss"] == with_compile.history[0]["train_loss"]
    a = torch.load(plain.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(with_compile.run_dir / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # no _orig_mod. prefix


def _epoch_batches(loader: Loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch))


def test_disk_batches_equal_memory_batches(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "big", classes=3, per_class=12, size=128)
    memory = build_data(
        tiny_config(root, tmp_path, data={"image_size": 128, "cache": "always"}),
        torch.device("cpu"),
    )
    disk = build_data(
        tiny_config(root, tmp_path, data={"image_size": 128, "cache": "mmap"}), torch.device("cpu")
    )
    over = build_data(
        tiny_config(
            root, tmp_path, data={"image_size": 128, "cache": "always", "memory_budget_mb": 1}
        ),
        torch.device("cpu"),
    )
    assert isinstance(memory.train.source, ArraySource)
    assert isinstance(disk.train.source, DiskArraySource) and isinstance(
        over.train.source, DiskArraySource
    )
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(
            _epoch_batches(memory.train, epoch), _epoch_batches(disk.train, epoch), strict=True
        ):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(memory.val, over.val, strict=True))


def test_auto_over_the_budget_reads_the_cache_file_per_batch(tmp_path: Path) -> None:
    """data.cache=auto: a dataset over data.memory_budget_mb is decoded into the cache file,
    without ever holding the whole array, and each batch is read from it."""
    root = write_pattern_folder(tmp_path / "big", classes=3, per_class=12, size=256)
    data = {"image_size": 256, "cache_dir": str(tmp_path / "cache")}
    within = build_data(tiny_config(root, tmp_path, data=data), torch.device("cpu"))
    shutil.rmtree(tmp_path / "cache")  # decode again, over the budget this time
    tracemalloc.start()  # numpy's buffers are traced: a whole-dataset array would show
    try:
        over = build_data(
            tiny_config(root, tmp_path, data={**data, "memory_budget_mb": 1}), torch.device("cpu")
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    pixels = 36 * 256 * 256 * 3  # 7 MiB decoded, over the 1 MiB budget
    assert peak < pixels / 2, f"decoding held {peak} bytes of {pixels}"
    assert isinstance(within.train.source, ArraySource) and within.cached
    for loader in (over.train, over.val, over.test):
        assert isinstance(loader.source, DiskArraySource)
    for (xa, ya), (xb, yb) in zip(within.train.epoch(1), over.train.epoch(1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    cpu, never = torch.device("cpu"), {**data, "cache": "never"}
    streamed = build_data(tiny_config(root, tmp_path, data=never), cpu)
    assert isinstance(streamed.train.source, StreamSource) and not streamed.cached


def test_unwritable_cache_over_the_budget_streams_instead_of_filling_ram(
    tmp_path: Path, pattern_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache_module, "_decode_to_cache", read_only)
    samples = [(p, 0) for p in sorted(pattern_root.rglob("*.png"))]  # 36 x 16 px: 27 KiB
    cpu = torch.device("cpu")

    def source(cache: str, budget_mb: int, count: int) -> object:
        cfg = config_from_dict(
            {
                "data": {
                    "cache": cache,
                    "memory_budget_mb": budget_mb,
                    "cache_dir": str(tmp_path / "c"),
                    "num_workers": 0,
                }
            }
        )
        return make_source(cfg.data, samples, 16, cpu, {}, budget_count=count)[0]

    huge = 10**6  # images weighed against the budget: all splits of a big dataset
    assert isinstance(source("auto", 1, len(samples)), ArraySource)  # fits: decoded into RAM
    assert isinstance(source("auto", 1, huge), StreamSource)
    assert isinstance(source("always", 1, huge), ArraySource)  # insisted on


def test_disk_reads_any_order_with_repeats(tmp_path: Path, pattern_root: Path) -> None:
    samples = [(p, 0) for p in sorted(pattern_root.rglob("*.png"))]
    decoded = decode_cached(samples, 16, cache_dir=tmp_path / "cache")
    assert isinstance(decoded.pixels, np.memmap)
    source = DiskArraySource(decoded.pixels, [0] * len(samples), torch.device("cpu"))
    indices = np.array([7, 3, 3, 4, 5, 6, 0, 35, 34, 1])  # runs, repeats, both ends
    fd = os.open(source.path, os.O_RDONLY)
    try:
        assert np.array_equal(source.read(indices, fd).numpy(), np.asarray(decoded.pixels)[indices])
    finally:
        os.close(fd)
    assert np.array_equal(
        source.read(indices).numpy(), np.asarray(decoded.pixels)[indices]
    )  # no fd


def test_cache_file_holds_canonical_pixels_and_skips_bad_rows(
    tmp_path: Path, pattern_root: Path
) -> None:
    samples = [(p, 0) for p in sorted(pattern_root.rglob("*.png"))][:6]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    samples.insert(2, (tmp_path / "bad.png", 0))
    decoded = decode_cached(samples, 12, on_bad="skip", cache_dir=tmp_path / "cache")
    assert decoded.keep == [0, 1, 3, 4, 5, 6] and list(decoded.bad) == [2]
    assert isinstance(decoded.pixels, np.memmap) and decoded.pixels.shape == (6, 12, 12, 3)
    for row, position in enumerate(decoded.keep):
        assert np.array_equal(decoded.pixels[row], load_array(samples[position][0], 12))
    again = decode_cached(samples, 12, on_bad="skip", cache_dir=tmp_path / "cache")  # a hit
    assert np.array_equal(np.asarray(again.pixels), np.asarray(decoded.pixels))


def _write_jpegs(folder: Path) -> list[Path]:
    """Noisy photos-like JPEGs: odd sizes, greyscale, chroma subsampling, EXIF rotations."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(8):
        h, w = (int(v) for v in rng.integers(20, 140, 2))
        coarse = rng.integers(0, 255, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))
        image = Image.fromarray(
            np.clip(pixels + rng.integers(-25, 25, pixels.shape), 0, 255).astype(np.uint8)
        )
        image = image.convert("L") if i == 3 else image
        exif = Image.Exif()
        exif[0x0112] = [1, 3, 6, 8][i % 4]
        paths.append(folder / f"img_{i}.jpg")
        image.save(paths[-1], quality=85, subsampling=i % 3, exif=exif.tobytes())
    return paths


def test_torchvision_jpeg_decode_is_pillows_decode(tmp_path: Path) -> None:
    for path in _write_jpegs(tmp_path / "j"):
        ours = _jpeg_tensor(path, 1)
        assert ours is not None, path
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), np.asarray(load_rgb(path))), path


def test_torchvision_decoder_is_within_one_level_of_pillow(
    tmp_path: Path, pattern_root: Path
) -> None:
    paths = _write_jpegs(tmp_path / "j") + sorted(pattern_root.rglob("*.png"))[:3]
    for size in (8, 16, 48):
        for path in paths:
            fast, canonical = load_array_torchvision(path, size), load_array(path, size)
            assert fast.shape == canonical.shape == (size, size, 3) and fast.flags.c_contiguous
            difference = np.abs(fast.astype(int) - canonical.astype(int))
            assert difference.max() <= 1 and (difference > 0).mean() < 0.35, (path, size)
    # an image already at the size is neither resized nor changed
    exact = tmp_path / "exact.jpg"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(exact)
    assert np.array_equal(load_array_torchvision(exact, 16), load_array(exact, 16))


def test_torchvision_decoder_keeps_the_bad_file_policy(tmp_path: Path) -> None:
    good = _write_jpegs(tmp_path / "j")[0]
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg") as info:
        load_array_torchvision(truncated, 16)
    assert info.value.kind == "unreadable"
    with pytest.raises(ImageError, match="data.min_size=500"):
        load_array_torchvision(good, 16, min_size=500)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(good).convert("CMYK").save(cmyk)
    assert _jpeg_tensor(cmyk, 1) is None  # Pillow's CMYK conversion, not libjpeg's
    assert np.abs(load_array_torchvision(cmyk, 16).astype(int) - load_array(cmyk, 16)).max() <= 1


def test_every_path_sees_the_runs_decoder(tmp_path: Path) -> None:
    paths = _write_jpegs(tmp_path / "data" / "a") + _write_jpegs(tmp_path / "data" / "b")
    samples = [(p, i // 8) for i, p in enumerate(paths)]
    cfg = config_from_dict(
        {"data": {"decoder": "torchvision", "cache_dir": str(tmp_path / "c"), "num_workers": 0}}
    )
    cached, _ = make_source(cfg.data, samples, 24, torch.device("cpu"), {})
    stream = StreamSource(samples, 24, 1, False, 0, False, "torchvision")
    index = [np.arange(len(samples))]
    from_cache, from_stream = next(cached.batches(index))[0], next(stream.batches(index))[0]
    predicted = np.stack([decode_array(p, 24, decoder="torchvision") for p in paths])
    assert torch.equal(from_cache, from_stream) and np.array_equal(from_cache.numpy(), predicted)
    pillow = decode_cached(samples, 24, cache_dir=tmp_path / "c")  # another cache entry
    assert not np.array_equal(np.asarray(pillow.pixels), predicted)
    with pytest.raises(ConfigError, match="data.decoder 'magic'"):
        decode_array(paths[0], 24, decoder="magic")


@pytest.mark.parametrize(
    ("count", "batch", "world"), [(36, 4, 2), (37, 4, 2), (10, 3, 3), (5, 4, 2)]
)
def test_shards_split_every_global_batch(count: int, batch: int, world: int) -> None:
    source = ArraySource(np.zeros((count, 2, 2, 3), np.uint8), [0] * count, torch.device("cpu"))
    alone = Loader(source, batch * world, torch.device("cpu"), shuffle=True, seed=3)
    shards = [
        Loader(source, batch, torch.device("cpu"), shuffle=True, seed=3, shard=(r, world))
        for r in range(world)
    ]
    per_rank = [s.index_batches(5) for s in shards]
    assert len({len(s) for s in shards}) == 1 and all(
        len(b) == len(s) for b, s in zip(per_rank, shards, strict=True)
    )
    for step, whole in enumerate(alone.index_batches(5)[: len(shards[0])]):
        parts = [b[step] for b in per_rank]
        assert all(len(p) >= 1 for p in parts) and np.array_equal(np.concatenate(parts), whole)
    # evaluation: contiguous shards that gather back into the sample order, without padding
    evals = [Loader(source, batch, torch.device("cpu"), shard=(r, world)) for r in range(world)]
    gathered = np.concatenate(
        [np.concatenate(e.index_batches(0) or [np.zeros(0, int)]) for e in evals]
    )
    assert np.array_equal(gathered, np.arange(count))
    assert all(len(e) == len(e.index_batches(0)) for e in evals)
