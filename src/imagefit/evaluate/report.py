"""One self-contained HTML page for one run or a comparison of runs.

Plots are embedded as base64 PNG data URIs and the CSS is inline, so the page can be mailed,
attached to a ticket or opened offline; the only links are relative ones to the run folders.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from matplotlib.figure import Figure

from imagefit import dotted
from imagefit.evaluate import plots
from imagefit.runs.layout import CONFIG
from imagefit.runs.reader import RunRecord, load_run

log = logging.getLogger(__name__)

_ABSENT = object()  # a config key one run lacks: differs from every value, even None

PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1500px; padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.35em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #eaf6ea; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
.meta, .note { color: #666; font-size: 0.9em; }
.warn { color: #a15c00; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="meta">$meta</p>
$body
</body>
</html>
""")


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, int | float) else "—"


def _int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "—"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min"
        if minutes >= 60
        else f"{minutes} min {seconds:02d} s"
    )


def _rate(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, int | float) else "—"


def _config_value(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.figure_png(fig)).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _link(run_dir: Path, out: Path) -> str:
    """Relative URL from the page to ``run_dir`` (absolute file URI when none exists)."""
    try:
        relative = os.path.relpath(run_dir.resolve(), out.parent.resolve())
    except ValueError:  # another drive on Windows
        return run_dir.resolve().as_uri() + "/"
    return quote(Path(relative).as_posix()) + "/"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are pre-rendered HTML (escape before calling)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- config


def flatten_config(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config as ``{"model.name": ..., "optim.lr": ...}`` (lists stay values)."""
    return dotted.flatten(tree)


def config_differences(configs: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Flattened keys whose values are not the same in all ``configs``, with each config's
    value (a key one config lacks counts as a difference); all keys for a single config."""
    flats = [flatten_config(c) for c in configs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    table = {k: [flat.get(k, _ABSENT) for flat in flats] for k in keys}
    if len(configs) == 1:
        return table
    return {k: v for k, v in table.items() if any(_differs(v[0], other) for other in v[1:])}


def _differs(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is not b
    return json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)


# --------------------------------------------------------------------------- sections


METRIC_HEADER = [
    "Run",
    "Model",
    "Status",
    "Test accuracy",
    "Top-5",
    "F1 macro",
    "F1 weighted",
    "Best val accuracy (epoch)",
    "Params total",
    "Params trainable",
    "Wall time",
    "Train images/s",
]


def _metric_row(record: RunRecord, name: str, out: Path, best: bool) -> list[str]:
    """One run's cells under :data:`METRIC_HEADER`; ``best`` highlights its test accuracy."""
    m, s = record.metrics, record.summary
    best_val = _pct(s.best_val_accuracy)
    if s.best_epoch is not None:
        best_val += f" ({_e(s.best_epoch)})"
    model = s.model or flatten_config(record.config).get("model.name", "—")
    number = '<td class="num">{}</td>'.format
    return [
        f'<td><a href="{_e(_link(record.path, out))}">{_e(name)}</a></td>',
        f"<td>{_e(model)}</td>",
        f"<td>{_e(s.status or '—')}</td>",
        f'<td class="num{" best" if best else ""}">{_pct(_test_accuracy(record))}</td>',
        number(_pct(m.get("top5_accuracy"))),
        number(_pct(m.get("f1_macro"))),
        number(_pct(m.get("f1_weighted"))),
        number(best_val),
        number(_int(s.params_total)),
        number(_int(s.params_trainable)),
        number(_seconds(s.wall_time_s)),
        number(_rate(s.train_images_per_s)),
    ]


def _test_accuracy(record: RunRecord) -> float | None:
    # summary.json repeats it, so a run whose metrics.json is lost still shows it.
    return record.metrics.get("accuracy", record.summary.test_accuracy)


def _metrics_section(records: Sequence[RunRecord], names: Sequence[str], out: Path) -> str:
    tests = [_test_accuracy(r) for r in records]
    top = max((t for t in tests if isinstance(t, int | float)), default=None)
    rows = [
        _metric_row(r, n, out, best=len(records) > 1 and t is not None and t == top)
        for r, n, t in zip(records, names, tests, strict=True)
    ]
    return "<h2>Metrics</h2>" + _table(METRIC_HEADER, rows)


def _config_section(records: Sequence[RunRecord], names: Sequence[str]) -> str:
    with_config = [(r, n) for r, n in zip(records, names, strict=True) if r.config]
    if not with_config:
        return f'<h2>Configuration</h2><p class="note">No {CONFIG} found.</p>'
    lacking = [n for r, n in zip(records, names, strict=True) if not r.config]
    note = f'<p class="note warn">No {CONFIG} in: {_e(", ".join(lacking))}</p>' if lacking else ""
    diff = config_differences([r.config for r, _ in with_config])
    single = len(with_config) == 1
    heading = "Configuration" if single else "Configuration differences"
    if not diff:
        return f'<h2>{heading}</h2>{note}<p class="note">The configs are identical.</p>'
    header = ["Key"] + [_e(n) for _, n in with_config]
    rows = [
        [f"<td><code>{_e(key)}</code></td>"]
        + [f"<td><code>{_e(_config_value(v))}</code></td>" for v in values]
        for key, values in diff.items()
    ]
    return f"<h2>{heading}</h2>{note}" + _table(header, rows)


def _curves_section(records: Sequence[RunRecord]) -> str:
    if len(records) == 1:
        if not records[0].history:
            return '<h2>Training curves</h2><p class="note">No history found.</p>'
        fig = plots.training_curves_figure(records[0].history)
        return "<h2>Training curves</h2>" + _img(fig, "training curves")
    figures = plots.comparison_figures(records)
    return "<h2>Curves and test accuracy</h2>" + "".join(
        _img(fig, name.removesuffix(".png").replace("_", " ")) for name, fig in figures.items()
    )


def _run_section(record: RunRecord, name: str, out: Path, curves: bool) -> str:
    """The run's heading and plots; ``curves`` adds its own train/val curves (in a comparison
    the overlaid ones show validation only)."""
    parts = [f'<h2>Run <a href="{_e(_link(record.path, out))}">{_e(name)}</a></h2>']
    if record.missing:
        parts.append(f'<p class="note warn">Missing: {_e(", ".join(record.missing))}</p>')
    figures = plots.run_figures(record)
    if record.metrics.get("task") == "multilabel":
        return "".join(parts) + _multilabel_section(record, figures, curves)
    # Counts read best when they fit in the cells; with many classes the row fractions do.
    few = len(record.classes) <= plots.ANNOTATE_MAX
    matrix = "confusion_matrix.png" if few else "confusion_matrix_normalized.png"
    if matrix not in figures:
        parts.append('<p class="note">No test metrics: no confusion matrix or per-class plots.</p>')
    wanted = [
        *(["training_curves.png"] if curves else []),
        matrix,
        "per_class_accuracy_all.png",
        "per_class_accuracy_top_bottom.png",
        "top_confused_pairs.png",
    ]
    for filename in wanted:
        if filename in figures:
            parts.append(_img(figures[filename], filename.removesuffix(".png").replace("_", " ")))
    report = record.metrics.get("classification_report")
    if report:
        parts.append(
            f"<details><summary>Classification report</summary><pre>{_e(report)}</pre></details>"
        )
    return "".join(parts)


def _multilabel_section(record: RunRecord, figures: Mapping[str, Figure], curves: bool) -> str:
    """A multi-label run: its test mAP and F1s, per-class AP bars and PR curves, and the
    per-class thresholds (the accuracy column above is the exact-match rate)."""
    m = record.metrics
    rows = [
        [f"<td>{_e(label)}</td>", f'<td class="num">{_pct(m.get(key))}</td>']
        for label, key in (
            ("mAP", "map"),
            ("F1 micro", "f1_micro"),
            ("F1 macro", "f1_macro"),
            ("subset accuracy", "subset_accuracy"),
        )
    ]
    parts = ["<h3>Multi-label test metrics</h3>", _table(["Metric", "Test"], rows)]
    wanted = [*(["training_curves.png"] if curves else []), "per_class_ap.png"]
    wanted.append("precision_recall.png")
    for filename in wanted:
        if filename in figures:
            parts.append(_img(figures[filename], filename.removesuffix(".png").replace("_", " ")))
    per_class = m.get("per_class") or {}
    if per_class:
        header = ["Class", "AP", "Precision", "Recall", "Threshold", "Support"]
        table = [
            [f"<td>{_e(name)}</td>"]
            + [
                f'<td class="num">{_pct(values.get(key))}</td>'
                for key in ("ap", "precision", "recall")
            ]
            + [
                '<td class="num">{:.3f}</td>'.format(values.get("threshold", 0.0)),
                f'<td class="num">{_int(values.get("support"))}</td>',
            ]
            for name, values in per_class.items()
        ]
        parts.append(_table(header, table))
    return "".join(parts)


# --------------------------------------------------------------------------- entry point


def write_report(run_dirs: Sequence[Path], out: Path, title: str | None = None) -> Path:
    """Write one self-contained HTML page about ``run_dirs`` to ``out`` and return ``out``.

    One run: its metrics, whole config, curves, confusion matrix and per-class accuracy.
    Several: a metric table, the config keys that differ, overlaid curves and each run's plots.
    """
    if not run_dirs:
        raise ValueError("write_report needs at least one run folder")
    out = Path(out)
    records = [load_run(Path(d)) for d in run_dirs]
    for record in records:
        if record.missing:
            log.warning("%s: missing %s", record.path, ", ".join(record.missing))
    names = plots.unique_names(records)
    if title is None:
        title = (
            f"imagefit run {names[0]}"
            if len(records) == 1
            else f"imagefit: {len(records)} runs compared"
        )
    body = [
        _metrics_section(records, names, out),
        _config_section(records, names),
        _curves_section(records),
        *(_run_section(r, n, out, len(records) > 1) for r, n in zip(records, names, strict=True)),
    ]
    page = PAGE.substitute(
        title=_e(title),
        meta=_e(
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(records)} run folder(s)"
        ),
        body="\n".join(body),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
