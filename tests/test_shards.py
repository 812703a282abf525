"""The same photos as a folder, as WebDataset shards and as a Hugging Face dataset.

Shards: `imagefit data shards` writes each split and an index; training streams them, every
sample once per epoch across torchrun processes and loader workers, and a resume mid-epoch
continues with exactly the batches an uninterrupted run trains on. HF: the same class index,
split and pixels as the folder the dataset was made from (read offline from a local copy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.data.folder import scan_folder
from imagefit.data.loaders import build_data
from imagefit.data.shards import parse_size, read_index
from imagefit.data.stream import plan_epoch, resume_point
from imagefit.errors import DataError
from imagefit.train.fit import fit

from conftest import tiny_config, write_photo_folder

TESTS = Path(__file__).parent
CPU = torch.device("cpu")
TRAIN = {"epochs": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real flower photos (2 classes) and their shards (at most 3 images each)."""
    work = tmp_path_factory.mktemp("shards")
    root = write_photo_folder(work / "photos", per_class=20, size=40)
    result = CliRunner().invoke(
        app, ["data", "shards", str(root), str(work / "shards"), "--max-count", "3"]
    )
    assert result.exit_code == 0, result.output
    return work


def _hf_copy(root: Path, out: Path) -> Path:
    """The folder as a Hugging Face dataset on disk, rows in the folder's scan order."""
    import datasets

    index = scan_folder(root)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=index.classes)}
    )
    rows = {
        "image": [{"bytes": path.read_bytes(), "path": path.name} for path, _ in index.samples],
        "label": [label for _, label in index.samples],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    return out


def test_shards_hold_each_split_with_an_index(photos: Path) -> None:
    index = read_index(str(photos / "shards"))
    manifest = json.loads((photos / "shards" / "split.json").read_text())
    assert index.classes == ["daisy", "roses"]
    for split, entries in index.splits.items():
        assert sum(e.count for e in entries) == manifest["counts"][split]
        assert all(1 <= e.count <= 3 for e in entries)  # --max-count
        assert all(Path(e.url).name.startswith(f"{split}-") for e in entries)
    # Plain tars in WebDataset's layout: <key>.jpg, <key>.cls, <key>.json per sample.
    with tarfile.open(index.splits["train"][0].url) as tar:
        names = tar.getnames()
    assert {Path(n).suffix for n in names} == {".jpg", ".cls", ".json"}
    assert parse_size("1GB") == 10**9 and parse_size("2GiB") == 2 * 2**30
    with pytest.raises(DataError, match="shard-size"):
        parse_size("lots")


def test_folder_shards_and_hf_agree(photos: Path, tmp_path: Path, monkeypatch) -> None:
    """Same classes and split; HF trains bit for bit like the folder, shards within noise."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = photos / "photos"
    hf = _hf_copy(root, tmp_path / "hf")
    results, bundles = {}, {}
    for name, data in {
        "folder": {},
        "shards": {"shards": f"file://{photos / 'shards'}", "shuffle_buffer": 8},
        "hf": {"hf": str(hf)},
    }.items():
        cfg = tiny_config(root, tmp_path / name, data=data, train=TRAIN)
        bundles[name] = build_data(cfg, CPU)
        results[name] = fit(cfg)
    scan = {path: row for row, (path, _) in enumerate(scan_folder(root).samples)}
    for split in ("train", "val", "test"):
        folder = sorted(str(p) for p, _ in bundles["folder"].manifest.splits[split])
        assert sorted(str(p) for p, _ in bundles["shards"].manifest.splits[split]) == folder
        rows = sorted(int(p.name) for p, _ in bundles["hf"].manifest.splits[split])
        assert rows == sorted(scan[Path(p)] for p in folder)
    assert {name: b.classes for name, b in bundles.items()} == dict.fromkeys(
        bundles, ["daisy", "roses"]
    )

    def curve(name: str) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in results[name].history]

    assert curve("hf") == curve("folder")  # same pixels in the same order
    accuracy = {name: r.metrics["accuracy"] for name, r in results.items()}
    # 6 test images: shards see other batches (shard order + buffer), so only close.
    assert abs(accuracy["shards"] - accuracy["folder"]) <= 2 / 6, accuracy
    assert results["shards"].metrics["num_samples"] == results["folder"].metrics["num_samples"]


def test_plan_deals_every_shard_once_and_resume_skips_whole_rounds(photos: Path) -> None:
    entries = read_index(str(photos / "shards")).splits["train"]
    slots = [plan_epoch(entries, 1, 0, True, (rank, 2), 2) for rank in range(2)]
    dealt = [e.url for plan in slots for worker in plan.workers for e in worker]
    assert sorted(dealt) == sorted(e.url for e in entries)
    assert slots[0].rank_counts == slots[1].rank_counts and sum(slots[0].rank_counts) == 28
    assert resume_point([20, 5], 0) == ([0, 0], 0)
    assert resume_point([20, 5], 21) == ([16, 5], 0)  # round 1: 16 + 5
    assert resume_point([20, 5], 23) == ([16, 5], 2)  # inside round 2 (4 images)


def test_resume_inside_an_epoch_continues_the_same_batches(photos: Path, tmp_path: Path) -> None:
    data = {"shards": str(photos / "shards"), "num_workers": 2, "shuffle_buffer": 5}
    loader = build_data(tiny_config(photos, tmp_path, data=data, train=TRAIN), CPU).train
    full = [keys for _, _, keys in loader.sample_batches(2)]
    flat = [key for keys in full for key in keys]
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 28
    for start in range(1, len(full)):
        assert [keys for _, _, keys in loader.sample_batches(2, start)] == full[start:]
    other = [key for _, _, keys in loader.sample_batches(3) for key in keys]
    assert other != flat and sorted(other) == sorted(flat)  # reshuffled each epoch


def test_brace_pattern_and_bad_index(photos: Path, tmp_path: Path) -> None:
    shards = photos / "shards"
    names = sorted(p.name for p in shards.glob("train-*.tar"))
    pattern = f"file://{shards}/train-{{000000..{len(names) - 1:06d}}}.tar"
    cfg = tiny_config(photos, tmp_path, data={"shards": pattern}, train=TRAIN)
    assert build_data(cfg, CPU).train.num_samples == 28
    bad = f"{shards}/train-{{000000..000999}}.tar"
    with pytest.raises(DataError, match="not in"):
        build_data(tiny_config(photos, tmp_path, data={"shards": bad}), CPU)
    with pytest.raises(DataError, match="index.json"):
        build_data(tiny_config(photos, tmp_path, data={"shards": str(tmp_path)}), CPU)


def _steps(log: Path) -> dict[tuple[int, int, int], list[str]]:
    """(epoch, step, rank) -> sample keys, from a rank's key log."""
    steps = {}
    for line in log.read_text().splitlines():
        head, keys = line.split(": ", 1)
        _, epoch, _, step, _, rank = head.split()
        steps[(int(epoch), int(step), int(rank))] = eval(keys)  # a list of strings
    return steps


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torchrun_two_processes_two_workers_see_each_sample_once(
    photos: Path, tmp_path: Path
) -> None:
    data = {"shards": str(photos / "shards"), "num_workers": 2, "shuffle_buffer": 4}
    cfg = tiny_config(photos, tmp_path, data=data, train={**TRAIN, "batch_size": 3})
    config = tmp_path / "shards.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    # 28 images over 2 processes: 5 steps an epoch; rank 1's 9th look (1 before training,
    # 5 steps, 1 after epoch 1, then epoch 2's steps 1 and 2) stops epoch 2 after its step 2.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(TESTS / "shard_worker.py"),
            str(config),
            str(out),
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IMAGEFIT_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    a = {**_steps(out / "a-rank0.log"), **_steps(out / "a-rank1.log")}
    b = {**_steps(out / "b-rank0.log"), **_steps(out / "b-rank1.log")}
    all_keys = [f"{i:09d}" for i in range(28)]
    for epoch in range(TRAIN["epochs"]):
        seen = Counter(k for (e, _, _), keys in a.items() if e == epoch for k in keys)
        names = json.loads((photos / "shards" / "split.json").read_text())["splits"]["train"]
        assert sum(seen.values()) == 28 and len(seen) == len(names)  # each once
        steps = Counter(rank for (e, _, rank) in a if e == epoch)
        assert steps[0] == steps[1] == 5  # the processes step together
    assert sorted(k for (e, _, _), keys in a.items() if e == 0 for k in keys) == all_keys
    # The stopped and resumed run trained on exactly the uninterrupted run's batches.
    assert b == a
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert "epoch 2, batch 2" in reports[0]["interrupted"]
    assert reports[0]["resumed"] == reports[0]["a"]


def test_config_keys_of_shards_and_hf(tmp_path: Path) -> None:
    from imagefit.config import load_config
    from imagefit.errors import ConfigError

    cfg = load_config(None, ["data.shards=s3://b/train-{000000..000009}.tar", "data.hf_split=x"])
    assert cfg.data.shuffle_buffer == 1000 and cfg.data.hf_image_column == "image"
    with pytest.raises(ConfigError, match="data.shards and data.hf"):
        load_config(None, ["data.shards=a", "data.hf=b"])
    with pytest.raises(ConfigError, match="torchvision"):
        load_config(None, ["data.shards=a", "data.decoder=torchvision"])
    with pytest.raises(ConfigError, match="balanced"):
        load_config(None, ["data.hf=a", "data.sampler=balanced"])


def test_hf_columns_are_checked(photos: Path, tmp_path: Path, monkeypatch) -> None:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    plain = datasets.Dataset.from_dict({"image": [b"x"], "label": [0]})
    plain.save_to_disk(str(tmp_path / "plain"))
    cfg = tiny_config(photos, tmp_path, data={"hf": str(tmp_path / "plain")})
    with pytest.raises(DataError, match="not a ClassLabel"):
        build_data(cfg, CPU)
    cfg = tiny_config(
        photos, tmp_path, data={"hf": str(tmp_path / "plain"), "hf_label_column": "y"}
    )
    with pytest.raises(DataError, match="no column 'y'"):
        build_data(cfg, CPU)
