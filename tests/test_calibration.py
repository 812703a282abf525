"""Temperature scaling: fitted on val, lowers the ECE of an over-confident model, travels with
the weights into predict and ONNX, and lets predict abstain."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.data.images import load_array
from imagefit.data.inputs import normalise
from imagefit.evaluate.calibration import (
    calibrate_run,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from imagefit.export.predict import predict
from imagefit.models.trained import load_trained
from imagefit.train.fit import fit

from conftest import tiny_config


def _overconfident(n: int, seed: int, scale: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z): z is calibrated by construction, z * scale is not."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 5))
    p = softmax(z)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z * scale, labels


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model() -> None:
    val_logits, val_labels = _overconfident(3000, seed=0)
    test_logits, test_labels = _overconfident(3000, seed=1)
    temperature = fit_temperature(val_logits, val_labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # recovers the planted scale
    before = expected_calibration_error(softmax(test_logits), test_labels)
    after = expected_calibration_error(softmax(test_logits, temperature), test_labels)
    assert before > 0.15 and after < 0.04
    assert negative_log_likelihood(test_logits, test_labels, temperature) < negative_log_likelihood(
        test_logits, test_labels
    )
    # accuracy is untouched: T never changes the winning class
    assert np.array_equal(
        softmax(test_logits).argmax(1), softmax(test_logits, temperature).argmax(1)
    )


def test_ece_of_a_hand_computed_case() -> None:
    # two images at confidence 0.9 (one right), two at 0.6 (both right): bins 14 and 9
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(
        (2 * abs(0.5 - 0.9) + 2 * abs(1.0 - 0.6)) / 4
    )


def test_calibrate_run_stores_the_temperature_and_predict_uses_it(
    pattern_root: Path, tmp_path: Path
) -> None:
    # 32 px: SimpleCNN's adaptive pool is then the identity, which the ONNX exporter needs
    cfg = tiny_config(pattern_root, tmp_path, data={"image_size": 32}, train={"epochs": 3})
    run = fit(cfg).run_dir
    result = calibrate_run(run)
    t = result["temperature"]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("ece", "nll", "ece_calibrated", "nll_calibrated", "temperature"):
        assert isinstance(metrics[key], float)
    assert metrics["temperature"] == pytest.approx(t)
    assert metrics["nll"] == pytest.approx(metrics["loss"], rel=1e-4)
    assert (run / "plots" / "reliability.png").stat().st_size > 5000
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]
    assert meta["temperature"] == pytest.approx(t)

    image = next((pattern_root / "class_0").iterdir())
    [row] = predict(run, [image])
    assert row["calibrated"] is True and "abstain" not in row
    [low] = predict(run, [image], abstain_below=row["probability"] * (1 - 1e-6))
    [high] = predict(run, [image], abstain_below=min(1.0, row["probability"] * (1 + 1e-6)))
    assert low["abstain"] is False and (high["abstain"] or row["probability"] == 1.0)
    model, meta, _ = load_trained(run)
    x = normalise(load_array(image, meta["image_size"])[None], meta["mean"], meta["std"])
    logits = model(torch.from_numpy(x)).detach().numpy()
    assert row["probability"] == pytest.approx(float(softmax(logits, t).max()), rel=1e-5)

    from imagefit.export.onnx import export_onnx

    export_onnx(run, verify=False)
    [onnx_row] = predict(run / "model.onnx", [image])
    assert onnx_row["calibrated"] is True
    assert onnx_row["probability"] == pytest.approx(row["probability"], abs=1e-4)

    out = CliRunner().invoke(app, ["predict", str(run), str(image), "--abstain-below", "1"])
    assert out.exit_code == 0 and "under 1.0: abstain" in out.output


def test_calibration_refuses_a_run_without_validation(pattern_root: Path, tmp_path: Path) -> None:
    from imagefit.errors import DataError

    run = fit(
        tiny_config(
            pattern_root,
            tmp_path,
            data={"val_fraction": 0.0},
            train={"epochs": 1, "monitor": "train_loss"},
        )
    ).run_dir
    with pytest.raises(DataError, match="validation split"):
        calibrate_run(run)


def test_trust_steps_after_training(pattern_root: Path, tmp_path: Path) -> None:
    from imagefit.evaluate.post_run import trust_steps

    run = fit(tiny_config(pattern_root, tmp_path, data={"image_size": 32})).run_dir
    results = trust_steps(run)
    assert results["test_predictions"] and results["calibration"] > 0
    assert results["gallery"] is not None
    assert (run / "test_predictions.npz").is_file() and (run / "gallery" / "gallery.json").is_file()
    # calibration re-saved best.pt; the predictions still belong to it (not recomputed)
    from imagefit.evaluate.predictions import SplitPredictions, run_test_predictions

    stored = SplitPredictions.load(run / "test_predictions.npz")
    assert run_test_predictions(run).checkpoint_sha256 == stored.checkpoint_sha256
