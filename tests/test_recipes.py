"""Training recipes: weight average (EMA), gradient accumulation, test-time augmentation, bf16."""

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imagefit.data.loaders import ArraySource, Loader
from imagefit.errors import ConfigError, Interrupted
from imagefit.evaluate.inference import Precision, evaluate, evaluate_modes
from imagefit.evaluate.tta import VIEWS, average_logits, views
from imagefit.train import fit as fit_module
from imagefit.train import runtime
from imagefit.train.average import better_weights
from imagefit.train.fit import fit
from imagefit.train.loop import EpochProgress, accumulation_group, train_one_epoch

from conftest import interrupt_after, tiny_config

CPU = torch.device("cpu")


def checkpoint(run_dir: Path, name: str = "last.pt") -> dict:
    return torch.load(run_dir / name, weights_only=True)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- gradient accumulation ---------------------------------------------------------------


def test_accumulation_groups_restart_each_epoch_and_the_last_may_be_short() -> None:
    groups = [accumulation_group(step, 7, 3) for step in range(7)]
    assert groups == [(3, False), (3, False), (3, True)] * 2 + [(1, True)]
    assert [accumulation_group(s, 4, 1) for s in range(4)] == [(1, True)] * 4


def _linear_epoch(batch_size: int, accum: int, samples: int = 20) -> tuple[nn.Module, int]:
    """One SGD epoch of a linear model (no batch norm: micro-batches are then exact)."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (samples, 4, 4, 3), dtype=torch.uint8)  # (N, H, W, C)
    labels = [i % 3 for i in range(samples)]
    loader = Loader(ArraySource(pixels, labels, CPU), batch_size, CPU)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    train_one_epoch(
        model,
        loader,
        optimizer,
        nn.CrossEntropyLoss(),
        Precision(CPU),
        0,
        EpochProgress(),
        accum_steps=accum,
        after_step=lambda: steps.append(1),
    )
    return model, len(steps)


def test_accumulation_equals_the_large_batch_including_a_short_last_step() -> None:
    # 20 samples: batch 8 -> steps of 8, 8, 4; micro-batches of 4, 2 per step -> (4+4), (4+4), 4
    big, big_steps = _linear_epoch(8, 1)
    small, small_steps = _linear_epoch(4, 2)
    assert big_steps == small_steps == 3  # the optimizer steps, not the micro-batches
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unscaled, _ = _linear_epoch(4, 1)  # the same micro-batches without accumulating differ
    assert not torch.allclose(unscaled[1].weight, big[1].weight, atol=1e-4)


class _RecordsSync(nn.Module):
    """Stands in for DDP: records which micro-batches ran inside ``no_sync()``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.synced, self.inside = inner, [], False

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        yield
        self.inside = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.synced.append(not self.inside)
        return self.inner(x)


def test_only_the_last_micro_batch_of_a_step_all_reduces() -> None:
    pixels = torch.randint(0, 256, (20, 4, 4, 3), dtype=torch.uint8)
    loader = Loader(ArraySource(pixels, [i % 3 for i in range(20)], CPU), 4, CPU)
    model = _RecordsSync(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion, precision = nn.CrossEntropyLoss(), Precision(CPU)
    train_one_epoch(
        model, loader, optimizer, criterion, precision, 0, EpochProgress(), accum_steps=2
    )
    assert model.synced == [False, True, False, True, True]  # groups of 2, 2 and 1


RESUME_SECTIONS = {
    "train": {"epochs": 3, "batch_size": 4, "grad_accum_steps": 3, "ema_decay": 0.9},
    "augment": {"scale": [0.6, 1.0], "hflip": 0.5},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}


@pytest.mark.parametrize("checks", [2, 4, 11])  # all between the micro-batches of one step
def test_resume_between_micro_batches_is_exact_with_ema(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checks: int
) -> None:
    reference = fit(tiny_config(pattern_root, tmp_path / "a", **RESUME_SECTIONS))
    interrupt_after(monkeypatch, checks)
    with pytest.raises(Interrupted, match="resume"):
        fit(tiny_config(pattern_root, tmp_path / "b", **RESUME_SECTIONS))
    monkeypatch.undo()
    stopped = checkpoint(tmp_path / "b" / "run")
    assert stopped["batch"] % 3 != 0 and stopped["grads"]  # inside an accumulation
    resumed = fit(resume=tmp_path / "b" / "run")
    for name in ("last.pt", "best.pt"):
        ref, res = checkpoint(reference.run_dir, name), checkpoint(resumed.run_dir, name)
        assert_same(ref["model"], res["model"])
    # the weight average and the step count are resume state: last.pt holds them
    ref, res = checkpoint(reference.run_dir, "last.pt"), checkpoint(resumed.run_dir, "last.pt")
    assert_same(ref["ema"], res["ema"])
    assert ref["optimizer_steps"] == res["optimizer_steps"]
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in reference.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]
    assert resumed.metrics == reference.metrics


# --- weight average ----------------------------------------------------------------------


def test_better_weights_follows_the_monitor_direction() -> None:
    row = {"val_accuracy": 0.5, "val_accuracy_ema": 0.6, "val_loss": 0.4, "val_loss_ema": 0.5}
    assert better_weights(row, "val_accuracy", "max") == (0.6, "ema")
    assert better_weights(row, "val_loss", "min") == (0.4, "raw")
    assert better_weights({"train_loss": 1.0}, "train_loss", "min") == (1.0, "raw")
    tie = {"val_accuracy": 0.5, "val_accuracy_ema": 0.5}
    assert better_weights(tie, "val_accuracy", "max") == (0.5, "raw")


def test_ema_is_validated_each_epoch_and_best_holds_the_preferred_weights(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = {"train": {"epochs": 2, "ema_decay": 0.5, "checkpoint_every": 1}}
    # make the average always the better one, to see best.pt take it
    monkeypatch.setattr(fit_module, "better_weights", lambda row, m, mode: (row[f"{m}_ema"], "ema"))
    result = fit(tiny_config(pattern_root, tmp_path, **sections))
    for row in result.history:
        for key in ("val_loss_ema", "val_accuracy_ema", "val_f1_macro_ema"):
            assert row[key] is not None, key
    best = checkpoint(result.run_dir, "best.pt")
    epoch = checkpoint(result.run_dir, f"epoch_00{result.summary.best_epoch}.pt")
    assert best["meta"]["weights"] == "ema"
    assert_same(best["model"], epoch["ema"])
    assert not all(torch.equal(epoch["ema"][k], epoch["model"][k]) for k in epoch["model"])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["best_weights"] == "ema"


def test_without_ema_nothing_changes(pattern_root: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(pattern_root, tmp_path))
    assert "val_accuracy_ema" not in result.history[0]
    assert checkpoint(result.run_dir, "last.pt")["ema"] is None
    assert checkpoint(result.run_dir, "best.pt")["meta"]["weights"] == "raw"
    assert "best_weights" not in result.summary.to_dict()


# --- test-time augmentation -------------------------------------------------------------


def test_views_are_nested_and_keep_the_batch_shape() -> None:
    x = torch.rand(2, 3, 16, 16)
    flip, crops = views("flip", x), views("flip+crops", x)
    assert len(flip) == 2 and len(crops) == 6
    assert torch.equal(flip[0], x) and torch.equal(flip[1], x.flip(-1))
    for a, b in zip(flip, crops, strict=False):
        assert torch.equal(a, b)  # one pass of the widest mode serves the narrower ones
    assert all(v.shape == x.shape for v in crops)
    with pytest.raises(ConfigError, match="flip\\+crops"):
        views("rotate", x)
    assert set(VIEWS) == {"none", "flip", "flip+crops"}


def test_average_logits_is_the_log_of_the_mean_probability() -> None:
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    mean = (a.softmax(-1) + b.softmax(-1)) / 2
    torch.testing.assert_close(average_logits([a, b]).softmax(-1), mean)
    assert torch.equal(average_logits([a]), a)


class _LeftHalf(nn.Module):
    """Scores class 0 by the mean of the left half of the image: flipping changes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([left * 4, torch.zeros_like(left)], 1)


def test_evaluate_with_tta_in_one_pass() -> None:
    pixels = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)  # (N, H, W, C)
    pixels[:, :, :4] = 255  # bright left half: class 0 without TTA, a tie after the flip
    loader = Loader(ArraySource(pixels, [0, 0, 1, 1], CPU), 2, CPU)
    results = evaluate_modes(_LeftHalf(), loader, Precision(CPU), ("none", "flip"))
    targets, plain, _ = results["none"]
    _, flipped, _ = results["flip"]
    assert np.array_equal(plain, evaluate(_LeftHalf(), loader, Precision(CPU))[1])
    assert (plain[:, 0] > plain[:, 1]).all()
    np.testing.assert_allclose(np.exp(flipped).sum(1), 1.0, rtol=1e-5)
    expected = (torch.tensor(plain).softmax(-1) + torch.tensor([0.5, 0.5])) / 2
    np.testing.assert_allclose(np.exp(flipped), expected.numpy(), rtol=1e-5)


def test_fit_reports_test_accuracy_with_and_without_tta(pattern_root: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(pattern_root, tmp_path, train={"tta": "flip"}))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["tta"]["mode"] == "flip" and 0 <= metrics["tta"]["accuracy"] <= 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["test_accuracy_tta"] == metrics["tta"]["accuracy"]
    assert summary["test_accuracy"] == metrics["accuracy"]


# --- bf16 on CPUs that have it ------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: AnyVendor\nflags\t\t: {flags}\n")
    assert runtime.cpu_has_native_bf16(info) is native


def test_amp_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.amp_dtype("auto", CPU) == torch.bfloat16
    assert runtime.amp_dtype("off", CPU) is None  # off: exact fp32 whatever the CPU
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.amp_dtype("auto", CPU) is None


def test_bf16_training_keeps_fp32_weights_for_export(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    seen = []
    real = fit_module.train_one_epoch
    monkeypatch.setattr(
        fit_module,
        "train_one_epoch",
        lambda *a, **k: seen.append(a[4].dtype) or real(*a, **k),
    )
    result = fit(tiny_config(pattern_root, tmp_path, train={"epochs": 1, "device": "cpu"}))
    assert seen == [torch.bfloat16]  # auto chose bf16 autocast on this (pretend) CPU
    state = checkpoint(result.run_dir, "best.pt")["model"]
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
