"""Tracking sinks against real back ends: MLflow's local default store, a real MLflow server on
loopback (with a nested run under a parent), a dead server, MLFLOW_TRACKING_URI, a sweep whose
trials nest under one parent run, TensorBoard event files."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from imagefit.config import Config, TrackConfig
from imagefit.errors import Interrupted
from imagefit.models.trained import load_trained
from imagefit.sweep import load_sweep, run_sweep
from imagefit.sweep import runner as sweep_runner
from imagefit.track.mlflow_sink import HTTP_DEFAULTS, MlflowSink, flatten, mlflow_parent
from imagefit.workflow import train

from conftest import tiny_config, write_pattern_folder

EXPERIMENT = "imagefit-tests"
# MLflow's own SQLAlchemy store warns about its queries; nothing here can act on it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module", autouse=True)
def _server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `mlflow server` (sqlite + proxied artifacts) on a free loopback port.

    Launched when the module starts, so that it boots (tens of seconds on 2 cores) while the
    local-store tests run; in its own session, so teardown stops its job-runner child too.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root}/db.sqlite",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    # The job runner (a pool of huey workers for GenAI jobs) is not needed and costs seconds of CPU.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=root,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield Server(f"http://127.0.0.1:{port}", process, root / "server.log")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)  # uvicorn would wait on idle keep-alive connections
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def server(_server_process: Server) -> str:
    """The server's URL, once /health answers."""
    _wait_healthy(_server_process.url, _server_process.process, _server_process.log)
    return _server_process.url


def _wait_healthy(
    url: str, process: subprocess.Popen, log_path: Path, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout} s: {log_path.read_text()[-2000:]}")


@pytest.fixture(autouse=True)
def _clean_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No outside tracking URI leaks in; the sink's HTTP defaults do not leak out."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)


def _config(root: Path, out: Path, **track: object) -> Config:
    return tiny_config(
        root,
        out,
        data={"image_size": 32},
        track={"mlflow": True, "mlflow_experiment": EXPERIMENT, **track},
    )


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_folder(tmp_path_factory.mktemp("data") / "patterns", size=32)


@pytest.fixture(scope="module")
def local_run(patterns: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project folder, run folder): a run with MLflow (no URI), TensorBoard and ONNX export on."""
    project = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = _config(patterns, project / "runs", tensorboard=True)
        cfg.export.onnx = True
        run_dir = train(cfg).run_dir
    return project, run_dir


def _only_run(client: MlflowClient) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id])
    return run


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _assert_run_logged(client: MlflowClient, run: mlflow.entities.Run, run_dir: Path) -> None:
    """Params = the flattened config; per-epoch metrics; test metrics; artifacts; the model."""
    config = json.loads(
        json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    )
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params == flatten(config)
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["data.image_size"] == "32"
    history = json.loads((run_dir / "history.json").read_text())
    val = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in val] == [(r["epoch"], r["val_accuracy"]) for r in history]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["params_total"] > 0
    files = _artifacts(client, run.info.run_id)
    for name in (
        "config.yaml",
        "history.json",
        "history.csv",
        "metrics.json",
        "summary.json",
        "split.json",
        "checkpoints/best.pt",
        "plots/training_curves.png",
    ):
        assert name in files, name


def test_local_default_store(local_run: tuple[Path, Path]) -> None:
    project, run_dir = local_run
    assert (project / "mlflow.db").is_file() and (project / "mlruns").is_dir()  # MLflow's default
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = _only_run(client)
    _assert_run_logged(client, run, run_dir)
    assert {"onnx/model.onnx", "export.json"} <= _artifacts(client, run.info.run_id)
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id


def test_logged_pytorch_model_has_signature_example_and_predicts(
    local_run: tuple[Path, Path],
) -> None:
    project, run_dir = local_run
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        client = MlflowClient()
        run = _only_run(client)
        [logged] = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id], output_format="list"
        )
        assert logged.source_run_id == run.info.run_id and logged.name == "model"
        info = mlflow.models.get_model_info(f"models:/{logged.model_id}")
        loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
    assert info.saved_input_example_info is not None and info.metadata["classes"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    model, _, _ = load_trained(run_dir)
    x = torch.randn(5, 3, 32, 32)  # a batch size the example did not have
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_tensorboard_event_files(local_run: tuple[Path, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = local_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    history = json.loads((run_dir / "history.json").read_text())
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "test_accuracy"} <= set(scalars)
    val = [(e.step, e.value) for e in events.Scalars("val_accuracy")]
    assert val == [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in history]
    [text] = events.Tensors("config/text_summary")
    assert "name: simple_cnn" in text.tensor_proto.string_val[0].decode()


def test_resumed_run_folder_continues_its_mlflow_run(local_run: tuple[Path, Path]) -> None:
    project, run_dir = local_run
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        cfg = _config(Path("unused"), project / "runs")
        sink = MlflowSink(cfg, run_dir)
        client = MlflowClient()
        assert sink.run_id == _only_run(client).info.run_id
        assert client.get_run(sink.run_id).info.status == "RUNNING"
        sink.finished = True
        sink.close()
        assert client.get_run(sink.run_id).info.status == "FINISHED"


def test_server_nested_under_a_parent(server: str, patterns: Path, tmp_path: Path) -> None:
    track = TrackConfig(mlflow=True, mlflow_uri=server, mlflow_experiment=EXPERIMENT)
    with mlflow_parent("sweep", track) as parent:
        run_dir = train(_config(patterns, tmp_path, mlflow_uri=server)).run_dir
    assert "IMAGEFIT_MLFLOW_PARENT_RUN_ID" not in os.environ
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [child] = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    _assert_run_logged(client, child, run_dir)
    assert client.get_run(parent).info.status == "FINISHED"
    [logged] = client.search_logged_models([experiment.experiment_id])
    assert logged.source_run_id == child.info.run_id
    assert mlflow.get_tracking_uri() != server  # the sink did not redirect this process


def test_dead_server_warns_and_training_completes(
    patterns: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    track = TrackConfig(mlflow=True, mlflow_uri=dead, mlflow_experiment=EXPERIMENT)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), mlflow_parent("sweep", track) as parent:
        assert parent is None and "IMAGEFIT_MLFLOW_PARENT_RUN_ID" not in os.environ
        result = train(_config(patterns, tmp_path, mlflow_uri=dead))
    assert time.monotonic() - started < 60  # seconds of retries, not MLflow's default minutes
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "MLflow parent run 'sweep' not started" in warning
    assert "tracking sink 'mlflow' failed" in warning and dead in warning
    assert "cannot connect" in warning
    for name in ("summary.json", "metrics.json", "history.json", "best.pt"):
        assert (result.run_dir / name).is_file()
    assert result.summary.status == "finished" and np.isfinite(result.metrics["accuracy"])


def test_tracking_uri_from_the_environment_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No track.mlflow_uri: MLFLOW_TRACKING_URI decides, for runs and for parent runs alike."""
    env_uri = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.chdir(tmp_path)  # MLflow's default (unused here) would be ./mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    cfg = _config(Path("unused"), tmp_path / "runs")
    assert cfg.track.mlflow_uri is None
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    with mlflow_parent("env-sweep", cfg.track) as parent:
        sink = MlflowSink(cfg, run_dir)
        sink.finished = True
        sink.close()
    assert sink.uri == env_uri and parent is not None
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(env_uri)
    child = client.get_run(sink.run_id)
    assert child.info.status == "FINISHED" and child.data.params["model.name"] == "simple_cnn"
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.run_name == "env-sweep"
    assert json.loads((run_dir / "mlflow.json").read_text())["uri"] == env_uri


def _quick_sweep_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for matplotlib (about a second a figure here; plots have their own tests)."""

    def plot_comparison(run_dirs: list[Path], out_dir: Path) -> list[Path]:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "comparison.png").write_bytes(b"png")
        return [Path(out_dir) / "comparison.png"]

    def write_report(run_dirs: list[Path], out: Path, title: str | None = None) -> Path:
        Path(out).write_text("<html></html>")
        return Path(out)

    monkeypatch.setattr("imagefit.evaluate.plots.plot_run", lambda run_dir: [])
    monkeypatch.setattr("imagefit.evaluate.plots.plot_comparison", plot_comparison)
    monkeypatch.setattr("imagefit.evaluate.report.write_report", write_report)


def _tiny_sweep(folder: Path, data: Path, lrs: list[float], **track: object) -> Path:
    """A grid over optim.lr of simple_cnn at 16 px, 1 epoch of 2 batches, MLflow on."""
    base = {
        "data": {"root": str(data), "image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1, "limit_batches": 2},
        "track": {"mlflow": True, "mlflow_experiment": EXPERIMENT, **track},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    path = folder / "lr.sweep.yaml"
    sweep = {
        "name": "lr-study",
        "base": "base.yaml",
        "out": str(folder / "out"),
        "grid": {"optim.lr": lrs},
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_trials_are_nested_under_one_parent_run(
    patterns: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-trial sweep, interrupted before its second trial and then resumed: one parent run
    (KILLED, then reopened and FINISHED) with both trials nested under it."""
    _quick_sweep_pictures(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'sweep.db'}"
    path = _tiny_sweep(tmp_path / "sweep", patterns, [0.001, 0.01], mlflow_uri=uri)
    out = tmp_path / "sweep" / "out"
    real_fit = sweep_runner.train

    def fit_until_second(cfg: Config | None = None, **kwargs: object) -> object:
        if cfg is not None and cfg.output.name == "lr-0.01":
            raise Interrupted("stop requested")
        return real_fit(cfg, **kwargs)

    monkeypatch.setattr(sweep_runner, "train", fit_until_second)
    with pytest.raises(Interrupted):
        run_sweep(load_sweep(path))
    client = MlflowClient(uri)
    parent_id = json.loads((out / "mlflow_parent.json").read_text())["run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    monkeypatch.setattr(sweep_runner, "train", real_fit)

    result = run_sweep(load_sweep(path))  # resumes: the same parent, the missing trial added
    assert [r["status"] for r in result.records] == ["finished", "finished"]
    assert "IMAGEFIT_MLFLOW_PARENT_RUN_ID" not in os.environ
    assert json.loads((out / "mlflow_parent.json").read_text())["run_id"] == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "lr-study" and parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.tags["imagefit.sweep_dir"] == str(out.resolve())
    runs = client.search_runs([parent.info.experiment_id])
    children = [r for r in runs if r.info.run_id != parent_id]
    assert sorted(r.info.run_name for r in children) == ["lr-0.001", "lr-0.01"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        own = json.loads((out / "runs" / child.info.run_name / "mlflow.json").read_text())
        assert own["run_id"] == child.info.run_id and child.info.status == "FINISHED"
    files = _artifacts(client, parent_id)
    assert {
        "all_results.json",
        "results.md",
        "results.csv",
        "sweep.yaml",
        "report.html",
        "plots/comparison.png",
    } <= files
    (tmp_path / "download").mkdir()
    logged = Path(
        client.download_artifacts(parent_id, "all_results.json", str(tmp_path / "download"))
    )
    statuses = [t["status"] for t in json.loads(logged.read_text())["trials"]]
    assert statuses == ["finished", "finished"]  # the final results replaced the interrupted ones


def test_sweep_with_a_dead_server_warns_and_completes(
    patterns: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _quick_sweep_pictures(monkeypatch)
    dead = f"http://127.0.0.1:{_free_port()}"
    path = _tiny_sweep(tmp_path / "sweep", patterns, [0.01], mlflow_uri=dead)
    with caplog.at_level(logging.WARNING):
        result = run_sweep(load_sweep(path))
    assert [r["status"] for r in result.records] == ["finished"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "MLflow parent run 'lr-study' not started" in warning and "cannot connect" in warning
    out = tmp_path / "sweep" / "out"
    assert not (out / "mlflow_parent.json").exists()
    assert (out / "all_results.json").is_file() and (out / "runs" / "lr-0.01" / "best.pt").is_file()


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {"e": None}}, "f": "x"})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d.e": "null", "f": "x"}


def test_sinks_register_without_importing_mlflow() -> None:
    code = (
        "import sys, imagefit.track.base as base\n"
        "assert {'mlflow', 'tensorboard'} <= set(base.SINKS), base.SINKS\n"
        "assert 'mlflow' not in sys.modules and 'tensorboard' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_seed_003_console_pipeline_is_one_train_command(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/cifar10_simplecnn.yaml as shipped (data -> SimpleCNN -> train -> ONNX -> MLflow),
    on digits instead of CIFAR-10 and cut to a few batches."""
    from typer.testing import CliRunner

    from imagefit.cli import app

    config = Path(__file__).resolve().parent.parent / "configs" / "cifar10_simplecnn.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(config),
            "--set",
            f"data.root={digits_root}",
            "--set",
            "train.epochs=1",
            "--limit-batches",
            "3",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "cifar10_simplecnn"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["params_total"] == 62_006  # seed 003's SimpleCNN on 10 classes
    exported = json.loads((run_dir / "export.json").read_text())
    assert exported["opset"] == 17 and exported["verification"]["passed"]
    assert (run_dir / "model.onnx").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar10_cnn")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.name"] == "simple_cnn" and "test_accuracy" in run.data.metrics
    assert "onnx/model.onnx" in _artifacts(client, run.info.run_id)
