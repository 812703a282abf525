"""Every registered model, head replacement, weight initialisation and transfer strategies."""

from pathlib import Path

import pytest
import torch
import torchvision

from imagefit.errors import CheckpointError, ConfigError
from imagefit.models.registry import create_model, list_models
from imagefit.models.transfer import (
    apply_strategy,
    count_parameters,
    freeze_frozen_norms,
    stage_groups,
)

ARCHITECTURES = [*list_models(), "resnet18", "efficientnet_b0", "mobilenetv3_small_050"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_backward_and_head_swap(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {pname: param.grad for pname, param in model.named_parameters()}
    assert all(g is not None for g in grads.values())  # every trainable tensor is in the graph
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_simple_cnn_has_the_seed_parameter_count() -> None:
    assert count_parameters(create_model("simple_cnn", 10)) == (62006, 62006)


def test_unknown_model_lists_alternatives() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet18x", 10)


def test_init_from_torchvision_weights_replaces_the_head(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18_tv.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", 5, init=str(path))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.out_features == 5
    assert model.imagefit_init["head_replaced"] and model.imagefit_init["kind"] == "weights-file"
    same_head = create_model("resnet18", 1000, init=str(path))
    assert torch.equal(same_head.fc.weight, reference.fc.weight)


def test_init_from_a_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit.*unexpected"):
        create_model("resnet18", 5, init=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        create_model("resnet18", 5, init=str(tmp_path / "none.pth"))


def test_hub_offline_names_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode answers at once; without it the hub client retries for ~45 s first.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"model\.init=/path/to/"):
        create_model("resnet18", 5, init="hub:resnet18.a1_in1k")
    with pytest.raises(ConfigError, match="not a 'resnet18'"):
        create_model("resnet18", 5, init="hub:resnet50")


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18", "efficientnet_b0"])
def test_strategies_select_the_right_parameters(name: str) -> None:
    model = create_model(name, 4)
    groups = stage_groups(model)
    head = set(groups[-1])
    apply_strategy(model, "freeze")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    apply_strategy(model, "partial", 2)
    expected = head | set(groups[-2]) | set(groups[-3])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    apply_strategy(model, "full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="partial_stages=99"):
        apply_strategy(model, "partial", 99)


def test_resnet_partial_is_layer3_layer4_and_fc() -> None:
    model = create_model("resnet50", 5)
    apply_strategy(model, "partial", 2)
    prefixes = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert prefixes == {"layer3", "layer4", "fc"}


def test_frozen_batchnorm_statistics_stay_frozen() -> None:
    model = create_model("resnet18", 3)
    apply_strategy(model, "partial", 1)
    model.train()
    freeze_frozen_norms(model)
    before = model.layer1[0].bn1.running_mean.clone()
    trained_before = model.layer4[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert not torch.equal(model.layer4[0].bn1.running_mean, trained_before)
