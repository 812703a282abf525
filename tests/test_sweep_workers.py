"""Several sweep processes on one sweep: each trial runs once, a dead worker's trial goes on.

Two worker processes share an Optuna study through one SQLite file (``--storage``), or a
grid through claim files in the sweep folder; the tables gather every worker's runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagefit.sweep import load_sweep, run_sweep
from imagefit.sweep.claims import CLAIMS, try_claim

from helpers.sweeps import base_tree, read, search_sweep, write_sweep

TESTS = Path(__file__).parent


def _workers(sweep: Path, tmp_path: Path, *extra: str) -> list[dict]:
    """Run two workers on ``sweep`` at once; their reports."""
    env = {**os.environ, "IMAGEFIT_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "sweep_worker.py"),
                str(sweep),
                str(tmp_path / f"w{i}.json"),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    return [read(tmp_path / f"w{i}.json") for i in range(2)]


@pytest.mark.slow
def test_two_workers_share_one_search(pattern_root: Path, tmp_path: Path) -> None:
    import optuna

    sweep = write_sweep(
        tmp_path, search_sweep(pattern_root, {"type": "none"}, 4), base_tree(pattern_root)
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    reports = _workers(sweep, tmp_path, storage)
    trained = [name for r in reports for name in r["trained"]]
    assert sorted(trained) == [f"trial-{i:03d}" for i in range(4)]  # each once, nothing twice
    study = optuna.load_study(study_name="s", storage=storage)
    done = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in done] == ["COMPLETE"] * 4
    params = {(t.params["optim.lr"], t.params["optim.name"]) for t in done}
    assert len(params) == 4  # the workers drew their own proposals
    table = read(tmp_path / "out" / "all_results.json")["trials"]
    assert sorted(r["name"] for r in table) == sorted(trained)
    assert {r["status"] for r in table} == {"finished"}


@pytest.mark.slow
def test_two_workers_split_one_grid(pattern_root: Path, tmp_path: Path) -> None:
    grid = {"grid": {"optim.lr": [0.001, 0.002, 0.003, 0.004]}}
    sweep = write_sweep(tmp_path, grid, base_tree(pattern_root))
    reports = _workers(sweep, tmp_path)
    trained = [name for r in reports for name in r["trained"]]
    names = [t.name for t in load_sweep(sweep).trials]
    assert sorted(trained) == sorted(names)  # each trial trained by exactly one worker
    table = read(tmp_path / "out" / "all_results.json")["trials"]
    assert sorted(r["name"] for r in table) == sorted(names)
    assert {r["status"] for r in table} == {"finished"}
    assert not list((tmp_path / "out" / CLAIMS).iterdir())  # every claim released


def test_claims_are_exclusive_and_abandoned_ones_taken_over(tmp_path: Path) -> None:
    first = try_claim(tmp_path, "trial-a")
    assert first is not None and try_claim(tmp_path, "trial-a") is None  # we are alive
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}
    (tmp_path / CLAIMS / "trial-b").write_text(json.dumps(owner))
    assert try_claim(tmp_path, "trial-b") is not None  # its process is gone
    elsewhere = {"host": "another-machine", "pid": 1, "since": 0}
    (tmp_path / CLAIMS / "trial-c").write_text(json.dumps(elsewhere))
    assert try_claim(tmp_path, "trial-c") is None  # fresh: the other machine is working
    old = time.time() - 3600
    os.utime(tmp_path / CLAIMS / "trial-c", (old, old))
    assert try_claim(tmp_path, "trial-c") is not None  # untouched for an hour: abandoned


def test_a_killed_workers_trial_is_run_again(
    pattern_root: Path,
    tmp_path: Path,
    quick_pictures: list,
) -> None:
    """A trial whose worker stopped beating is failed, queued again and run by another."""
    from imagefit.sweep.search import distributions, open_study

    tree = search_sweep(pattern_root, {"type": "none"}, 2)
    tree["search"]["heartbeat_s"] = 1
    sweep = write_sweep(tmp_path, tree, base_tree(pattern_root))
    spec = load_sweep(sweep)
    spec.out.mkdir(parents=True)
    study = open_study(spec, spec.search)
    lost = study.ask(distributions(spec.search, "test"))  # a worker elsewhere takes trial 0
    lost.set_user_attr("host", "another-machine")
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(3.5)  # then dies: three beats missed
    result = run_sweep(load_sweep(sweep))
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    retries = [t for t in study.trials if t.system_attrs.get("retry_history") == [0]]
    assert len(retries) == 1 and retries[0].params == study.trials[0].params
    # The retry continues trial 0's run folder; the records count it once.
    other = ({1, 2} - {retries[0].number}).pop()
    assert sorted(r["name"] for r in result.records) == ["trial-000", f"trial-{other:03d}"]
    assert {r["status"] for r in result.records} == {"finished"}
