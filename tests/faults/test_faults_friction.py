"""What a new user trips over: an offline hub init, finding a model name, trivial metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.errors import CheckpointError, ConfigError
from imagefit.models import weights
from imagefit.models.registry import create_model

pytestmark = pytest.mark.faults
LEGACY = Path(__file__).parents[1] / "data" / "legacy_run"
runner = CliRunner()


def test_an_offline_hub_init_fails_fast_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "HUB_HOST", "hub.invalid")  # never resolves: offline
    monkeypatch.setenv("HF_HOME", "/nonexistent-hub-cache")
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        create_model("resnet18", 3, "hub:resnet18.a1_in1k")
    assert time.perf_counter() - started < 15  # huggingface_hub alone retries for ~50 s
    message = str(caught.value)
    assert "hub.invalid is unreachable" in message and "resnet18.a1_in1k" in message
    assert "model.init=/path/to/resnet18.a1_in1k.safetensors" in message


def test_models_lists_imagefit_and_timm_names_with_a_filter() -> None:
    result = runner.invoke(app, ["models", "resnet1*"])
    names = result.output.split()
    assert result.exit_code == 0 and "resnet18" in names and "resnet101" in names
    assert "simple_cnn" not in names and "resnet50" not in names
    assert runner.invoke(app, ["models", "simple*"]).output.split() == ["simple_cnn"]
    tagged = runner.invoke(app, ["models", "resnet18.*", "--pretrained"]).output.split()
    assert "resnet18.a1_in1k" in tagged
    missing = runner.invoke(app, ["models", "zzz*"])
    assert isinstance(missing.exception, ConfigError)  # main() prints it and exits with 2
    assert "no model name matches 'zzz*'" in str(missing.exception)


def test_piped_tables_keep_whole_file_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY / "runs" / "legacy", run)
    image = tmp_path / ("a_rather_long_folder_name_" * 4) / ("photo_of_a_rose_" * 5 + ".png")
    image.parent.mkdir()
    shutil.copy(sorted((LEGACY / "data" / "roses").iterdir())[0], image)
    out = subprocess.run(
        [sys.executable, "-m", "imagefit", "predict", str(run), str(image)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert out.returncode == 0, out.stderr
    assert str(image) in out.stdout  # one piece, not cut or wrapped
