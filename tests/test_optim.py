"""Optimizer registry, parameter groups and the per-epoch learning-rate schedules."""

import math

import pytest
import torch

from imagefit.config import FinetuneConfig, OptimConfig, ScheduleConfig
from imagefit.models.registry import create_model
from imagefit.train.optim import LRSchedule, create_optimizer
from imagefit.train.stopping import EarlyStopping


def _schedule(name: str, epochs: int = 10, **kwargs) -> LRSchedule:
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model, OptimConfig(name="sgd", lr=1.0), FinetuneConfig())
    return LRSchedule(optimizer, ScheduleConfig(name=name, **kwargs), 1.0, epochs)


def test_cosine_with_warmup() -> None:
    s = _schedule("cosine", epochs=10, warmup_epochs=2, warmup_start_factor=0.1)
    lrs = [s.start_epoch(e) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55)
    assert lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[-1])


def test_step_and_none() -> None:
    step = _schedule("step", step_size=3, gamma=0.5)
    assert [step.start_epoch(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert {_schedule("none").start_epoch(e) for e in range(5)} == {1.0}


def test_plateau_reduces_after_patience_and_resumes() -> None:
    s = _schedule("plateau", plateau_patience=1, plateau_factor=0.1)
    for metric in (0.5, 0.6, 0.6, 0.6):  # improves, then stalls twice (> patience 1)
        s.end_epoch(metric)
    assert s.lr_at(4) == pytest.approx(0.1)
    restored = _schedule("plateau", plateau_patience=1, plateau_factor=0.1)
    restored.load_state_dict(s.state_dict())
    assert restored.lr_at(4) == s.lr_at(4)


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = create_model("resnet18", 3)
    optimizer = create_optimizer(
        model, OptimConfig(name="adamw", weight_decay=0.05), FinetuneConfig()
    )
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        expected = 0.05 if param.ndim > 1 else 0.0  # weights decay; biases and norms do not
        assert decay_of[id(param)] == expected, name
    count = sum(len(g["params"]) for g in optimizer.param_groups)
    assert count == len(list(model.parameters()))  # frozen or not, every tensor is there


def test_layer_decay_scales_early_stages_down() -> None:
    model = create_model("resnet18", 3)
    optimizer = create_optimizer(model, OptimConfig(), FinetuneConfig(layer_decay=0.5))
    schedule = LRSchedule(optimizer, ScheduleConfig(name="none"), 1e-3, 1)
    schedule.start_epoch(0)
    by_name = {id(p): n for n, p in model.named_parameters()}
    lrs = {
        by_name[id(p)].split(".")[0]: g["lr"] for g in optimizer.param_groups for p in g["params"]
    }
    assert lrs["fc"] == pytest.approx(1e-3)
    assert lrs["conv1"] < lrs["layer1"] < lrs["layer4"] < lrs["fc"]


def test_sgd_nesterov_and_frozen_parameters_stay_put() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    optimizer = create_optimizer(
        model, OptimConfig(name="sgd", nesterov=True, lr=0.1), FinetuneConfig()
    )
    assert optimizer.param_groups[0]["nesterov"] is True
    model[0].requires_grad_(False)
    before = model[0].weight.clone()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert torch.equal(model[0].weight, before)


def test_early_stopping_modes() -> None:
    loss = EarlyStopping("val_loss", patience=2)
    assert [loss.update(v, e) for e, v in enumerate([1.0, 0.9, 0.95, 0.91])] == [
        True,
        True,
        False,
        False,
    ]
    assert loss.should_stop and loss.best_epoch == 1
    acc = EarlyStopping("val_accuracy", patience=None, min_delta=0.01)
    assert [acc.update(v, e) for e, v in enumerate([0.5, 0.505, 0.52])] == [True, False, True]
    assert not acc.should_stop
