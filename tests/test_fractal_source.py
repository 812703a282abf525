"""``data.source: fractal``: FractalDB instances rendered on the fly, new ones every epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_fit import assert_same_weights, weights

from imagefit.config import config_from_dict
from imagefit.datasets.sources import build_data
from imagefit.errors import ConfigError, Interrupted
from imagefit.models.registry import create_model
from imagefit.pipeline import load_pipeline, run_pipeline
from imagefit.train.fit import fit

from conftest import interrupt_after

OFFICIAL = Path(__file__).parent / "data" / "fractaldb1k-official-params"


def params(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(OFFICIAL.glob("*.csv"))[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def fractal_tree(folder: Path, out: Path, **train: object) -> dict:
    return {
        "data": {
            "source": "fractal",
            "fractal_params": str(folder),
            "fractal_instances": 8,
            "fractal_points": 1500,
            "image_size": 16,
            "val_fraction": 0,
            "test_fraction": 0,
            "num_workers": 0,
        },
        "augment": {"scale": [0.5, 1.0], "vflip": 0.5},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 8, "threads": 1, "monitor": "train_loss", **train},
        "output": {"dir": str(out), "name": "run"},
    }


def epoch_pixels(tree: dict, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    bundle = build_data(config_from_dict(tree), torch.device("cpu"))
    source = bundle.train.source
    source.set_epoch(epoch)
    batches = list(source.batches([torch.arange(len(source)).numpy()]))
    return batches[0]


def test_each_epoch_renders_new_instances_and_the_same_ones_again(tmp_path: Path) -> None:
    tree = fractal_tree(params(tmp_path / "p"), tmp_path / "runs")
    first, labels = epoch_pixels(tree, 0)
    assert first.shape == (24, 16, 16, 3) and first.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2] * 8  # item i is category i % C
    again, _ = epoch_pixels(tree, 0)
    assert torch.equal(first, again)  # a pure function of (seed, epoch, index)
    second, _ = epoch_pixels(tree, 1)
    assert not torch.equal(first, second)
    changed = [not torch.equal(a, b) for a, b in zip(first, second, strict=True)]
    assert sum(changed) >= 20  # new weights, masks and flips for (nearly) every instance
    other_seed = {**tree, "train": {**tree["train"], "seed": 5}}
    assert not torch.equal(first, epoch_pixels(other_seed, 0)[0])
    # Loader workers render the same images as the main process.
    workers = {**tree, "data": {**tree["data"], "num_workers": 2}}
    assert torch.equal(first, epoch_pixels(workers, 0)[0])


def test_fixed_val_set_and_errors(tmp_path: Path) -> None:
    folder = params(tmp_path / "p")
    tree = fractal_tree(folder, tmp_path / "runs")
    tree["data"]["val_fraction"] = 0.25
    bundle = build_data(config_from_dict(tree), torch.device("cpu"))
    assert bundle.val is not None and bundle.val.num_samples == 2 * 3 and bundle.test is None
    assert bundle.classes == ["00000", "00001", "00002"]
    bad = fractal_tree(folder, tmp_path / "runs")
    bad["data"]["test_fraction"] = 0.1
    with pytest.raises(ConfigError, match="data.test_fraction=0"):
        build_data(config_from_dict(bad), torch.device("cpu"))
    bad["data"].update(test_fraction=0, fractal_params=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="data.fractal_params: folder not found"):
        build_data(config_from_dict(bad), torch.device("cpu"))
    bad["data"].update(fractal_params=str(folder), fractal_weights="0.7")
    with pytest.raises(ConfigError, match="data.fractal_weights='0.7'"):
        build_data(config_from_dict(bad), torch.device("cpu"))


@pytest.mark.parametrize("checks", [2, 4])  # inside the first epoch; at the epoch boundary
def test_interrupted_fractal_pretraining_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checks: int
) -> None:
    folder = params(tmp_path / "p")
    reference = fit(config_from_dict(fractal_tree(folder, tmp_path / "a")))
    interrupt_after(monkeypatch, checks)
    with pytest.raises(Interrupted, match="resume"):
        fit(config_from_dict(fractal_tree(folder, tmp_path / "b")))
    monkeypatch.undo()
    resumed = fit(resume=tmp_path / "b" / "run")
    assert_same_weights(weights(reference.run_dir), weights(resumed.run_dir))
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in reference.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]


@pytest.mark.slow
def test_pipeline_with_on_the_fly_pretraining_writes_the_paired_difference(
    tmp_path: Path, digits_root: Path
) -> None:
    """Fractal search -> on-the-fly pretraining -> the same recipe search for both variants ->
    3 seeds each -> pretrained_minus_scratch with its paired interval; the pretrained weights
    carry their provenance and start any later run."""
    pretrain = fractal_tree(tmp_path / "unused", tmp_path / "unused")
    pretrain["train"]["limit_batches"] = 2
    del pretrain["output"]
    target = {
        "data": {"root": str(digits_root), "image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1, "limit_batches": 2},
    }
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    spec = {
        "name": "tiny",
        "out": str(tmp_path / "out"),
        "fractal": {"categories": 3},
        "pretrain": {"config": "pretrain.yaml"},
        "finetune": {
            "config": "target.yaml",
            "seeds": [0, 1],
            "candidates": [{"optim.lr": 0.003}, {"optim.lr": 0.001, "finetune.freeze_epochs": 1}],
        },
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    result = run_pipeline(load_pipeline(tmp_path / "p.yaml"))
    out = tmp_path / "out"
    assert not (out / "fractal" / "images").exists()  # nothing rendered to disk
    doc = json.loads((out / "pipeline.json").read_text())
    assert doc == result.comparison
    low, high = doc["pretrained_minus_scratch_interval"]
    assert low <= doc["pretrained_minus_scratch"] <= high
    assert isinstance(doc["pretrained_beats_scratch"], bool)
    # The same two candidates were tried for both variants, each chose by validation.
    search = doc["recipe_search"]
    assert len(search["scratch"]["val_accuracy"]) == len(search["pretrained"]["val_accuracy"]) == 2
    for name in ("scratch", "pretrained"):
        assert doc["recipes"][name] in spec["finetune"]["candidates"]
        cfg = yaml.safe_load((out / f"finetune/runs/{name}-seed1/config.yaml").read_text())
        assert cfg["optim"]["lr"] == doc["recipes"][name]["optim.lr"]
    assert sorted(p.name for p in (out / "select" / "runs").iterdir()) == [
        "pretrained-0-seed0",
        "pretrained-1-seed0",
        "scratch-0-seed0",
        "scratch-1-seed0",
    ]
    # The sweep report shows the same paired comparison.
    assert "paired bootstrap" in (out / "finetune" / "results.md").read_text()
    # The product: weights with provenance, accepted by model.init anywhere.
    product = torch.load(out / "pretrained.pt", weights_only=True)
    prov = product["meta"]["provenance"]
    assert prov["data"]["source"] == "fractal" and prov["data"]["categories"] == 3
    assert len(prov["data"]["params_sha256"]) == 64
    assert prov["recipe"]["data"]["source"] == "fractal" and prov["steps"] == 4
    assert prov["epochs"] == 2 and prov["final_train_loss"] is not None
    model = create_model("simple_cnn", 7, str(out / "pretrained.pt"))
    assert model.state_dict()["features.0.weight"].equal(product["model"]["features.0.weight"])
    summary = json.loads((out / "finetune/runs/pretrained-seed0/summary.json").read_text())
    assert (
        summary["init"]["source_provenance"]["data"]["params_sha256"]
        == prov["data"]["params_sha256"]
    )


def test_lr_range_test_reads_the_fractal_source(tmp_path: Path) -> None:
    """Every consumer of a config's data goes through data.source: lr-find on rendered
    fractals, with no data.root set."""
    from imagefit.train.lr_find import find_lr

    tree = fractal_tree(params(tmp_path / "p"), tmp_path / "runs")
    result = find_lr(config_from_dict(tree), start=1e-4, end=1.0, steps=3)
    assert len(result.lrs) == len(result.losses) == 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
