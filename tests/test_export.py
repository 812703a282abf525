"""ONNX export: checked files with metadata, parity with PyTorch on real images at two batch
sizes (SimpleCNN, resnet18, efficientnet_b0), INT8 with its accuracy cost, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import timm
import torch
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.errors import CheckpointError
from imagefit.evaluate.evaluator import evaluate_checkpoint
from imagefit.export import ExportError
from imagefit.export import onnx as onnx_export
from imagefit.export.onnx import (
    compare_logits,
    export_onnx,
    ort_session,
    stored_paths,
    verify_onnx,
)
from imagefit.models.trained import load_trained
from imagefit.runs.checkpoint import save_checkpoint
from imagefit.runs.layout import RunLayout

from helpers.runs import train_digits_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    return train_digits_run(tmp_path_factory.mktemp("export"), digits_root)


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> dict[str, Any]:
    return export_onnx(run_dir, int8=True)


def test_verified_on_real_images_at_two_batch_sizes(exported: dict[str, Any]) -> None:
    check = exported["verification"]
    assert check["passed"] and check["inputs"].startswith("val split of")
    assert set(check["batch_sizes"]) == {"1", "8"} and check["images"] >= 16
    for result in check["batch_sizes"].values():
        assert result["within_tolerance"] and result["top1_agreement"] == 1.0
        assert result["max_abs_diff"] < 1e-4


def test_file_is_checked_dynamic_and_carries_preprocessing(
    exported: dict[str, Any], run_dir: Path
) -> None:
    path = Path(exported["onnx"])
    assert path == run_dir / "model.onnx" and exported["opset"] == 17
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    props = {p.key: p.value for p in proto.metadata_props}
    _, meta, _ = load_trained(run_dir)
    assert json.loads(props["imagefit.classes"]) == meta["classes"] == [str(d) for d in range(10)]
    assert (
        json.loads(props["imagefit.mean"]) == [0.5] * 3
        and json.loads(props["imagefit.image_size"]) == 32
    )
    assert props["imagefit.arch"] == "simple_cnn" and props["imagefit.version"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    out = ort_session(path).run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10)  # any batch size


def test_int8_reports_accuracy_size_and_latency_next_to_fp32(
    exported: dict[str, Any], run_dir: Path
) -> None:
    q = exported["int8"]
    assert Path(q["onnx"]) == run_dir / "model.int8.onnx"
    assert q["size_bytes"] < q["fp32_size_bytes"]
    assert q["eval_split"] == "test" and q["eval_images"] == 269  # the whole test split
    assert q["accuracy_drop"] == pytest.approx(q["fp32_accuracy"] - q["int8_accuracy"])
    assert abs(q["accuracy_drop"]) <= 0.05 and q["top1_agreement_with_fp32"] >= 0.9
    assert q["latency_ms_batch1"]["int8"] > 0 and q["latency_ms_batch1"]["fp32"] > 0
    props = {p.key: p.value for p in onnx.load(q["onnx"]).metadata_props}
    assert "imagefit.quantization" in props and json.loads(props["imagefit.num_classes"]) == 10
    # export.json stores the run's own files relative to the run folder
    stored = stored_paths(exported, RunLayout(run_dir))
    assert stored["onnx"] == "model.onnx" and stored["int8"]["onnx"] == "model.int8.onnx"
    assert json.loads((run_dir / "export.json").read_text()) == json.loads(json.dumps(stored))


def test_onnx_accuracy_is_the_eval_accuracy(exported: dict[str, Any], run_dir: Path) -> None:
    """ORT fp32 on the whole test split scores exactly what `imagefit eval` scores."""
    assert (
        exported["int8"]["fp32_accuracy"] == evaluate_checkpoint(run_dir, device="cpu")["accuracy"]
    )


def _perturbed(arch: str, classes: int) -> torch.nn.Module:
    """A random-init timm model whose logits are O(1): timm's zero-initialised residual norms
    and tiny head make untrained logits ~1e-5, which any export would match trivially."""
    model = timm.create_model(arch, num_classes=classes).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        model.get_classifier().weight.normal_(0, 0.5, generator=generator)
    return model


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_parity_of_timm_architectures(arch: str, run_dir: Path, tmp_path: Path) -> None:
    _, meta, config = load_trained(run_dir)
    model = _perturbed(arch, meta["num_classes"])
    meta = {**meta, "arch": arch, "image_size": 64}
    save_checkpoint(
        {"model": model.state_dict(), "meta": meta, "config": config}, tmp_path / "best.pt"
    )
    shutil.copy(run_dir / "split.json", tmp_path / "split.json")  # real digits, resized to 64 px
    result = export_onnx(tmp_path / "best.pt", batch_sizes=(1, 8))
    check = result["verification"]
    assert check["passed"] and check["inputs"].startswith("val split")
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-3
    assert result["input_shape"] == ["batch", 3, 64, 64]


def test_opset_18_uses_the_torch_export_exporter(run_dir: Path, tmp_path: Path) -> None:
    result = export_onnx(run_dir, out=tmp_path / "m18.onnx", opset=18)
    assert result["exporter"] == "dynamo" and result["verification"]["passed"]
    assert onnx.load(str(tmp_path / "m18.onnx")).opset_import[0].version == 18


@pytest.mark.parametrize("arch", ["simple_cnn", "resnet18", "efficientnet_b0"])
def test_opset_14_as_seed_004_exports_it(arch: str, run_dir: Path, tmp_path: Path) -> None:
    """Seed 004 ships its model at opset 14: the TorchScript exporter, checked and verified."""
    if arch == "simple_cnn":  # the trained digits run itself, copied so its export.json stays
        shutil.copy(run_dir / "best.pt", tmp_path / "best.pt")
    else:
        _, meta, config = load_trained(run_dir)
        model = _perturbed(arch, meta["num_classes"])
        meta = {**meta, "arch": arch, "image_size": 64}
        save_checkpoint(
            {"model": model.state_dict(), "meta": meta, "config": config}, tmp_path / "best.pt"
        )
    shutil.copy(run_dir / "split.json", tmp_path / "split.json")
    result = export_onnx(tmp_path / "best.pt", opset=14, batch_sizes=(1, 8))
    assert result["opset"] == 14 and result["exporter"] == "torchscript"
    check = result["verification"]
    assert check["passed"] and check["inputs"].startswith("val split")
    assert set(check["batch_sizes"]) == {"1", "8"} and check["top1_agreement"] == 1.0
    assert check["max_abs_diff"] < 1e-3
    proto = onnx.load(result["onnx"])
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 14
    assert json.loads((tmp_path / "export.json").read_text())["opset"] == 14


def test_a_model_that_differs_fails_verification(exported: dict[str, Any], run_dir: Path) -> None:
    model, meta, _ = load_trained(run_dir)
    with torch.no_grad():
        model.fc.bias += 1.0  # no longer the exported model
    check = verify_onnx(model, Path(exported["onnx"]), meta, run_dir)
    assert not check["passed"] and check["max_abs_diff"] > 0.5


def test_an_export_that_fails_verification_is_set_aside(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("best.pt", "split.json"):
        shutil.copy(run_dir / name, tmp_path / name)
    monkeypatch.setattr(onnx_export, "ATOL", -1.0)  # no difference can pass: a broken exporter
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        export_onnx(tmp_path)
    assert not (tmp_path / "model.onnx").exists() and (tmp_path / "model.rejected.onnx").is_file()
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["verification"]["passed"] is False and report["onnx"].endswith(".rejected.onnx")


def test_near_ties_are_told_apart_from_disagreements() -> None:
    ref = np.array([[1.0, 0.0], [0.5, 0.5 - 1e-7], [2.0, 0.0]])
    out = np.array([[1.0, 0.0], [0.5 - 1e-7, 0.5], [0.0, 2.0]], dtype=np.float32)
    result = compare_logits(out, ref)
    assert result["disagreements"] == 2 and result["near_ties"] == 1
    assert not result["within_tolerance"] and result["top1_agreement"] == pytest.approx(1 / 3)


def test_cli_export_prints_the_report(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(run_dir / "best.pt"), "--onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "passed" in result.stdout and "top-1 agreement" in result.stdout
    refused = runner.invoke(app, ["export", str(run_dir)])
    assert refused.exit_code != 0 and "--onnx" in str(refused.exception or refused.output)


def test_missing_target_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        export_onnx(tmp_path / "nowhere")
