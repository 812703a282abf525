"""A sweep's results: ``all_results.json`` (seed 002's name), ``results.md`` and ``results.csv``.

Every number is read back from the run folders (through :mod:`imagefit.runs.reader`), so the
table always agrees with the runs it describes.
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from imagefit.errors import ImagefitError
from imagefit.fileio import atomic_open, atomic_write, write_json
from imagefit.runs.layout import VS_BASELINE, RunLayout
from imagefit.runs.reader import read_history, read_json, read_metrics, read_summary
from imagefit.sweep.spec import SweepSpec, Trial

__all__ = ["read_json"]  # the sweep's own files read as the runs' do

log = logging.getLogger(__name__)

TEST_KEYS = (
    "split",  # "val" when the dataset has no test split (optimistic: it chose the epoch)
    "accuracy",
    "top5_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "loss",
    "num_samples",
)
SUMMARY_KEYS = (
    "model",
    "best_val_accuracy",
    "best_epoch",
    "monitor",
    "best_monitor",
    "epochs_run",
    "params_total",
    "params_trainable",
    "wall_time_s",
    "train_images_per_s",
    "early_stopped",
)


def _test(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: (record.get("test") or {}).get(key)


def _field(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: record.get(key)


# (key, title, getter, cell format) of the table's columns after name, status and swept keys.
COLUMNS = (
    ("best_val_accuracy", "best val acc", _field("best_val_accuracy"), ".4f"),
    ("test_accuracy", "test acc", _test("accuracy"), ".4f"),
    ("test_top5_accuracy", "test top-5", _test("top5_accuracy"), ".4f"),
    ("test_f1_macro", "test F1 macro", _test("f1_macro"), ".4f"),
    ("test_loss", "test loss", _test("loss"), ".4f"),
    ("params_total", "params", _field("params_total"), ","),
    ("params_trainable", "trainable", _field("params_trainable"), ","),
    ("wall_time_s", "wall s", _field("wall_time_s"), ".1f"),
    ("train_images_per_s", "images/s", _field("train_images_per_s"), ".1f"),
)
CONSTANT = ("params_total", "params_trainable")  # the same for every seed: shown, not averaged
AVERAGED = tuple(c for c in COLUMNS if c[0] not in CONSTANT)
OBJECTIVE = ("value", "objective", _field("value"), ".4f")  # a search's per-trial value


def _columns(records: list[dict[str, Any]]) -> tuple[tuple[str, str, Any, str], ...]:
    return ((OBJECTIVE,) if any("value" in r for r in records) else ()) + COLUMNS


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number as ``spec`` formats it, anything else as text; '-' for none."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "-" if value is None else str(value)


def fmt_value(value: Any) -> str:
    """A swept value as written: ``1e-05``, ``0.001``, ``resnet18``, ``[0.8, 1.0]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def _from_history(run_dir: Path) -> dict[str, Any]:
    """What an unfinished run's history says (a pruned or interrupted trial has no summary)."""
    history = read_history(run_dir) or []
    values = [row["val_accuracy"] for row in history if row.get("val_accuracy") is not None]
    return {"best_val_accuracy": max(values) if values else None, "epochs_run": len(history)}


def run_record(
    trial: Trial,
    run_dir: Path,
    out: Path,
    status: str,
    error: str | None = None,
    wall_time_s: float | None = None,
) -> dict[str, Any]:
    """The all_results.json entry of one run folder."""
    found = read_summary(run_dir)
    summary = found.to_dict() if found is not None else {}
    metrics = read_metrics(run_dir)
    record: dict[str, Any] = {
        "name": trial.name,
        "group": trial.group,
        "seed": trial.seed,
        "overrides": trial.overrides,
        "status": status,
        "error": error,
        "run_dir": run_dir.relative_to(out).as_posix(),
        "test": {k: metrics.get(k) for k in TEST_KEYS} if isinstance(metrics, dict) else None,
    }
    record.update({k: summary.get(k) for k in SUMMARY_KEYS})
    if not summary:
        record.update(_from_history(run_dir), wall_time_s=wall_time_s)
    return record


def _mean_std(values: list[Any]) -> dict[str, float | None]:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return {
        "mean": statistics.fmean(numbers) if numbers else None,
        "std": statistics.stdev(numbers) if len(numbers) > 1 else None,
    }


def group_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over the finished seeds of each trial."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    result = []
    for name, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        counted = next((r for r in done + members if r.get("params_total") is not None), members[0])
        result.append(
            {
                "name": name,
                "overrides": members[0]["overrides"],
                "runs": len(members),
                "finished": len(done),
                "seeds": [r["seed"] for r in done],
                **{key: counted.get(key) for key in CONSTANT},
                **{key: _mean_std([get(r) for r in done]) for key, _, get, _ in AVERAGED},
            }
        )
    return result


def _swept_keys(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in records for k in r["overrides"]))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def runs_table(
    records: list[dict[str, Any]], columns: tuple[str, ...] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: name, status, swept keys, seed, then COLUMNS (or the
    ``columns`` named by key)."""
    keys = _swept_keys(records)
    seeds = any(r["seed"] is not None for r in records)
    shown = [c for c in _columns(records) if columns is None or c[0] in columns]
    header = ["trial", "status", *keys, *(["seed"] if seeds else []), *(t for _, t, _, _ in shown)]
    rows = [
        [
            r["name"],
            r["status"],
            *(fmt_value(r["overrides"].get(k)) for k in keys),
            *([fmt(r["seed"], "d")] if seeds else []),
            *(fmt(get(r), f) for _, _, get, f in shown),
        ]
        for r in records
    ]
    return header, rows


def groups_table(
    groups: list[dict[str, Any]], columns: tuple[str, ...] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of mean ± std over seeds: COLUMNS (or the ``columns`` named by key),
    parameter counts as their one value."""
    keys = list(dict.fromkeys(k for g in groups for k in g["overrides"]))
    shown = [c for c in COLUMNS if columns is None or c[0] in columns]

    def cell(group: dict[str, Any], key: str, spec: str) -> str:
        if key in CONSTANT:
            return fmt(group.get(key), spec)
        stats = group[key]
        return fmt(stats["mean"], spec) + (
            "" if stats["std"] is None else f" ± {fmt(stats['std'], spec)}"
        )

    header = ["trial", "seeds", *keys, *(t for _, t, _, _ in shown)]
    rows = [
        [
            g["name"],
            f"{g['finished']}/{g['runs']}",
            *(fmt_value(g["overrides"].get(k)) for k in keys),
            *(cell(g, k, f) for k, _, _, f in shown),
        ]
        for g in groups
    ]
    return header, rows


def _csv_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    keys = _swept_keys(records)
    columns = _columns(records)
    header = ["trial", "status", *keys, "seed", *(k for k, _, _, _ in columns), "error"]
    rows = [
        [
            r["name"],
            r["status"],
            *(r["overrides"].get(k) for k in keys),
            r["seed"],
            *(get(r) for _, _, get, _ in columns),
            r.get("error"),
        ]
        for r in records
    ]
    return header, rows


def write_sweep_file(spec: SweepSpec) -> Path:
    """Record what was asked (file, base, command-line overrides) beside the results."""
    record = {
        "name": spec.name,
        "file": str(spec.path),
        "base": str(spec.base),
        "mode": spec.mode,
        "cli": spec.cli,
        "sweep": yaml.safe_load(spec.path.read_text(encoding="utf-8")),
    }
    path = spec.out / "sweep.yaml"
    atomic_write(path, yaml.safe_dump(record, sort_keys=False))
    return path


def _vs_baseline(out: Path, records: list[dict[str, Any]]) -> str:
    """The paired-bootstrap section, when every finished run has its test predictions saved
    (computing them is an evaluation per run: ``imagefit diff SWEEP_DIR`` does it on request);
    its rows also go to ``vs_baseline.json``, which the sweep's report shows."""
    from imagefit.evaluate.compare import sweep_vs_baseline, vs_baseline_markdown

    done = [r for r in records if r["status"] == "finished"]
    if len({r["group"] for r in done}) < 2 or not all(
        RunLayout(out / r["run_dir"]).test_predictions.is_file() for r in done
    ):
        return ""
    try:
        rows = sweep_vs_baseline(out, records=done)
    except ImagefitError as exc:  # a table must not fail over a comparison it cannot make
        log.warning("%s: no comparison to the baseline (%s)", out, exc)
        return ""
    write_json(out / VS_BASELINE, rows)
    return (
        "\n## Difference to the first variant (paired bootstrap over seeds and test images)\n\n"
        + vs_baseline_markdown(rows)
    )


def failed_trials(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Name and error line of each failed run, in order: what a sweep ends by naming."""
    return [
        {"name": r["name"], "error": first_line(r.get("error"))}
        for r in records
        if r["status"] == "failed"
    ]


def first_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return lines[0] if lines else "unknown error"


def write_results(spec: SweepSpec, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write all_results.json, results.md and results.csv into ``spec.out``."""
    groups = group_records(records) if spec.seeds else []
    search = vars(spec.search) if spec.search else None
    doc: dict[str, Any] = {
        "sweep": spec.name,
        "file": str(spec.path),
        "base": str(spec.base),
        "mode": spec.mode,
        "set": spec.common,
        "cli": spec.cli,
        "seeds": spec.seeds,
        "search": search,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": records,
        "groups": groups,
        "failed": failed_trials(records),  # a reader sees at once that not all trials ran
    }
    files = {
        "all_results": spec.out / "all_results.json",
        "results_md": spec.out / "results.md",
        "results_csv": spec.out / "results.csv",
    }
    write_json(files["all_results"], doc)
    text = (
        f"# Sweep {spec.name}\n\n{len(records)} run(s) from `{spec.path}` (base `{spec.base}`).\n\n"
    )
    text += _markdown(*runs_table(records))
    if groups:
        text += "\n## Mean ± std over seeds\n\n" + _markdown(*groups_table(groups))
    text += _vs_baseline(spec.out, records)
    if doc["failed"]:
        text += "\n## Failed trials\n\n" + "".join(
            f"- `{f['name']}`: {f['error']}\n" for f in doc["failed"]
        )
    atomic_write(files["results_md"], text)
    with atomic_open(files["results_csv"], "w") as handle:
        header, rows = _csv_rows(records)
        csv.writer(handle).writerows([header, *rows])
    return files
