"""Helpers of the fault suite: tiny run configs, victim processes, signal scenarios, weights.

A scenario starts a victim (a real ``imagefit train`` process with the hooks of victim.py),
waits for an event line of it ("enter eval 2"), waits a seeded random delay inside the
stretched phase, sends its signals and records how the process ended.

Victims are forked from a multiprocessing forkserver that has imported torch and imagefit
once: each is still its own process (own pid, own session, real signals, real exit status),
but starts in milliseconds instead of paying ~5 s of imports on each of two cores. Scenarios
run in parallel threads.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

PRELOAD = ["victim", "faultkit", "imagefit.cli", "imagefit.workflow", "imagefit.data.loaders"]
# One seed draws every kill point and delay; set IMAGEFIT_FAULT_SEED to explore others.
FAULT_SEED = int(os.environ.get("IMAGEFIT_FAULT_SEED", "20240611"))
PARALLEL = 4  # victims alive at once: two cores, and most of a victim's time is sleep


def rng(salt: str) -> random.Random:
    return random.Random(f"{FAULT_SEED}:{salt}")


def run_tree(root: Path, out: Path, cache: Path, **sections: dict) -> dict[str, Any]:
    """simple_cnn at 16 px with augmentation and dropout, so every RNG stream matters."""
    tree: dict[str, Any] = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0, "cache_dir": str(cache)},
        "augment": {"translate": 0.1, "scale": [0.6, 1.0], "hflip": 0.5},
        "model": {"name": "simple_cnn", "drop_rate": 0.3},
        "optim": {"name": "adam", "lr": 0.003},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 4, "seed": 0, "threads": 1},
        "output": {"dir": str(out), "name": "run"},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return tree


def write_config(tree: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    """Bitwise equality of the model tensors of two checkpoints."""
    wa, wb = checkpoint(a)["model"], checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{a} and {b} differ in {key}"


def assert_same_run(run: Path, reference: Path) -> None:
    """Final and best weights, test metrics and history (less timings) equal the reference."""
    assert_same_weights(run / "last.pt", reference / "last.pt")
    assert_same_weights(run / "best.pt", reference / "best.pt")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run, reference)]
    assert metrics[0] == metrics[1]
    rows = [json.loads((d / "history.json").read_text()) for d in (run, reference)]
    strip = [[{k: v for k, v in row.items() if k != "time_s"} for row in h] for h in rows]
    assert strip[0] == strip[1]


@dataclass
class Scenario:
    """Start a victim, wait for ``trigger``, wait ``delay`` s, send ``signals`` ``gap`` s apart."""

    name: str
    config: Path
    trigger: str
    delay: float
    signals: list[int]
    slow: dict[str, float] = field(default_factory=dict)
    gap: float = 0.3
    group: bool = False  # signal the whole process group (workers too), as Ctrl-C or SLURM do
    timeout: float = 90.0


@dataclass
class Outcome:
    scenario: Scenario
    returncode: int | None
    output: str
    events: list[str]
    exit_after_last_signal: float | None  # seconds from the last signal to the exit
    error: str | None = None  # the harness's own failure (trigger never came, timeout)

    def saw(self, line: str) -> bool:
        return line in self.events


def _victim_main(argv: list[str], hooks: dict, log: str, fsize_limit: int | None) -> None:
    """Body of a forked victim: own session, output to ``log``, optional file-size limit."""
    os.setsid()  # its own process group: a group signal reaches it and its workers only
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fsize_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))
    import victim

    victim.run(argv, hooks)


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class Victim:
    """A running victim: ``pid``, ``poll()``/``wait()`` like Popen, ``output()`` from its log."""

    def __init__(self, argv: list[str], hooks: dict, log: Path, fsize_limit: int | None = None):
        self.log = log
        self.process = _forkserver().Process(
            target=_victim_main, args=(argv, hooks, str(log), fsize_limit), daemon=False
        )
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode  # negative: killed by that signal, as with Popen

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.join()


def run_scenario(scenario: Scenario, workdir: Path) -> Outcome:
    events = workdir / f"{scenario.name}.events"
    hooks = {"events": str(events), "slow": scenario.slow}
    victim = Victim(["train", str(scenario.config)], hooks, workdir / f"{scenario.name}.log")
    error, sent = None, None
    deadline = time.monotonic() + scenario.timeout
    while not (events.is_file() and scenario.trigger in events.read_text().splitlines()):
        if victim.poll() is not None or time.monotonic() > deadline:
            error = f"'{scenario.trigger}' never came (exit {victim.poll()})"
            break
        time.sleep(0.005)
    else:
        time.sleep(scenario.delay)
        for i, signum in enumerate(scenario.signals):
            if i:
                time.sleep(scenario.gap)
            if scenario.group:
                os.killpg(victim.pid, signum)
            else:
                os.kill(victim.pid, signum)
            sent = time.monotonic()
    if victim.wait(scenario.timeout) is None:
        victim.kill_group()
        error = error or "the victim did not exit in time"
    finished = time.monotonic()
    lines = events.read_text().splitlines() if events.is_file() else []
    after = finished - sent if sent is not None else None
    return Outcome(scenario, victim.poll(), victim.output(), lines, after, error)


def run_scenarios(scenarios: list[Scenario], workdir: Path) -> dict[str, Outcome]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = pool.map(lambda s: run_scenario(s, workdir), scenarios)
        return {outcome.scenario.name: outcome for outcome in outcomes}


def partial_writes(run: Path) -> list[Path]:
    return sorted(run.glob(".*.pt.*"))
