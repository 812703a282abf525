"""Real signals against real training processes: SIGKILL at seeded random points, SIGTERM and
SIGINT in every phase, two signals in a row, and a signal to the whole process group.

Every interrupted run is resumed and must end bitwise equal to an uninterrupted run: final and
best weights, test metrics and history.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from imagefit.config import config_from_dict
from imagefit.workflow import train

from conftest import write_pattern_folder
from faultkit import (
    Outcome,
    Scenario,
    assert_same_run,
    checkpoint,
    partial_writes,
    rng,
    run_scenarios,
    run_tree,
    write_config,
)

pytestmark = pytest.mark.faults

EPOCHS = 3
KILLS = ["kill-train-a", "kill-train-b", "kill-eval", "kill-ckpt-last", "kill-ckpt-best"]
GRACEFUL = ["term-decode", "term-train", "int-eval", "term-ckpt", "term-group-workers"]
DOUBLE = ["term-term-train", "int-int-ckpt"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The data, an uninterrupted reference run, and every scenario's outcome."""
    base = tmp_path_factory.mktemp("signals")
    root = write_pattern_folder(base / "patterns")
    reference = train(  # what `imagefit train` runs: fit and the post-run steps
        config_from_dict(run_tree(root, base / "reference", base / "cache-ref"))
    ).run_dir
    split = json.loads((reference / "split.json").read_text())
    steps = -(-split["counts"]["train"] // 4)  # training batches per epoch
    history = json.loads((reference / "history.json").read_text())
    best, improved = float("-inf"), []  # the epochs that wrote best.pt (monitor val_accuracy)
    for row in history:
        if row["val_accuracy"] > best:
            best = row["val_accuracy"]
            improved.append(row["epoch"])
    scenarios = _scenarios(base, root, steps, improved)
    return {
        "base": base,
        "reference": reference,
        "steps": steps,
        "improved": improved,
        "outcomes": run_scenarios(scenarios, base),
    }


def _step(name: str, steps: int, epochs: list[int]) -> tuple[int, int, int]:
    """A seeded random training step strictly inside an epoch: (epoch, step in it, global)."""
    r = rng(name)
    epoch, step = r.choice(epochs), r.randint(2, steps - 1)
    return epoch, step, (epoch - 1) * steps + step


def _scenarios(base: Path, root: Path, steps: int, improved: list[int]) -> list[Scenario]:
    def config(name: str, **sections: dict) -> Path:
        tree = run_tree(root, base / name, base / f"cache-{name}", **sections)
        return write_config(tree, base / f"{name}.yaml")

    out = []
    for name in ("kill-train-a", "kill-train-b"):
        *_, n = _step(name, steps, [1, 2, 3])
        out.append(
            Scenario(
                name,
                config(name),
                f"enter train {n}",
                rng(name).uniform(0, 0.05),
                [signal.SIGKILL],
                slow={"train": 0.12},
            )
        )
    r = rng("kill-eval")
    out.append(
        Scenario(
            "kill-eval",
            config("kill-eval"),
            f"enter eval {r.randint(1, EPOCHS)}",
            r.uniform(0.02, 0.25),
            [signal.SIGKILL],
            slow={"eval": 0.2},
        )
    )
    # last.pt write k is the end of epoch k - 1; write 1, the starting point, has no earlier
    # last.pt to fall back on (resuming then says "start it again", see test_faults_inputs)
    r = rng("kill-ckpt-last")
    out.append(
        Scenario(
            "kill-ckpt-last",
            config("kill-ckpt-last"),
            f"enter ckpt last.pt {r.randint(2, EPOCHS + 1)}",
            r.uniform(0, 0.2),
            [signal.SIGKILL],
            slow={"ckpt": 0.5},
        )
    )
    r = rng("kill-ckpt-best")
    out.append(
        Scenario(
            "kill-ckpt-best",
            config("kill-ckpt-best"),
            f"enter ckpt best.pt {r.randint(1, len(improved))}",
            r.uniform(0, 0.2),
            [signal.SIGKILL],
            slow={"ckpt": 0.5},
        )
    )
    out.append(
        Scenario(
            "term-decode",
            config("term-decode"),
            "enter decode",
            rng("term-decode").uniform(0.05, 0.3),
            [signal.SIGTERM],
            slow={"decode": 0.05},
        )
    )
    *_, n = _step("term-train", steps, [1, 2, 3])
    out.append(
        Scenario(
            "term-train",
            config("term-train"),
            f"enter train {n}",
            rng("term-train").uniform(0, 0.05),
            [signal.SIGTERM],
            slow={"train": 0.12},
        )
    )
    r = rng("int-eval")
    out.append(
        Scenario(
            "int-eval",
            config("int-eval"),
            f"enter eval {r.randint(1, EPOCHS - 1)}",
            r.uniform(0.02, 0.2),
            [signal.SIGINT],
            slow={"eval": 0.2},
        )
    )
    r = rng("term-ckpt")
    out.append(
        Scenario(
            "term-ckpt",
            config("term-ckpt"),
            f"enter ckpt last.pt {r.randint(2, EPOCHS)}",
            r.uniform(0, 0.2),
            [signal.SIGTERM],
            slow={"ckpt": 0.5},
        )
    )
    *_, n = _step("term-group-workers", steps, [1, 2, 3])
    streaming = config("term-group-workers", data={"cache": "never", "num_workers": 2})
    out.append(
        Scenario(
            "term-group-workers",
            streaming,
            f"enter train {n}",
            0.02,
            [signal.SIGTERM],
            slow={"train": 0.12},
            group=True,
        )
    )
    out.append(
        Scenario(
            "term-test-eval",
            config("term-test-eval"),
            f"enter eval {EPOCHS + 1}",
            0.05,
            [signal.SIGTERM],
            slow={"eval": 0.2},
        )
    )
    *_, n = _step("term-term-train", steps, [1, 2, 3])
    out.append(
        Scenario(
            "term-term-train",
            config("term-term-train"),
            f"enter train {n}",
            0.02,
            [signal.SIGTERM, signal.SIGTERM],
            slow={"train": 0.6},
            gap=0.1,
        )
    )
    r = rng("int-int-ckpt")
    out.append(
        Scenario(
            "int-int-ckpt",
            config("int-int-ckpt"),
            f"enter ckpt last.pt {r.randint(2, EPOCHS + 1)}",
            0.02,
            [signal.SIGINT, signal.SIGINT],
            slow={"ckpt": 1.2},
            gap=0.1,
        )
    )
    return out


def _outcome(lab: dict, name: str) -> Outcome:
    outcome = lab["outcomes"][name]
    assert outcome.error is None, f"{name}: {outcome.error}\n{outcome.output}"
    return outcome


def _run(lab: dict, name: str) -> Path:
    return lab["base"] / name / "run"


@pytest.mark.parametrize("name", KILLS)
def test_sigkill_anywhere_then_resume_is_exact(lab: dict, name: str) -> None:
    outcome = _outcome(lab, name)
    assert outcome.returncode == -signal.SIGKILL, outcome.output
    kind, *where = outcome.scenario.trigger.split()[1:]
    run = _run(lab, name)
    if kind == "train":  # the kill landed inside the epoch: its evaluation never started
        epoch = (int(where[0]) - 1) // lab["steps"] + 1
        assert not outcome.saw(f"enter eval {epoch}"), outcome.events[-5:]
    else:  # inside the evaluation or the checkpoint write: it never finished
        assert not outcome.saw(outcome.scenario.trigger.replace("enter", "leave"))
    if kind == "ckpt":
        assert partial_writes(run), "the kill should have left a partial temp file"
        last = checkpoint(run / "last.pt")  # the previous last.pt is whole
        if where[0] == "last.pt":
            assert last["epoch"] == int(where[1]) - 2
        else:  # best.pt goes first, so last.pt is still the epoch before
            assert last["epoch"] == lab["improved"][int(where[1]) - 1] - 1
    train(resume=run)
    assert not partial_writes(run)
    assert_same_run(run, lab["reference"])


@pytest.mark.parametrize("name", GRACEFUL)
def test_first_signal_saves_and_exits_75_then_resume_is_exact(lab: dict, name: str) -> None:
    outcome = _outcome(lab, name)
    assert outcome.returncode == 75, outcome.output
    assert "imagefit train --resume" in outcome.output
    run = _run(lab, name)
    state = checkpoint(run / "last.pt")
    trigger = outcome.scenario.trigger
    if name == "term-decode":
        assert (state["epoch"], state["batch"]) == (0, 0)
        assert not any(line.startswith("enter train") for line in outcome.events)
    elif trigger.startswith("enter train"):  # stopped mid-epoch, after the current step
        step = (int(trigger.split()[-1]) - 1) % lab["steps"] + 1
        assert state["batch"] >= step
    else:  # the evaluation or the checkpoint write in progress was finished first
        assert outcome.saw(trigger.replace("enter", "leave"))
        assert state["batch"] == 0
    assert not partial_writes(run)
    train(resume=run)
    assert_same_run(run, lab["reference"])


def test_signal_during_final_test_evaluation_lets_the_run_finish(lab: dict) -> None:
    outcome = _outcome(lab, "term-test-eval")
    assert outcome.returncode == 0, outcome.output
    assert_same_run(_run(lab, "term-test-eval"), lab["reference"])


@pytest.mark.parametrize("name", DOUBLE)
def test_second_signal_exits_at_once_and_the_run_stays_resumable(lab: dict, name: str) -> None:
    outcome = _outcome(lab, name)
    signum = outcome.scenario.signals[-1]
    assert outcome.returncode == 128 + signum, outcome.output
    assert outcome.exit_after_last_signal < 2.0  # not after the 0.6 s step or 1.2 s write
    run = _run(lab, name)
    if "ckpt" in name:
        assert partial_writes(run) and not outcome.saw(
            outcome.scenario.trigger.replace("enter", "leave")
        )
    checkpoint(run / "last.pt")  # whole: the write in progress never replaced it
    train(resume=run)
    assert not partial_writes(run)
    assert_same_run(run, lab["reference"])
