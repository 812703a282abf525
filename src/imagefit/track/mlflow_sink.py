"""MLflow sink (``track.mlflow: true``): params, per-epoch metrics, test metrics, artifacts, model.

Where: ``track.mlflow_uri``, else MLflow's own resolution (``MLFLOW_TRACKING_URI``, else its
local default in the working folder: ``sqlite:///mlflow.db`` with artifacts under ``./mlruns``,
or the ``./mlruns`` file store when one already holds data). Experiment: ``track.mlflow_experiment``.

What: params = the whole resolved config flattened to dotted keys; metrics per epoch with
``step = epoch``; the test metrics and run summary at the end; artifacts = config.yaml, history,
split, metrics.json, summary.json, plots/, best.pt and, when exported, the ONNX files and
export.json; the best model with MLflow's PyTorch flavour, a real input example and a signature.

Nesting (sweeps): inside ``with mlflow_parent("sweep-name", cfg.track):`` -- or whenever the
environment variable ``IMAGEFIT_MLFLOW_PARENT_RUN_ID`` holds a run id, which child processes
inherit -- every run becomes a nested run under that parent. ``run_sweep`` opens one when the
sweep's base config has ``track.mlflow`` on, and keeps its id in the sweep folder
(``mlflow_parent.json``) so that a resumed sweep reopens the same parent.

Failures: the Tracker switches a failing sink off with a warning and training goes on; the run
folder is the complete record. Connection attempts fail within seconds, not minutes, because
MLflow's HTTP retry and timeout defaults are lowered here (explicit environment values win).
``mlflow`` itself is imported only when a run asks for it: the import takes seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagefit import dotted
from imagefit.config import Config, TrackConfig
from imagefit.errors import ImagefitError, Interrupted
from imagefit.fileio import write_json
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import read_json
from imagefit.track.base import final_prefix, register_sink

log = logging.getLogger(__name__)

PARENT_ENV = "IMAGEFIT_MLFLOW_PARENT_RUN_ID"
# MLflow's defaults retry a dead server 7 times with backoff 2 s and a 120 s timeout: minutes of
# stalled training per call. Two quick retries still ride out a server restart.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# run-folder file -> artifact folder ("" for the top)
ARTIFACTS = {
    layout.CONFIG: "",
    layout.HISTORY: "",
    layout.HISTORY_CSV: "",
    layout.SPLIT: "",
    layout.METRICS: "",
    layout.SUMMARY: "",
    layout.ENVIRONMENT: "",
    layout.EXPORT: "",
    layout.BEST: "checkpoints",
    layout.ONNX: "onnx",
    layout.int8_name(Path(layout.ONNX)).name: "onnx",
}


class TrackingError(ImagefitError):
    """The tracking server cannot be reached or refuses a call."""


def flatten(tree: dict[str, Any]) -> dict[str, str]:
    """Nested config dict -> ``{"section.key": "value"}`` (lists as ``[a, b]``; None as ``null``)."""
    return {k: "null" if v is None else str(v) for k, v in dotted.flatten(tree).items()}


def _lower_http_defaults() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _client(track: TrackConfig) -> tuple[Any, str]:
    """(MlflowClient, its tracking URI) for ``track``."""
    _lower_http_defaults()
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingError(
            f"track.mlflow needs the mlflow package ({exc}): pip install mlflow"
        ) from None

    uri = track.mlflow_uri or mlflow.get_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri), uri


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name)


@contextmanager
def mlflow_parent(
    name: str,
    track: TrackConfig | None = None,
    record: Path | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[str | None]:
    """Start a parent run named ``name``; runs started inside (here or in child processes) nest
    under it. Yields its run id; the run ends FINISHED, KILLED on an interrupt, or FAILED if the
    block raised anything else.

    ``record`` (a JSON file, e.g. in a sweep folder) keeps the parent's id: a later call with the
    same record, tracking URI and experiment reopens that run instead of starting another, so a
    resumed sweep stays one parent. An unreachable server yields None after a warning: the runs
    inside still train.
    """
    track = track or TrackConfig()
    run_id: str | None = None
    try:
        client, uri = _client(track)
        run_id = _open_parent(client, uri, name, track, record, tags or {})
    except Exception as exc:  # noqa: BLE001 - tracking must never stop a sweep
        log.warning("MLflow parent run '%s' not started: %s", name, _reason(exc))
    if run_id is None:
        yield None
        return
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous
        _end_parent(client, run_id, status)
        log.info("MLflow parent run %s (%s) at %s: %s", name, run_id, uri, status)


def _open_parent(
    client: Any, uri: str, name: str, track: TrackConfig, record: Path | None, tags: dict[str, str]
) -> str:
    """The run id of the parent: the recorded one when it still exists where we log, else new."""
    experiment = _experiment_id(client, track.mlflow_experiment)
    saved = _read_record(record) if record is not None else {}
    same_place = saved.get("uri") == uri and saved.get("experiment_id") == experiment
    if same_place and saved.get("run_id"):
        try:
            run = client.get_run(saved["run_id"])
            if run.info.lifecycle_stage == "active":
                client.update_run(run.info.run_id, status="RUNNING")
                log.info("MLflow: reopened parent run %s of '%s'", run.info.run_id, name)
                return run.info.run_id
        except Exception as exc:  # noqa: BLE001 - deleted or unreadable: start a new parent
            log.info("MLflow parent run %s not reopened (%s)", saved["run_id"], _reason(exc))
    run = client.create_run(experiment, run_name=name, tags=tags)
    if record is not None:
        write_json(record, {"uri": uri, "run_id": run.info.run_id, "experiment_id": experiment})
    return run.info.run_id


def log_parent_artifacts(
    run_id: str, track: TrackConfig, files: Iterable[tuple[Path, str | None]]
) -> None:
    """Log ``(file or folder, artifact folder)`` pairs to the parent run ``run_id``; missing paths
    are skipped. A failure is a warning: the files stay where they are."""
    try:
        client, _ = _client(track)
        for path, folder in files:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), folder)
            elif path.is_file():
                client.log_artifact(run_id, str(path), folder)
    except Exception as exc:  # noqa: BLE001 - the sweep folder is the complete record
        log.warning("MLflow parent run %s: artifacts not logged: %s", run_id, _reason(exc))


def _end_parent(client: Any, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the children are logged; only the status is lost
        log.warning("MLflow parent run %s could not be marked %s: %s", run_id, status, _reason(exc))


@contextmanager
def _process_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for one call.

    ``mlflow.pytorch.log_model`` has no URI argument and reads the global one; it is restored
    afterwards, environment variable included, so a run never redirects later runs.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None (no URI was set) resets MLflow to its default; its annotation omits None
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


class MlflowSink:
    """One MLflow run per imagefit run (a resumed run continues its MLflow run)."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.run_dir = run_dir
        self.client, self.uri = _client(cfg.track)
        self.finished = False
        with self._explained():
            self.run_id, resumed = self._start(cfg)
            if not resumed:  # a resumed config differs (split_manifest); MLflow params are final
                self.client.log_batch(self.run_id, params=_params(cfg))
        log.info(
            "MLflow: run %s in experiment '%s' at %s",
            self.run_id,
            cfg.track.mlflow_experiment,
            self.uri,
        )

    @contextmanager
    def _explained(self) -> Iterator[None]:
        """MLflow's errors as one line that names the server; the run is then marked FAILED,
        because the Tracker drops a failed sink and its close() never comes."""
        try:
            yield
        except Exception as exc:
            if getattr(self, "run_id", None):
                self._mark_failed()
            raise TrackingError(f"MLflow at {self.uri}: {_reason(exc)}") from exc

    def _mark_failed(self) -> None:
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the server is likely gone; the caller reports it
            log.debug("could not mark MLflow run %s FAILED: %s", self.run_id, exc)

    def _start(self, cfg: Config) -> tuple[str, bool]:
        """(run id, whether it continues the MLflow run of a resumed run folder)."""
        record = _read_record(RunLayout(self.run_dir).mlflow)
        if record.get("uri") == self.uri and record.get("run_id"):
            self.client.update_run(record["run_id"], status="RUNNING")
            return record["run_id"], True
        experiment = _experiment_id(self.client, cfg.track.mlflow_experiment)
        tags = {"imagefit.run_dir": str(self.run_dir.resolve()), "imagefit.model": cfg.model.name}
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
        run = self.client.create_run(experiment, run_name=self.run_dir.name, tags=tags)
        write_json(
            RunLayout(self.run_dir).mlflow,
            {"uri": self.uri, "run_id": run.info.run_id, "experiment_id": experiment},
        )
        return run.info.run_id, False

    def log_epoch(self, row: dict[str, Any]) -> None:
        with self._explained():
            self._metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def log_final(self, metrics: dict[str, Any], summary: dict[str, Any], run_dir: Path) -> None:
        keep = (
            "best_epoch",
            "best_val_accuracy",
            "epochs_run",
            "params_total",
            "params_trainable",
            "train_images_per_s",
            "train_time_s",
            "wall_time_s",
        )
        with self._explained():
            self._metrics(
                {f"{final_prefix(metrics)}{k}": v for k, v in metrics.items()},
                step=int(summary.get("epochs_run") or 0),
            )
            self._metrics({k: summary.get(k) for k in keep})
            self._artifacts(run_dir)
            self._log_model(run_dir)
        self.finished = True

    def close(self) -> None:
        error = sys.exc_info()[1]  # close() runs in fit()'s `finally`: this is why it ended
        status = "KILLED" if isinstance(error, Interrupted) else "FAILED"
        status = "FINISHED" if self.finished else status
        with self._explained():
            self.client.set_terminated(self.run_id, status)

    def _metrics(self, values: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numbers = [
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if numbers:
            self.client.log_batch(self.run_id, metrics=numbers)

    def _artifacts(self, run_dir: Path) -> None:
        for name, folder in ARTIFACTS.items():
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name), folder or None)
        plots = RunLayout(run_dir).plots
        if plots.is_dir():
            self.client.log_artifacts(self.run_id, str(plots), plots.name)

    def _log_model(self, run_dir: Path) -> None:
        """The best checkpoint with the PyTorch flavour, real input examples and a signature.

        Saved as MLflow's default ``pt2`` (torch.export: loads without imagefit or timm), else
        pickled. The example holds two images because torch.export fixes a batch axis of 1.
        """
        import mlflow
        import torch
        from mlflow.models import infer_signature

        from imagefit.models.trained import load_trained

        model, meta, _ = load_trained(run_dir)
        example = _input_example(run_dir, meta)
        with torch.no_grad():
            signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
        info = {k: meta[k] for k in ("arch", "classes", "image_size", "mean", "std")}
        common = {
            "name": "model",
            "signature": signature,
            "input_example": example,
            "metadata": info,
        }
        # log_model files the model under the *active* run's experiment (else "Default"), so the
        # run is made active for the call, with the URI it lives at.
        with _process_uri(self.uri), mlflow.start_run(run_id=self.run_id, nested=True):
            try:
                mlflow.pytorch.log_model(
                    model,
                    serialization_format="pt2",
                    pip_requirements=_requirements("torch"),
                    **common,
                )
            except Exception as exc:  # noqa: BLE001 - torch.export rejects some models; pickle does not
                log.warning(
                    "MLflow: torch.export of %s failed (%s); logging it pickled", meta["arch"], exc
                )
                mlflow.pytorch.log_model(
                    model,
                    serialization_format="pickle",
                    pip_requirements=_requirements("torch", "timm", "imagefit"),
                    **common,
                )


def _input_example(run_dir: Path, meta: dict[str, Any]) -> Any:
    """Two real, normalised images of the run (val split), else zeros of the right shape."""
    import numpy as np

    from imagefit.data.inputs import normalise
    from imagefit.data.store import PixelSpec
    from imagefit.export.preprocess import real_inputs

    size = meta["image_size"]
    _, pixels, _ = real_inputs(run_dir, ("val", "test", "train"), 2, PixelSpec.from_meta(meta))
    if len(pixels) < 2:
        pixels = np.zeros((2, size, size, 3), np.uint8)
    return normalise(pixels, meta["mean"], meta["std"])


def _requirements(*packages: str) -> list[str]:
    """Pinned requirements of the logged model (a pickled one needs timm and imagefit classes).

    Given explicitly, because MLflow's inference of them loads the model in a subprocess (slow).
    """
    from importlib import metadata

    pins = []
    for package in packages:
        try:
            version = metadata.version(package).split("+")[0]  # pip knows no local tag (+cu130)
            pins.append(f"{package}=={version}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _params(cfg: Config) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in flatten(cfg.to_dict()).items()]


def _read_record(path: Path) -> dict[str, Any]:
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _reason(exc: Exception) -> str:
    """The first line of MLflow's message: connection errors come with pages of urllib3 detail."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if any(
        sign in text for sign in ("Max retries exceeded", "Connection refused", "NewConnection")
    ):
        return "cannot connect to the tracking server (is it running?); " + text[:200]
    return text[:300]


@register_sink("mlflow", lambda cfg: cfg.track.mlflow)
def _make_sink(cfg: Config, run_dir: Path) -> MlflowSink:
    return MlflowSink(cfg, run_dir)
