"""Hostile and broken inputs: bad resume folders, checkpoints that would run code, tarballs that
write outside their folder, and images with 100 and 200 million pixels.

Each must fail with a clear imagefit error naming the file, never start a run afresh silently
and never execute or extract anything.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.config import config_from_dict
from imagefit.data import images
from imagefit.data.cache import decode_cached
from imagefit.data.images import load_rgb
from imagefit.datasets.verify import verify_dataset
from imagefit.errors import CheckpointError, DataError, ImageError
from imagefit.evaluate.evaluator import evaluate_checkpoint
from imagefit.runs.checkpoint import load_checkpoint
from imagefit.train.fit import fit

from conftest import write_pattern_folder
from faultkit import checkpoint, run_tree

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished 1-epoch run on 3 classes and one on 2 classes."""
    base = tmp_path_factory.mktemp("inputs")
    runs = {}
    for classes in (3, 2):
        root = write_pattern_folder(base / f"patterns{classes}", classes=classes)
        tree = run_tree(root, base / f"runs{classes}", base / "cache", train={"epochs": 1})
        runs[classes] = fit(config_from_dict(tree)).run_dir
    return {"base": base, "run3": runs[3], "run2": runs[2]}


def _copy_run(lab: dict, name: str, which: str = "run3") -> Path:
    target = lab["base"] / name
    shutil.copytree(lab[which], target)
    return target


# --- resume inputs -----------------------------------------------------------------------------


def test_resume_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"run folder not found: .*nope"):
        fit(resume=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: it has no last\.pt .*start it again"):
        fit(resume=tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # nothing was started in it


def test_resume_after_a_kill_during_the_very_first_write(lab: dict) -> None:
    run = _copy_run(lab, "first-write")
    for name in (
        "last.pt",
        "best.pt",
        "history.json",
        "history.csv",
        "metrics.json",
        "summary.json",
    ):
        (run / name).unlink()
    (run / ".last.pt.k1ll3d").write_bytes((lab["run3"] / "last.pt").read_bytes()[:999])
    with pytest.raises(CheckpointError, match="no last.pt"):
        fit(resume=run)


def test_resume_truncated_checkpoint(lab: dict) -> None:
    run = _copy_run(lab, "truncated")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt: damaged or truncated"):
        fit(resume=run)


def test_resume_architecture_mismatch(lab: dict) -> None:
    run = _copy_run(lab, "arch")
    state = checkpoint(run / "last.pt")
    state["config"]["model"]["name"] = "test_resnet"  # weights of simple_cnn, config of another
    torch.save(state, run / "last.pt")
    config = (run / "config.yaml").read_text().replace("name: simple_cnn", "name: test_resnet")
    (run / "config.yaml").write_text(config)  # the folder agrees with the checkpoint's config
    with pytest.raises(CheckpointError, match=r"last\.pt does not fit test_resnet"):
        fit(resume=run)


def test_resume_class_count_mismatch(lab: dict) -> None:
    run = _copy_run(lab, "classes", "run2")
    shutil.copy(lab["run3"] / "last.pt", run / "last.pt")  # a 3-class checkpoint, 2-class split
    with pytest.raises(
        CheckpointError, match=r"classes \['class_0', 'class_1', 'class_2'\] differ"
    ):
        fit(resume=run)


def test_resume_without_split_manifest_never_resplits(lab: dict) -> None:
    run = _copy_run(lab, "nosplit")
    (run / "split.json").unlink()
    with pytest.raises(DataError, match=r"split\.json: not a valid split manifest"):
        fit(resume=run)


def test_resume_of_a_checkpoint_that_is_not_imagefit(lab: dict) -> None:
    run = _copy_run(lab, "foreign")
    torch.save(checkpoint(run / "last.pt")["model"], run / "last.pt")  # a bare state dict
    with pytest.raises(CheckpointError, match=r"not a resumable imagefit checkpoint \(missing"):
        fit(resume=run)


def test_resume_after_a_kill_between_last_pt_and_history(lab: dict) -> None:
    """The run's last epoch is in last.pt but not yet in history.json: resuming the finished
    run must bring the files back in line, not leave them an epoch behind."""
    run = _copy_run(lab, "history")
    full = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text("[]")
    (run / "history.csv").write_text("epoch\n")
    fit(resume=run)
    assert json.loads((run / "history.json").read_text()) == full
    assert len((run / "history.csv").read_text().splitlines()) == len(full) + 1


def test_cli_resume_error_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "gone")])
    assert result.exit_code != 0
    assert isinstance(result.exception, CheckpointError) and "run folder not found" in str(
        result.exception
    )


# --- checkpoints that would run code -----------------------------------------------------------


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path: Path) -> dict:
    marker = tmp_path / "pwned"
    payload = {
        "model": {},
        "meta": {"arch": "simple_cnn"},
        "config": {},
        "epoch": 0,
        "optimizer": {},
        "rng": {},
        "hook": _RunsCode(marker),
    }
    files = {
        "zip": tmp_path / "evil.pt",
        "legacy": tmp_path / "legacy.pt",
        "pickle": tmp_path / "raw.pkl",
    }
    torch.save(payload, files["zip"])
    torch.save(payload, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps(payload))
    return {"marker": marker, **files}


def test_crafted_checkpoint_really_runs_code_when_loaded_unsafely(
    evil: dict, tmp_path: Path
) -> None:
    """The control: the file is a working exploit, so its refusal below means something."""
    control = tmp_path / "control.pt"
    torch.save({"x": _RunsCode(tmp_path / "control-ran")}, control)
    torch.load(control, weights_only=False)
    assert (tmp_path / "control-ran").exists()


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_crafted_checkpoint_is_refused(evil: dict, kind: str) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"refused: it is a pickle that runs posix\.system when loaded: do not load it",
    ):
        load_checkpoint(evil[kind])
    assert not evil["marker"].exists()


def test_crafted_checkpoint_is_refused_everywhere_it_can_enter(
    evil: dict, lab: dict, tmp_path: Path
) -> None:
    run = _copy_run(lab, "evil-run")
    shutil.copy(evil["zip"], run / "last.pt")
    with pytest.raises(CheckpointError, match="refused"):
        fit(resume=run)  # imagefit train --resume
    root = write_pattern_folder(tmp_path / "p")
    tree = run_tree(
        root,
        tmp_path / "runs",
        tmp_path / "cache",
        model={"name": "simple_cnn", "init": str(evil["zip"])},
    )
    with pytest.raises(CheckpointError, match="refused"):
        fit(config_from_dict(tree))  # model.init=<file>
    with pytest.raises(CheckpointError, match="refused"):
        evaluate_checkpoint(evil["zip"])  # imagefit eval
    assert not evil["marker"].exists()


# --- archives ----------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """Members are (name, file bytes) or (name, 'symlink:<target>')."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("symlink:")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("data/ok.txt", b"fine"), ("data/../../escaped.txt", b"pwned")], "'..' in its path"),
        (
            [("data/link", "symlink:../.."), ("data/link/escaped.txt", b"pwned")],
            "outside the target",
        ),
        ([("/tmp/escaped-absolute.txt", b"pwned")], "absolute path"),
    ],
)
def test_tarball_escaping_its_folder_is_refused(tmp_path: Path, members: list, reason: str) -> None:
    archive = pytest.importorskip("imagefit.datasets.archive")  # written alongside this suite
    tarball = _tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(DataError, match=f"refusing unsafe member .*{reason}"):
        archive.safe_extract(tarball, dest)
    assert (
        not (tmp_path / "a" / "escaped.txt").exists()
        and not (tmp_path / "a" / "b" / "escaped.txt").exists()
    )
    assert not dest.exists() or not any(dest.iterdir())  # nothing at all was extracted


# --- decompression bombs -----------------------------------------------------------------------


def write_bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, streamed: a few kB on disk and
    in memory however many pixels it claims."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + -(-width // 8))  # filter byte + packed bits
    compressor, idat = zlib.compressobj(9), []
    for _ in range(height):
        idat.append(compressor.compress(row))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bombs")
    return {
        "200mp": write_bilevel_png(base / "bomb_200mp.png", 20_000, 10_000),
        "100mp": write_bilevel_png(base / "bomb_100mp.png", 10_000, 10_000),
    }


def test_the_bombs_are_valid_images(
    bombs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: without the limit they open as what they claim, and their CRCs check out."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for path, size in ((bombs["200mp"], (20_000, 10_000)), (bombs["100mp"], (10_000, 10_000))):
        with Image.open(path) as image:
            assert (image.size, image.mode) == (size, "1")
            image.verify()
        assert path.stat().st_size < 100_000


@pytest.mark.parametrize("size", ["200mp", "100mp"])
def test_huge_image_is_refused_quickly(bombs: dict[str, Path], size: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"refused, .*decompression bomb") as info:
        load_rgb(bombs[size])
    assert info.value.kind == "too_large" and bombs[size].name in str(info.value)
    assert time.perf_counter() - started < 2.0  # refused from the header, nothing decoded


def test_bomb_refusal_does_not_depend_on_warning_filters(
    bombs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models the race that let bombs through: another decoding thread leaving its
    ``warnings.catch_warnings`` block removes the 'error' filter this thread relied on."""
    monkeypatch.setattr(warnings, "simplefilter", lambda *args, **kwargs: None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        with pytest.raises(ImageError, match="decompression bomb"):
            load_rgb(bombs["100mp"])


def test_bombs_among_many_threads_are_all_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 64x64 passes, 100x100 is a "bomb"
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small)
    paths = [tmp_path / "bomb.png" if i % 5 == 0 else small for i in range(400)]
    before = list(warnings.filters)

    def refused(path: Path) -> bool:
        try:
            load_rgb(path)
        except ImageError:
            return True
        return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(refused, paths))
    assert results == [p.name == "bomb.png" for p in paths]
    assert warnings.filters == before  # no filter leaked into the process


def test_bomb_in_a_dataset_is_reported_and_skipped(bombs: dict[str, Path], tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "d", classes=2, per_class=3)
    shutil.copy(bombs["200mp"], root / "class_1" / "zz_bomb.png")
    report = verify_dataset(root, progress=False)
    assert [(b.file.path.name, b.kind) for b in report.bad] == [("zz_bomb.png", "too_large")]
    samples = [(p, 0) for p in sorted(root.rglob("*.png"))]
    decoded = decode_cached(samples, 8, on_bad="skip", cache_dir=tmp_path / "c")
    assert len(decoded.keep) == len(samples) - 1
    assert [samples[i][0].name for i in decoded.bad] == ["zz_bomb.png"]


def test_pillow_limit_is_the_one_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Raising ``Image.MAX_IMAGE_PIXELS`` (a user's explicit choice) lets big images through."""
    path = tmp_path / "wide.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9_999)
    with pytest.raises(ImageError):
        images.load_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert images.load_rgb(path).size == (100, 100)
