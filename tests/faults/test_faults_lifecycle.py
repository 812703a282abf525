"""A run's lifecycle is honest: an untrained run is not a model, a resumed run runs what its
folder says, a moved run folder still works, a dataset without a test split says what it
reports on, and ``best.pt`` holds what evaluation needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.errors import ConfigError, Interrupted, UntrainedRunError
from imagefit.evaluate.evaluator import evaluate_checkpoint
from imagefit.evaluate.report import write_report
from imagefit.export.onnx import export_onnx
from imagefit.export.predict import predict
from imagefit.runs.layout import RunLayout
from imagefit.serve.model import load_served_model
from imagefit.train.fit import fit
from imagefit.workflow import plots_step, train

from conftest import interrupt_after, tiny_config, write_photo_folder

pytestmark = pytest.mark.faults
runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


def _untrained_run(root: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run stopped before its first epoch: config, split and an epoch-0 last.pt."""
    interrupt_after(monkeypatch, 0)
    with pytest.raises(Interrupted):
        fit(tiny_config(root, out, data={"image_size": 32}))  # 32 px: SimpleCNN exports
    monkeypatch.undo()
    run = out / "run"
    assert RunLayout(run).last.is_file() and not RunLayout(run).best.is_file()
    return run


def test_a_run_without_a_finished_epoch_is_refused_by_eval_export_predict_serve_report(
    photo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _untrained_run(photo_root, tmp_path / "runs", monkeypatch)
    image = next((photo_root / "daisy").iterdir())
    for command in (
        ["eval", str(run)],
        ["export", str(run), "--onnx", "--no-verify"],
        ["predict", str(run), str(image)],
        ["report", str(run)],
    ):
        result = runner.invoke(app, command)
        assert isinstance(result.exception, UntrainedRunError), (command, result.output)
        message = str(result.exception)
        assert "no finished epoch" in message and f"imagefit train --resume {run}" in message
    assert not RunLayout(run).onnx.exists() and not RunLayout(run).report.exists()
    # the real command: one line on stderr, exit code 2, no traceback
    done = subprocess.run(
        [sys.executable, "-m", "imagefit", "eval", str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "run run has no finished epoch" in lines[0], done.stderr


def test_allow_untrained_warns_and_labels_every_output(
    photo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _untrained_run(photo_root, tmp_path / "runs", monkeypatch)
    image = next((photo_root / "daisy").iterdir())
    result = runner.invoke(app, ["eval", str(run), "--split", "val", "--allow-untrained", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["trained"] is False
    exported = export_onnx(run, verify=False, allow_untrained=True)
    assert exported["trained"] is False
    assert json.loads(RunLayout(run).export.read_text())["trained"] is False
    props = {p.key: p.value for p in onnx.load(str(RunLayout(run).onnx)).metadata_props}
    assert props["imagefit.trained"] == "false"
    # the exported file carries the label: serving and predicting from it refuse too
    with pytest.raises(UntrainedRunError):
        load_served_model(run)
    with pytest.raises(UntrainedRunError):
        predict(RunLayout(run).onnx, [image])
    served = load_served_model(run, allow_untrained=True)
    assert served.describe()["trained"] is False
    answers = predict(RunLayout(run).onnx, [image], allow_untrained=True)
    assert answers[0]["trained"] is False
    page = write_report([run], tmp_path / "report.html", allow_untrained=True)
    assert "UNTRAINED" in page.read_text()
    cli = runner.invoke(app, ["serve", str(run), "--port", "1"])
    assert isinstance(cli.exception, UntrainedRunError)


def test_a_trained_run_is_not_labelled_untrained(photo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(photo_root, tmp_path / "runs", data={"image_size": 32}, train={"epochs": 1})
    run = fit(cfg).run_dir
    exported = export_onnx(run, verify=False)
    assert exported["trained"] is True
    props = {p.key: p.value for p in onnx.load(str(RunLayout(run).onnx)).metadata_props}
    assert props["imagefit.trained"] == "true"
    assert "trained" not in predict(run, [next((photo_root / "roses").iterdir())])[0]
    assert torch.load(RunLayout(run).best, weights_only=True)["meta"]["classes"]


def _imagefit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagefit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def _set_epochs(run: Path, epochs: int) -> None:
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["train"]["epochs"] = epochs
    (run / "config.yaml").write_text(yaml.safe_dump(tree))


@pytest.mark.slow  # two resumes as real processes from other folders
def test_a_moved_and_renamed_run_resumes_twice_from_other_folders_evaluates_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write_photo_folder(home / "photos", per_class=8)
    monkeypatch.chdir(home)  # relative data and output paths, as a user types them
    cfg = tiny_config(
        Path("photos"),
        Path("runs"),
        data={"image_size": 32},
        schedule={"name": "none"},
        train={"epochs": 1},
    )
    fit(cfg)
    first = home / "runs" / "run"
    stored = yaml.safe_load((first / "config.yaml").read_text())
    assert stored["data"]["root"] == str(home / "photos")  # data: absolute
    assert json.loads((first / "split.json").read_text())["root"] == str(home / "photos")
    assert torch.load(first / "best.pt", weights_only=True)["meta"]["run_dir"] == "."

    run = tmp_path / "elsewhere" / "renamed"
    run.parent.mkdir()
    shutil.move(first, run)
    for epochs, cwd in ((2, tmp_path / "b"), (3, tmp_path / "c")):
        cwd.mkdir()
        _set_epochs(run, epochs)
        done = _imagefit("train", "--resume", str(run), cwd=cwd)
        assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["config"]["data"]["split_manifest"] is None  # nothing cwd-relative stored
    resumes = json.loads((run / "resume.json").read_text())
    assert [r["changed"] for r in resumes] == [
        {"train.epochs": {"from": 1, "to": 2}},
        {"train.epochs": {"from": 2, "to": 3}},
    ]
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3

    monkeypatch.chdir(tmp_path / "c")
    metrics = evaluate_checkpoint(run)
    assert metrics["num_samples"] > 0 and metrics["trained"] is True
    exported = export_onnx(run)
    assert exported["verification"]["passed"]
    record = json.loads((run / "export.json").read_text())
    assert record["onnx"] == "model.onnx" and record["checkpoint"] == "best.pt"


def test_resume_refuses_an_edit_it_cannot_apply_naming_each_key(
    photo_root: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(photo_root, tmp_path / "runs", train={"epochs": 1})  # cosine schedule
    run = fit(cfg).run_dir
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["optim"]["lr"] = 0.1
    tree["train"]["epochs"] = 3
    tree["track"]["tensorboard"] = True  # safe, but the others refuse the resume
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as caught:
        fit(resume=run)
    message = str(caught.value)
    assert "optim.lr: 0.003 -> 0.1" in message
    assert "train.epochs: 1 -> 3 (schedule.name=cosine" in message
    assert "track.tensorboard" not in message
    assert "revert these keys" in message and "start a new run" in message
    assert (run / "last.pt").read_bytes() == before  # nothing ran
    # the report shows what ran, and names the edits that did not
    page = write_report([run], tmp_path / "report.html").read_text()
    assert "edited after the run last trained" in page
    assert "optim.lr: 0.003 → 0.1" in page


def test_best_pt_holds_weights_and_metadata_and_follows_the_umask(
    photo_root: Path, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        run = fit(tiny_config(photo_root, tmp_path / "runs", train={"epochs": 2})).run_dir
    finally:
        os.umask(old)
    best = torch.load(run / "best.pt", weights_only=True)
    assert "optimizer" not in best and "rng" not in best and "history" not in best
    assert set(best) <= {"model", "epoch", "config", "classes", "meta"}
    assert best["meta"]["epoch"] == best["epoch"] >= 1
    assert (run / "best.pt").stat().st_size < 0.6 * (run / "last.pt").stat().st_size
    assert (run / "best.pt").stat().st_mode & 0o777 == 0o644
    assert evaluate_checkpoint(run / "best.pt", "test")["trained"] is True


def test_without_a_test_split_the_run_reports_on_val_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "flowers"
    write_photo_folder(root / "train", per_class=12)
    for name in ("daisy", "roses"):  # the last 4 of each class are val: no test folder
        (root / "val" / name).mkdir(parents=True)
        for photo in sorted((root / "train" / name).iterdir())[8:]:
            shutil.move(photo, root / "val" / name / photo.name)
    cfg = tiny_config(root, tmp_path / "runs", train={"epochs": 1})
    with caplog.at_level("INFO", logger="imagefit"):
        result = train(cfg, steps=(plots_step,))
    said = [r.getMessage() for r in caplog.records if "final metrics" in r.getMessage()]
    assert said and "no test split" in said[0] and "optimistic" in said[0]
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_samples"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reported_on"] == "val (also used for model selection: optimistic)"
    assert summary["test_accuracy"] is None and summary["reported_accuracy"] is not None
    assert (run / "plots" / "confusion_matrix.png").is_file()
    page = write_report([run], tmp_path / "report.html").read_text()
    assert "val (also used for model selection: optimistic)" in page

    evaluated = runner.invoke(app, ["eval", str(run), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout[evaluated.stdout.index("{") :])["split"] == "val"
    empty = runner.invoke(app, ["eval", str(run), "--split", "test"])
    assert "split 'test' is empty or absent" in str(empty.exception)
    assert "use --split val" in str(empty.exception)
