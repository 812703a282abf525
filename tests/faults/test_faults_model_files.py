"""Hostile model files: what an ONNX file or a checkpoint says about itself is checked before
it is used (one line naming the file and the key, exit 2), and a refused checkpoint is
described without being unpickled."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefit import cli
from imagefit.config import config_from_dict
from imagefit.errors import CheckpointError, MetadataError
from imagefit.export.onnx import export_onnx
from imagefit.models.trained import load_trained
from imagefit.runs.checkpoint import load_checkpoint
from imagefit.runs.meta import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, validate_meta
from imagefit.serve.model import load_served_model
from imagefit.train.fit import fit

from conftest import write_pattern_folder

pytestmark = pytest.mark.faults


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["imagefit", "-q", *args])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("model-files")
    root = write_pattern_folder(base / "patterns")
    tree = {
        "data": {"root": str(root), "image_size": 32, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "train": {"epochs": 1, "batch_size": 8, "seed": 0, "threads": 1},
        "output": {"dir": str(base / "runs"), "name": "run"},
    }
    run = fit(config_from_dict(tree)).run_dir
    export_onnx(run, verify=False)
    image = next(root.rglob("*.png"))
    return {"base": base, "run": run, "onnx": run / "model.onnx", "image": image}


def with_props(source: Path, target: Path, **changes: str | None) -> Path:
    """A copy of ``source`` whose ``imagefit.<key>`` metadata is replaced (None: removed)."""
    proto = onnx.load(str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(f"imagefit.{key}", None)
        else:
            props[f"imagefit.{key}"] = value
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(target))
    return target


HOSTILE_ONNX = [
    ("image_size", "1000000", "image_size"),  # once allocated gigabytes for half a minute
    ("image_size", '"224"', "image_size"),
    ("image_size", "16.5", "image_size"),
    ("classes", "[1, 2, 3]", "classes"),
    ("classes", '["a", "a", "b"]', "unique"),
    ("classes", '["a", "b"', "not valid JSON"),
    ("num_classes", "4", "num_classes"),
    ("mean", "[0.5, 0.5]", "mean"),
    ("std", "[0.0, 0.2, 0.2]", "std"),
    ("std", '{"r": 1}', "std"),
    ("temperature", "-1", "temperature"),
    ("temperature", "NaN", "temperature"),
    ("crop_pct", "2.5", "crop_pct"),
    ("interpolation", "lanczos", "interpolation"),
]


@pytest.mark.parametrize(("key", "value", "named"), HOSTILE_ONNX)
def test_predict_on_hostile_onnx_metadata_is_one_line(
    lab: dict, tmp_path: Path, capsys, monkeypatch, key: str, value: str, named: str
) -> None:
    model = with_props(lab["onnx"], tmp_path / "m.onnx", **{key: value})
    started = time.perf_counter()
    code, err = run_cli(["predict", str(model), str(lab["image"])], capsys, monkeypatch)
    assert time.perf_counter() - started < 10  # refused before any allocation
    assert code == 2
    line = one_line(err)
    assert str(model) in line and named in line and key in line


def test_classes_that_do_not_match_the_output_width(lab: dict, tmp_path: Path) -> None:
    # Consistent with each other, but the model has 3 outputs: the last would have no name.
    model = with_props(lab["onnx"], tmp_path / "m.onnx", classes='["a", "b"]', num_classes="2")
    with pytest.raises(MetadataError, match=r"outputs 3 scores but its metadata names 2"):
        load_served_model(model)


def test_hostile_checkpoint_meta(lab: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    state = torch.load(lab["run"] / "best.pt", weights_only=True)
    for key, value in (("image_size", 10**7), ("classes", "abc"), ("mean", [0.5] * 4)):
        bad = tmp_path / f"{key}.pt"
        torch.save({**state, "meta": {**state["meta"], key: value}}, bad)
        code, err = run_cli(["predict", str(bad), str(lab["image"])], capsys, monkeypatch)
        assert code == 2
        line = one_line(err)
        assert str(bad) in line and f"checkpoint meta {key}" in line


GOOD = {
    "arch": "simple_cnn",
    "classes": ["a", "b", "c"],
    "num_classes": 3,
    "image_size": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from([*GOOD, "temperature", "crop_pct", "interpolation"]), value=ANY_JSON)
def test_any_value_is_validated_or_refused_never_crashes(key: str, value: object) -> None:
    try:
        meta = validate_meta({**GOOD, key: value}, "m.onnx")
    except MetadataError as exc:
        assert str(exc).startswith("m.onnx: metadata ") and "\n" not in str(exc)
        return
    # Whatever passes is safe to size, normalise and label by.
    assert type(meta["image_size"]) is int
    assert MIN_IMAGE_SIZE <= meta["image_size"] <= MAX_IMAGE_SIZE
    assert len(meta["classes"]) == meta["num_classes"] == len(set(meta["classes"]))
    assert all(isinstance(c, str) and c for c in meta["classes"])
    assert len(meta["mean"]) == len(meta["std"]) == 3 and all(s > 0 for s in meta["std"])
    assert meta.get("temperature") is None or meta["temperature"] > 0
    json.dumps(meta, allow_nan=False)  # finite numbers only


class _Owned(torch.nn.Module):
    """A user's own class: unpickling it would import this test module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)


def _refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    # PyTorch's own advice is not repeated: it says to retry the one unsafe step.
    assert "Weights only load failed" not in message and "WeightsUnpickler" not in message
    return message


def test_refused_full_model_is_named_with_a_conversion(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(_Owned(), path)
    message = _refusal(path)
    assert "a pickled full model object" in message and "_Owned" in message
    assert "torch.nn.modules.linear.Linear" in message or "..." in message
    command = message.split('python -c "')[1].split('"  then')[0]
    assert "torch.save(obj.state_dict()" in command and "full.state_dict.pt" in command
    # The command does what it says, where the class can be imported (a trusted environment).
    exec(command, {"__name__": "converter"})
    weights = torch.load(tmp_path / "full.state_dict.pt", weights_only=True)
    assert set(weights) == {"fc.weight", "fc.bias"}


def test_refused_lightning_checkpoint_and_optimizer(tmp_path: Path) -> None:
    lightning = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "state_dict": _Owned().state_dict(),
            "pytorch-lightning_version": "2.4.0",
            "hyper_parameters": argparse.Namespace(lr=0.1),  # what makes torch refuse it
        },
        lightning,
    )
    message = _refusal(lightning)
    assert "a PyTorch Lightning checkpoint" in message and 'torch.save(obj["state_dict"]' in message
    optimizer = tmp_path / "optim.pt"
    torch.save(torch.optim.SGD(_Owned().parameters(), lr=0.1), optimizer)
    message = _refusal(optimizer)
    assert "optimizer" in message and "python -c" not in message


def test_refused_attack_is_not_offered_a_conversion(tmp_path: Path) -> None:
    class Attack:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "attack.pt"
    torch.save({"model": {}, "x": Attack()}, path)
    message = _refusal(path)
    assert "runs posix.system when loaded: do not load it" in message
    assert "python -c" not in message and not (tmp_path / "ran").exists()


def test_plain_files_that_are_not_checkpoints_say_what_they_are(tmp_path: Path) -> None:
    optimizer = torch.optim.SGD(_Owned().parameters(), lr=0.1)
    cases = {
        "optimizer": (optimizer.state_dict(), "an optimizer state"),
        "bare": (_Owned().state_dict(), "a bare state dict"),
    }
    for name, (state, said) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=said):
            load_trained(path)
