"""Running a sweep: one run folder per trial under ``out/runs``, then the sweep's results.

A trial whose ``summary.json`` says finished is never run again; one with a ``last.pt`` but no
summary was interrupted and resumes from it; anything else starts afresh. A trial that raises
is recorded as failed and the sweep goes on; an interrupt (signal, Ctrl-C) stops the sweep
after writing what is known, so rerunning the same command continues where it stopped.

MLflow: when the sweep's base config (with the file's ``set:`` and the command line's
``--set``) has ``track.mlflow`` on, the trials are nested runs under one parent run named after
the sweep, which gets the sweep's results (all_results.json, results.md/.csv, sweep.yaml,
plots/, report.html) as artifacts at the end. Its id is kept in ``OUT/mlflow_parent.json``:
rerunning the sweep reopens that parent (same tracking URI and experiment), so a resumed sweep
stays one parent run; a resumed trial continues its own MLflow run under it. MLflow failing
only warns, as it does for a single run.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagefit import dotted
from imagefit.config import Config, TrackConfig, apply_override
from imagefit.errors import ConfigError, ImagefitError, Interrupted
from imagefit.fileio import make_dirs, write_json
from imagefit.model_names import BASELINES
from imagefit.runs.layout import PLOTS, REPORT, RunLayout
from imagefit.runs.reader import read_config, read_json, read_summary
from imagefit.sweep import table
from imagefit.sweep.baseline import run_hog_svm_baseline
from imagefit.sweep.claims import CLAIMS, claimed
from imagefit.sweep.spec import SweepSpec, Trial
from imagefit.track.mlflow_sink import log_parent_artifacts, mlflow_parent
from imagefit.train.hooks import EpochHook
from imagefit.workflow import train

log = logging.getLogger(__name__)

PARENT_RECORD = "mlflow_parent.json"  # the sweep's MLflow parent run, reopened on a rerun


@dataclass
class SweepResult:
    out_dir: Path
    records: list[dict[str, Any]]  # one per run (trial x seed), as in all_results.json
    groups: list[dict[str, Any]]  # mean/std over seeds per trial (empty without seeds)
    files: dict[str, Path]

    @property
    def failed(self) -> list[dict[str, str]]:
        """``{"name", "error"}`` of every trial that raised (pruned ones are not failures)."""
        return table.failed_trials(self.records)


def trial_state(run_dir: Path) -> str:
    """``finished``, ``pruned``, ``resume`` (has last.pt) or ``new``."""
    summary = read_summary(run_dir)
    if summary is not None and summary.status == "finished":
        return "finished"
    run = RunLayout(run_dir)
    if (read_json(run.trial) or {}).get("status") == "pruned":
        return "pruned"
    return "resume" if run.last.is_file() else "new"


def changed_keys(run_dir: Path, cfg: Config) -> list[str]:
    """Config keys where ``run_dir/config.yaml`` differs from ``cfg`` (output.* aside)."""
    saved_tree = read_config(run_dir)
    if saved_tree is None:
        return []
    saved = dotted.flatten(saved_tree)
    planned = dotted.flatten(cfg.to_dict())
    keys = set(saved) | set(planned)
    return sorted(k for k in keys if not k.startswith("output.") and saved.get(k) != planned.get(k))


def _is_pruned(exc: BaseException) -> bool:
    # Only a search imports optuna, and only a search's hook can raise TrialPruned.
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


def _launch(cfg: Config, run_dir: Path, state: str, hook: EpochHook | None) -> None:
    if cfg.model.name in BASELINES:
        shutil.rmtree(run_dir, ignore_errors=True)  # a baseline has no checkpoint to resume
        run_hog_svm_baseline(cfg)
    elif state == "resume":
        log.info("resuming trial %s from %s", run_dir.name, RunLayout(run_dir).last)
        train(resume=run_dir, on_epoch=hook)
    else:
        # A folder without last.pt holds no training (a failure while building): start over
        # in it, rather than beside it as <name>-2.
        shutil.rmtree(run_dir, ignore_errors=True)
        train(cfg, on_epoch=hook)


def _write_trial(
    run_dir: Path, trial: Trial, status: str, error: str | None, trace: str | None
) -> None:
    if run_dir.is_dir():
        write_json(
            RunLayout(run_dir).trial,
            {
                "name": trial.name,
                "group": trial.group,
                "seed": trial.seed,
                "overrides": trial.overrides,
                "status": status,
                "error": error,
                "traceback": trace,
            },
        )


def _failed(
    spec: SweepSpec, trial: Trial, run_dir: Path, exc: Exception, seconds: float
) -> dict[str, Any]:
    """Record a trial that raised (a failing trial must not end the sweep)."""
    status = "pruned" if _is_pruned(exc) else "failed"
    error = f"{type(exc).__name__}: {exc}"
    # An ImagefitError's message says it all; anything else is a bug worth its traceback.
    trace = None if status == "pruned" or isinstance(exc, ImagefitError) else traceback.format_exc()
    log.log(
        logging.INFO if status == "pruned" else logging.ERROR,
        "trial %s %s: %s",
        trial.name,
        status,
        error,
    )
    _write_trial(run_dir, trial, status, error, trace)
    return table.run_record(trial, run_dir, spec.out, status, error, seconds)


def execute(spec: SweepSpec, trial: Trial, hook: EpochHook | None = None) -> dict[str, Any]:
    """Run (or skip, or resume) one trial and return its all_results.json record.

    Exceptions become a ``failed`` (or, from a search's pruner, ``pruned``) record; an
    interrupt is recorded in the run folder and raised again."""
    run_dir = spec.out / "runs" / trial.name
    state = trial_state(run_dir)
    if state in ("finished", "pruned"):
        log.info("trial %s: already %s, skipped", trial.name, state)
        changed = changed_keys(run_dir, spec.config(trial))
        if changed:  # the sweep file was edited since: say so rather than mix configs silently
            log.warning(
                "trial %s ran with other values of %s; delete %s to run it again",
                trial.name,
                ", ".join(changed),
                run_dir,
            )
        return table.run_record(trial, run_dir, spec.out, state)
    started = time.perf_counter()
    try:
        _launch(spec.config(trial), run_dir, state, hook)
    except BaseException as exc:
        if isinstance(exc, Interrupted) or not isinstance(exc, Exception):
            # A signal, Ctrl-C or exit: stop the sweep; the run folder resumes next time.
            _write_trial(run_dir, trial, "interrupted", f"{type(exc).__name__}: {exc}", None)
            raise
        return _failed(spec, trial, run_dir, exc, time.perf_counter() - started)
    _write_trial(run_dir, trial, "finished", None, None)
    record = table.run_record(trial, run_dir, spec.out, "finished")
    log.info(
        "trial %s finished: test accuracy %s",
        trial.name,
        table.fmt((record.get("test") or {}).get("accuracy")),
    )
    return record


def _run_planned(spec: SweepSpec, records: list[dict[str, Any]]) -> None:
    """Every planned trial this process can claim; then the others' trials as they stand.

    Several processes may run one sweep folder: a claim file per trial makes each take the
    next trial nobody runs (:mod:`imagefit.sweep.claims`)."""
    for index, trial in enumerate(spec.trials, 1):
        if trial_state(spec.out / "runs" / trial.name) in ("finished", "pruned"):
            records.append(execute(spec, trial))  # skipped: it says so
            continue
        with claimed(spec.out, trial.name) as mine:
            if not mine:
                log.info("sweep %s: trial %s runs in another process", spec.name, trial.name)
                continue
            log.info("sweep %s: trial %d/%d %s", spec.name, index, len(spec.trials), trial.name)
            records.append(execute(spec, trial))
    records.extend(others_records(spec, records))


def others_records(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of the planned trials other processes ran (``running`` while a claim is held)."""
    done = {r["name"] for r in records}
    result = []
    for trial in spec.trials:
        if trial.name in done:
            continue
        run_dir = spec.out / "runs" / trial.name
        state = trial_state(run_dir)
        own = read_json(RunLayout(run_dir).trial) or {}
        if state in ("finished", "pruned"):
            status = state
        elif (spec.out / CLAIMS / trial.name).exists():
            status = "running"
        else:
            status = own.get("status") or ("interrupted" if state == "resume" else "pending")
        result.append(table.run_record(trial, run_dir, spec.out, status, own.get("error")))
    return result


def _visuals(spec: SweepSpec, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Comparison plots and the HTML report of the trials that have results.

    A plotting error only costs the pictures: the tables are written before, and stay."""
    # Finished runs only: a pruned or failed one lacks the test metrics the pages compare.
    run_dirs = [spec.out / r["run_dir"] for r in records if r["status"] == "finished"]
    files: dict[str, Path] = {}
    if not run_dirs:
        return files
    try:
        from imagefit.evaluate.plots import plot_comparison
        from imagefit.evaluate.report import write_report

        for path in plot_comparison(run_dirs, spec.out / PLOTS):
            files[path.stem] = path
        files["report"] = write_report(run_dirs, spec.out / REPORT, title=f"sweep {spec.name}")
    except Exception as exc:  # noqa: BLE001 - pictures are optional, results are not
        log.warning("sweep %s: plots/report failed (%s: %s)", spec.name, type(exc).__name__, exc)
    return files


def pending_records(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of the planned trials not in ``records``: ``interrupted`` (resumable) or ``pending``."""
    done = {r["name"] for r in records}
    result = []
    for trial in spec.trials:
        if trial.name not in done:
            run_dir = spec.out / "runs" / trial.name
            status = "interrupted" if trial_state(run_dir) == "resume" else "pending"
            result.append(table.run_record(trial, run_dir, spec.out, status))
    return result


def sweep_track(spec: SweepSpec) -> TrackConfig:
    """The ``track`` section of the sweep's base config with ``set:`` and ``--set`` applied
    (a trial's own overrides aside: the parent run is the sweep's, not a trial's)."""
    tree = copy.deepcopy(spec.base_tree)
    for key, value in spec.common.items():
        dotted.set_key(tree, key, value)
    for assignment in spec.cli:
        apply_override(tree, assignment)
    return TrackConfig.model_validate(tree.get("track") or {})


def _parent_files(spec: SweepSpec) -> list[tuple[Path, str | None]]:
    names = ("all_results.json", "results.md", "results.csv", "sweep.yaml", REPORT)
    return [(spec.out / name, None) for name in names] + [(spec.out / PLOTS, PLOTS)]


def run_sweep(spec: SweepSpec) -> SweepResult:
    """Run every trial of ``spec`` into ``spec.out`` and write all_results.json, results.md,
    results.csv, plots/ and report.html there. Reruns skip finished trials.

    With ``track.mlflow`` on in the sweep's base config, the trials nest under one MLflow
    parent run (see the module's docstring)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every process would create, delete and tabulate the same trial folders at once.
        raise ConfigError(
            "a sweep runs its trials one after another in one process; under "
            "torchrun, launch each trial as `torchrun ... -m imagefit train`"
        )
    make_dirs(spec.out / "runs")
    table.write_sweep_file(spec)
    track = sweep_track(spec)
    if not track.mlflow:
        return _run_trials(spec, None, track)
    tags = {
        "imagefit.sweep_dir": str(spec.out.resolve()),
        "imagefit.sweep_file": str(spec.path),
        "imagefit.sweep_mode": spec.mode,
    }
    with mlflow_parent(spec.name, track, spec.out / PARENT_RECORD, tags) as parent:
        return _run_trials(spec, parent, track)


def _run_trials(spec: SweepSpec, parent: str | None, track: TrackConfig) -> SweepResult:
    records: list[dict[str, Any]] = []
    try:
        if spec.search is not None:
            from imagefit.sweep.search import run_search

            run_search(spec, records)
        else:
            _run_planned(spec, records)
    except (Interrupted, KeyboardInterrupt) as exc:
        table.write_results(spec, records + pending_records(spec, records))
        if parent:
            log_parent_artifacts(parent, track, _parent_files(spec))
        # fit's message says `imagefit train --resume`; for a sweep, the sweep is what resumes.
        raise Interrupted(
            f"sweep {spec.name} stopped after {sum(r['status'] == 'finished' for r in records)} "
            f"finished trial(s); run the same `imagefit sweep {spec.path}` command again to continue"
        ) from exc
    files = table.write_results(spec, records)
    files.update(_visuals(spec, records))
    if parent:
        log_parent_artifacts(parent, track, _parent_files(spec))
    return SweepResult(spec.out, records, table.group_records(records) if spec.seeds else [], files)
