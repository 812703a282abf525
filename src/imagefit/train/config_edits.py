"""What ``--resume`` does with an edited ``config.yaml``.

The checkpoint holds the config the run trained with; the run folder's ``config.yaml`` is what
a person may have edited since. A change that the continued run can apply exactly (it ends as
a run configured that way from the start would have, or it touches nothing the weights depend
on) is applied and recorded in ``resume.json``; any other change is refused, one line per key
with old -> new, because a resumed run that silently ignored it (or half-applied it) would
make the report describe a run that never happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imagefit import dotted
from imagefit.config import Config, config_from_dict, read_yaml
from imagefit.errors import ConfigError
from imagefit.fileio import write_json
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import read_json

# A rule gets (old value, new value, the stored config, epochs finished) and returns None when
# the change applies exactly, else why not.
Rule = Callable[[Any, Any, Config, int], str | None]


def _more_epochs(old: Any, new: Any, stored: Config, done: int) -> str | None:
    # More (or fewer, but not fewer than done) epochs continue the same run, as long as no
    # part of it was planned from the total: cosine spreads its curve over train.epochs, so
    # the epochs already run followed another curve than the new total would give.
    if new < done:
        return f"{done} epochs are already done"
    if stored.schedule.name == "cosine":
        return (
            "schedule.name=cosine planned the lr curve of the epochs already run for the old total"
        )
    return None


def _patience(old: Any, new: Any, stored: Config, done: int) -> str | None:
    # Early stopping only decides whether to go on; a larger patience (or none) would not
    # have stopped the run earlier, so continuing is what that run would have done. A smaller
    # one might have stopped it epochs ago.
    if new is None or (old is not None and new >= old):
        return None
    return "a smaller patience could have stopped the run epochs ago"


def _always(old: Any, new: Any, stored: Config, done: int) -> str | None:
    return None


# The keys resume may apply, each with why it is safe.
SAFE: dict[str, Rule] = {
    "train.epochs": _more_epochs,
    "train.patience": _patience,
    "train.checkpoint_every": _always,  # which epoch_NNN.pt files are kept; no weight changes
    "track.mlflow": _always,  # trackers observe the run; they never feed back into it
    "track.tensorboard": _always,
    "track.mlflow_uri": _always,
    "track.mlflow_experiment": _always,
    "export.onnx": _always,  # the export happens after training, from best.pt
    "export.opset": _always,
    "export.int8": _always,
    # The dataset moved: the run's split.json lists its files relative to the root, and
    # resume reads exactly those under the new root (the ledger's content hashes tell
    # whether they are the same files).
    "data.root": _always,
    "output.name": _always,  # the run is its folder; the name there is a label
    "output.dir": _always,
}


def _flat(cfg: Config) -> dict[str, Any]:
    return dotted.flatten(cfg.to_dict())


def reconcile(stored: Config, run_dir: Path, done: int) -> tuple[Config, dict[str, list[Any]]]:
    """(the config to continue with, the applied changes ``{key: [old, new]}``).

    ``stored`` is the checkpoint's config; ``run_dir``'s ``config.yaml`` the edited one (a
    missing file changes nothing). Raises ConfigError listing every change that cannot be
    applied, with old -> new and what to do instead.
    """
    path = RunLayout(run_dir).config
    if not path.is_file():
        return stored, {}
    edited = config_from_dict(read_yaml(path), source=str(path))
    before, after = _flat(stored), _flat(edited)
    changes = {
        key: [before.get(key), after.get(key)]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }
    refused = []
    for key, (old, new) in changes.items():
        rule = SAFE.get(key)
        why = "resume cannot apply it exactly" if rule is None else rule(old, new, stored, done)
        if why is not None:
            refused.append(f"  {key}: {old!r} -> {new!r} ({why})")
    if refused:
        raise ConfigError(
            f"{path} was edited after the run started, and resume cannot apply:\n"
            + "\n".join(refused)
            + f"\nrevert these keys in {path} to resume, or start a new run with them: "
            f"`imagefit train {path} --set output.name=NEW_NAME`"
        )
    return edited, changes


def record_resume(run_dir: Path, epoch: int, changes: Mapping[str, list[Any]]) -> None:
    """Append this resume to ``resume.json``: when, at which epoch, what changed old -> new."""
    path = RunLayout(run_dir).resume
    history = read_json(path)
    entries = history if isinstance(history, list) else []
    entries.append(
        {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "epoch": epoch,
            "changed": {key: {"from": old, "to": new} for key, (old, new) in changes.items()},
        }
    )
    write_json(path, entries)
