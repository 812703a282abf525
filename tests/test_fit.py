"""fit(): the run folder, exact resume, two-stage transfer, early stopping, non-finite stops."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from imagefit.config import config_from_dict
from imagefit.errors import CheckpointError, Interrupted, TrainingStopped
from imagefit.train import fit as fit_module
from imagefit.train.fit import fit

from conftest import interrupt_after, tiny_config


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_folder_is_complete(pattern_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(pattern_root, tmp_path, train={"epochs": 3, "checkpoint_every": 2})
    result = fit(cfg)
    run = result.run_dir
    for name in (
        "config.yaml",
        "history.csv",
        "history.json",
        "metrics.json",
        "summary.json",
        "best.pt",
        "last.pt",
        "epoch_002.pt",
        "split.json",
        "environment.json",
    ):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    assert "lr" in header and "time_s" in header
    assert len(json.loads((run / "history.json").read_text())) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == split["counts"]["test"]
    for key in ("accuracy", "f1_macro", "f1_weighted"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["top5_accuracy"] is None  # 3 classes: top-5 would always be 1
    state = torch.load(run / "last.pt", weights_only=True)  # loads without arbitrary code
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "config",
        "classes",
        "rng",
        "early_stopping",
    ):
        assert key in state
    assert state["classes"] == ["class_0", "class_1", "class_2"]
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]


def test_test_split_is_never_trained_on(pattern_root: Path, tmp_path: Path) -> None:
    run = fit(tiny_config(pattern_root, tmp_path)).run_dir
    split = json.loads((run / "split.json").read_text())["splits"]
    train = {p for p, _ in split["train"]}
    assert train.isdisjoint(p for p, _ in split["test"]) and train.isdisjoint(
        p for p, _ in split["val"]
    )


def test_learns_digits(digits_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        digits_root,
        tmp_path,
        data={"image_size": 24, "mean": [0.5] * 3, "std": [0.5] * 3},
        augment={"hflip": 0.0},
        train={"epochs": 4, "batch_size": 32},
    )
    result = fit(cfg)
    assert result.metrics["accuracy"] > 0.85


@pytest.mark.parametrize("checks", [3, 5, 11])  # mid-epoch, end of epoch 1, later mid-epoch
def test_resume_after_interrupt_is_bitwise_exact(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checks: int
) -> None:
    sections = {
        "train": {"epochs": 3, "batch_size": 6},
        "augment": {"scale": [0.6, 1.0], "hflip": 0.5},
        "model": {"drop_rate": 0.3},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    }
    reference = fit(tiny_config(pattern_root, tmp_path / "a", **sections))
    interrupt_after(monkeypatch, checks)
    with pytest.raises(Interrupted, match="resume"):
        fit(tiny_config(pattern_root, tmp_path / "b", **sections))
    monkeypatch.undo()
    resumed = fit(resume=tmp_path / "b" / "run")
    assert_same_weights(weights(reference.run_dir), weights(resumed.run_dir))
    assert_same_weights(weights(reference.run_dir, "best.pt"), weights(resumed.run_dir, "best.pt"))
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in reference.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]
    assert resumed.metrics == reference.metrics


def test_two_stage_transfer(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = {
        "train": {"epochs": 3},
        "finetune": {"freeze_epochs": 1, "strategy": "full", "unfreeze_lr_factor": 0.5},
    }
    result = fit(tiny_config(pattern_root, tmp_path / "a", **sections))
    phases = [row["phase"] for row in result.history]
    assert phases == ["freeze", "full", "full"]
    lrs = [row["lr"] for row in result.history]
    assert lrs[1] == pytest.approx(
        0.003 * 0.5 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item())
    )
    first = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert first["epoch"] == 3
    # interrupted inside the frozen phase, resumed across the phase change: still exact
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        fit(tiny_config(pattern_root, tmp_path / "b", **sections))
    monkeypatch.undo()
    resumed = fit(resume=tmp_path / "b" / "run")
    assert_same_weights(weights(result.run_dir), weights(resumed.run_dir))


def test_frozen_phase_changes_only_the_head(pattern_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(pattern_root, tmp_path, train={"epochs": 1}, finetune={"strategy": "freeze"})
    result = fit(cfg)
    before = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert result.summary.params_trainable == 84 * 3 + 3
    again = fit(
        tiny_config(
            pattern_root,
            tmp_path / "x",
            train={"epochs": 1, "seed": 0},
            finetune={"strategy": "full"},
            optim={"lr": 1e-9},
        )
    )
    start = torch.load(again.run_dir / "last.pt", weights_only=True)["model"]
    for key, value in before["model"].items():  # same seed -> same init; only fc moved
        if not key.startswith("fc."):
            assert torch.equal(value, start[key]) or torch.allclose(value, start[key], atol=1e-6), (
                key
            )


def test_early_stopping(pattern_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        pattern_root,
        tmp_path,
        train={"epochs": 30, "patience": 2, "monitor": "val_loss"},
        optim={"lr": 1e-12},
    )
    result = fit(cfg)
    assert result.summary.early_stopped and len(result.history) < 30
    best = result.summary.best_epoch
    assert len(result.history) == best + 2


@pytest.mark.faults  # a fault case of issue 7 outside tests/faults: `pytest -m faults` runs it
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_stops_before_the_step(
    pattern_root: Path, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagefit.models.simple_cnn import SimpleCNN

    cfg = tiny_config(pattern_root, tmp_path, train={"epochs": 2})
    calls = {"n": 0}
    original = SimpleCNN.forward

    def poisoned(self, x):
        calls["n"] += self.training
        out = original(self, x)
        if self.training and calls["n"] == 5:  # epoch 2, step 2 (3 train batches per epoch)
            if where == "loss":
                return out * float("nan")
            out.register_hook(lambda g: g * float("inf"))
        return out

    monkeypatch.setattr(SimpleCNN, "forward", poisoned)
    snapshots = {}
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        snapshots["last"] = {k: v.detach().clone() for k, v in model_ref["m"].state_dict().items()}
        return result

    model_ref = {}
    original_build = fit_module._build

    def build(*args, **kwargs):
        run = original_build(*args, **kwargs)
        model_ref["m"] = run.model
        return run

    monkeypatch.setattr(fit_module, "_build", build)
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    with pytest.raises(
        TrainingStopped,
        match=rf"non-finite {'loss' if where == 'loss' else 'gradient norm'} at epoch 2, step 2",
    ):
        fit(cfg)
    for key, value in model_ref["m"].state_dict().items():
        assert torch.equal(value, snapshots["last"][key]), key


def test_resume_errors(tmp_path: Path, pattern_root: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        fit(resume=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no last.pt"):
        fit(resume=tmp_path / "empty")
    run = fit(tiny_config(pattern_root, tmp_path / "r", train={"epochs": 1})).run_dir
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        fit(resume=run)


def test_unknown_optimizer_and_schedule(pattern_root: Path, tmp_path: Path) -> None:
    from imagefit.errors import ConfigError

    # closed sets fail when the config is made, before fit() creates a run folder
    with pytest.raises(
        ConfigError, match=r"optim\.name: .*'adam', 'adamw' or 'sgd' \(got 'lamb'\)"
    ):
        tiny_config(pattern_root, tmp_path, optim={"name": "lamb"})
    with pytest.raises(ConfigError, match=r"schedule\.name: .*'cosine'.* \(got 'linear'\)"):
        config_from_dict(
            {**tiny_config(pattern_root, tmp_path / "2").to_dict(), "schedule": {"name": "linear"}}
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "2").exists()
