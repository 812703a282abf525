"""Optuna search: a seeded sampler (TPE by default) proposes configs, a pruner stops poor ones.

The study lives in a database: SQLite in the sweep folder unless ``search.storage`` names
another URL, so a rerun continues the same study and machines given one URL share it. Each
Optuna trial is a normal run folder ``runs/trial-NNN`` (``-seedK`` with seeds); the pruner sees
the validation metric after every epoch through fit's ``on_epoch`` hook, which raises
``optuna.TrialPruned`` to stop the run (its folder keeps the epochs it did).
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagefit.errors import ConfigError, ImagefitError
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import read_history
from imagefit.sweep import table
from imagefit.sweep.claims import alive, claimed
from imagefit.sweep.runner import execute
from imagefit.sweep.spec import SearchSpec, SweepSpec, Trial
from imagefit.train.hooks import EpochHook

log = logging.getLogger(__name__)

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImagefitError("a sweep with 'search:' needs optuna (pip install optuna)") from None
    return optuna


def _make(
    module: Any,
    kinds: dict[str, str],
    options: dict[str, Any],
    default: str,
    where: str,
    **defaults: Any,
) -> Any:
    """``module.<kinds[type]>(**defaults, **options)``; bad options name ``where``."""
    options = dict(options)
    kind = options.pop("type", default)
    if kind not in kinds:
        raise ConfigError(f"{where}: type '{kind}' is not one of {', '.join(kinds)}")
    try:
        return getattr(module, kinds[kind])(**{**defaults, **options})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} ({kind}): {exc}") from None


def sampler(search: SearchSpec, where: str) -> Any:
    # Seeded so that the same sweep proposes the same first trials; a resumed study restarts
    # the sampler's generator, so only an uninterrupted search repeats exactly.
    optuna = _optuna()
    seeded = {"seed": 0} if search.sampler.get("type", "tpe") in ("tpe", "random", "qmc") else {}
    return _make(
        optuna.samplers, SAMPLERS, search.sampler, "tpe", f"{where}: search.sampler", **seeded
    )


def pruner(search: SearchSpec, where: str) -> Any:
    return _make(_optuna().pruners, PRUNERS, search.pruner, "median", f"{where}: search.pruner")


def distributions(search: SearchSpec, where: str) -> dict[str, Any]:
    """Optuna distributions of ``search.params``."""
    d = _optuna().distributions
    result = {}
    for key, space in search.params.items():
        try:
            if space["type"] == "categorical":
                result[key] = d.CategoricalDistribution(space["choices"])
            else:
                kind = d.FloatDistribution if space["type"] == "float" else d.IntDistribution
                step = space.get("step", None if space["type"] == "float" else 1)
                result[key] = kind(
                    space["low"], space["high"], log=space.get("log", False), step=step
                )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: search.params '{key}': {exc}") from None
    return result


def _search_of(spec: SweepSpec) -> SearchSpec:
    """``spec.search``, which a sweep in search mode always has."""
    if spec.search is None:
        raise ConfigError(f"{spec.path}: not a search sweep (it has no 'search:' section)")
    return spec.search


def open_study(spec: SweepSpec, search: SearchSpec) -> Any:
    """Create or load the sweep's study (``load_if_exists``: a rerun continues it)."""
    optuna, where = _optuna(), str(spec.path)
    storage = search.storage or f"sqlite:///{(spec.out / 'optuna.db').resolve()}"
    try:
        study = optuna.create_study(
            study_name=search.study,
            storage=_storage(storage, search),
            load_if_exists=True,
            sampler=sampler(search, where),
            pruner=pruner(search, where),
            direction=search.direction,
        )
    except (ImportError, ValueError, RuntimeError) as exc:  # bad URL, missing driver, locked DB
        raise ConfigError(f"{where}: cannot open Optuna storage {storage}: {exc}") from None
    if study.direction.name.lower() != search.direction:
        raise ConfigError(
            f"{where}: study '{search.study}' in {storage} was created to "
            f"{study.direction.name.lower()}, not {search.direction}; name a new search.study"
        )
    return study


def _storage(url: str, search: SearchSpec) -> Any:
    """A database URL as an Optuna storage whose running trials beat (workers may be killed).

    A trial silent for three beats is failed by the next worker that asks for a trial, and
    ``RetryFailedTrialCallback`` queues it again with its parameters (and reported epochs),
    so some worker takes it up: its run folder resumes from ``last.pt``.
    """
    optuna = _optuna()
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        return url  # journal files, in-memory: no heartbeat there
    # Optuna 4.9 renamed the callback and its argument; older releases have the first names.
    kind = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    argument = "heartbeat_stale_trial_callback" if kind else "failed_trial_callback"
    kind = kind or optuna.storages.RetryFailedTrialCallback
    retry = kind(max_retry=search.retries, inherit_intermediate_values=True)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=search.heartbeat_s,
                grace_period=3 * search.heartbeat_s,
                **{argument: retry},
                # SQLite shared by processes: wait for a lock rather than fail at once
                engine_kwargs=(
                    {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
                ),
            )
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's errors, from a racing worker
            # Workers starting together all create the empty database's tables: the losers
            # of that race fail once, and find the tables made when they try again.
            if attempt == 4:
                raise RuntimeError(f"cannot open {url}: {exc}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextmanager
def heartbeat(study: Any, trial: Any, seconds: int) -> Iterator[None]:
    """Beat for ``trial`` while the block runs (``study.optimize`` does this; ask/tell does not)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not hasattr(storage, "record_heartbeat") or interval is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat must not stop training
                log.warning("trial %d: heartbeat failed (%s)", trial.number, exc)
            if done.wait(seconds):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run_number(trial: Any) -> int:
    """The trial number that names the run folder: a retried trial continues its original's."""
    if not hasattr(trial, "system_attrs"):  # a live Trial: its attributes are in the storage
        trial = trial.study._storage.get_trial(trial._trial_id)
    history = trial.system_attrs.get("retry_history") or []
    return int(history[0]) if history else int(trial.number)


def counted(trials: list[Any]) -> list[int]:
    """Numbers of the trials that count towards ``n_trials``: not queued, not a failure being
    retried, not a surplus one."""
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return [
        t.number
        for t in trials
        if t.state.name != "WAITING" and t.number not in retried and not _surplus(t)
    ]


def _surplus(trial: Any) -> bool:
    return bool(trial.user_attrs.get("surplus"))


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def is_stale(frozen: Any, spec: SweepSpec) -> bool:
    """A RUNNING trial this sweep folder started on this machine, whose process is gone: it was
    interrupted. Trials running elsewhere (a shared study) are left alone."""
    attrs = frozen.user_attrs
    if frozen.state.name != "RUNNING" or attrs.get("host") != socket.gethostname():
        return False
    if attrs.get("out") != str(spec.out.resolve()):
        return False
    # This process is between trials here, so a trial it claims is not running either.
    return attrs.get("pid") == os.getpid() or not alive(int(attrs.get("pid", -1)))


def _runs(spec: SweepSpec, number: int, params: dict[str, Any]) -> list[Trial]:
    group = f"trial-{number:03d}"
    if spec.seeds is None:
        return [Trial(group, group, params)]
    return [Trial(f"{group}-seed{seed}", group, params, seed) for seed in spec.seeds]


def pruning_hook(trial: Any, metric: str) -> EpochHook:
    """Report ``metric`` after each epoch; raise TrialPruned when the pruner says so."""
    optuna = _optuna()

    def report(row: dict[str, Any]) -> None:
        trial.report(float(row[metric]), step=int(row["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"{metric} {row[metric]:.4f} at epoch {row['epoch']}")

    return report


def objective(run_dir: Path, metric: str, direction: str) -> float | None:
    """The best ``metric`` over the run's epochs (validation only: the test split never selects)."""
    history = read_history(run_dir) or []
    values = [row[metric] for row in history if row.get(metric) is not None]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def run_trial(
    spec: SweepSpec, search: SearchSpec, study: Any, trial: Any, records: list[dict[str, Any]]
) -> None:
    """Run the Optuna ``trial`` (once per seed) and tell the study how it ended."""
    states = _optuna().trial.TrialState
    values: list[float] = []
    for index, run in enumerate(_runs(spec, run_number(trial), trial.params)):
        # Pruning compares one curve per trial, so only the first seed's epochs are reported.
        record = execute(spec, run, pruning_hook(trial, search.metric) if index == 0 else None)
        record["optuna_trial"] = trial.number
        records.append(record)
        value = objective(spec.out / record["run_dir"], search.metric, search.direction)
        record["value"] = value
        if record["status"] != "finished" or value is None:
            study.tell(trial, state=states.PRUNED if record["status"] == "pruned" else states.FAIL)
            return
        values.append(value)
    study.tell(trial, statistics.fmean(values))
    log.info(
        "search %s: trial %d: %s %.4f",
        spec.name,
        trial.number,
        search.metric,
        statistics.fmean(values),
    )


def past_records(spec: SweepSpec, search: SearchSpec, frozen: Any) -> list[dict[str, Any]]:
    """Records of an ended trial from its run folders (or, for another machine's, from Optuna)."""
    status = {"COMPLETE": "finished", "PRUNED": "pruned"}.get(frozen.state.name, "failed")
    records = []
    for index, run in enumerate(_runs(spec, run_number(frozen), frozen.params)):
        run_dir = spec.out / "runs" / run.name
        if index and not run_dir.is_dir():
            continue  # a seed the trial never reached
        own = table.read_json(RunLayout(run_dir).trial) or {}
        record = table.run_record(
            run, run_dir, spec.out, own.get("status", status), own.get("error")
        )
        record.update(
            optuna_trial=frozen.number, value=objective(run_dir, search.metric, search.direction)
        )
        records.append(record)
    return records


def run_search(spec: SweepSpec, records: list[dict[str, Any]]) -> None:
    """:func:`search`, without Optuna's notes that heartbeats with ask/tell and
    ``fail_stale_trials`` are experimental: this module does what ``optimize`` would."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        search(spec, records)


def search(spec: SweepSpec, records: list[dict[str, Any]]) -> None:
    """Run the search until the study holds ``n_trials`` trials; interrupted trials of this
    sweep folder resume first, from their ``last.pt``.

    Several processes given one storage share the study: each asks for the next trial, and a
    claim file per run folder keeps two of them off one trial (:mod:`imagefit.sweep.claims`).
    """
    optuna, search = _optuna(), _search_of(spec)
    study = open_study(spec, search)
    if search.storage is not None:
        # A storage given by URL is how workers share a study: seeded alike, they would all
        # propose the same first parameters. The folder's own database keeps the fixed seed.
        study.sampler.reseed_rng()
    space = distributions(search, str(spec.path))
    for frozen in study.get_trials(deepcopy=False):
        if frozen.state.is_finished() and not _surplus(frozen):
            if frozen.state.name != "FAIL" or not _retried(study, frozen):
                records.extend(past_records(spec, search, frozen))
        elif is_stale(frozen, spec):
            # The same Optuna trial continues (its reported epochs stay); Optuna offers no
            # public way to reopen a RUNNING trial by number, so its id is used directly.
            trial = optuna.trial.Trial(study, frozen._trial_id)
            with claimed(spec.out, f"trial-{run_number(frozen):03d}") as mine:
                if mine:
                    log.info("search %s: resuming interrupted trial %d", spec.name, frozen.number)
                    trial.set_user_attr("pid", os.getpid())
                    with heartbeat(study, trial, search.heartbeat_s):
                        run_trial(spec, search, study, trial, records)
    while True:
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: queued again
        if len(counted(study.get_trials(deepcopy=False))) >= search.n_trials:
            break
        trial = study.ask(space)
        if trial.number not in counted(study.get_trials(deepcopy=False))[: search.n_trials]:
            # Another worker asked in the same moment for the last trial of the budget: the
            # higher number gives way (marked, so that no table or count includes it).
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        for key, value in {**_owner(), "out": str(spec.out.resolve())}.items():
            trial.set_user_attr(key, value)
        with claimed(spec.out, f"trial-{run_number(trial):03d}") as mine:
            if not mine:  # cannot happen for a fresh number; a retry whose run is still held
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            log.info("search %s: trial %d %s", spec.name, trial.number, trial.params)
            with heartbeat(study, trial, search.heartbeat_s):
                run_trial(spec, search, study, trial, records)
    gathered = {r["optuna_trial"] for r in records}
    for frozen in study.get_trials(deepcopy=False):
        # Trials other workers ran after this one started (their folders are on a shared path).
        if (
            frozen.state.is_finished()
            and not _surplus(frozen)
            and frozen.number not in gathered
            and (frozen.state.name != "FAIL" or not _retried(study, frozen))
        ):
            records.extend(past_records(spec, search, frozen))


def _retried(study: Any, frozen: Any) -> bool:
    """Whether a failed trial was queued again (its retry's records stand for it)."""
    return any(
        frozen.number in t.system_attrs.get("retry_history", [])
        for t in study.get_trials(deepcopy=False)
    )
