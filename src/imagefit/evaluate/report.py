"""One self-contained HTML page for one run or a comparison of runs.

The page is ordered as a person reads it: the answer first (test accuracy with its 95%
interval), then how training went (learning curves), where the model errs (confusion matrix,
the gallery of confident mistakes), whether its probabilities can be trusted (calibration),
and last what was run (the config keys that differ from the defaults; the whole tree folded).
Panels that say nothing at the dataset's size are left out (see
:func:`imagefit.evaluate.plots.run_figures`; top-5 with five classes or fewer).

Plots and thumbnails are embedded as data URIs and the CSS is inline, so the page can be
mailed, attached to a ticket or opened offline; the only links are relative ones to the run
folders.
"""

from __future__ import annotations

import base64
import html
import io
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
from imagefit.config import Config
from imagefit.evaluate import plots
from imagefit.evaluate.compare import verdict
from imagefit.evaluate.evidence import RunEvidence, read_evidence, read_vs_baseline
from imagefit.fileio import atomic_write, make_dirs
from imagefit.runs import layout
from imagefit.runs.layout import CONFIG, RunLayout
from imagefit.runs.reader import RunRecord, load_run, read_json, require_trained, trained_config
from imagefit.runs.records import split_label

log = logging.getLogger(__name__)

_ABSENT = object()  # a config key one run lacks: differs from every value, even None
THUMB = 160  # px, longer side of a gallery thumbnail on the page

PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1500px; padding: 0 1em; color: #222; overflow-wrap: anywhere; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; max-width: 100%; }
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
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em; min-width: 9em; }
.card .value { font-size: 1.5em; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label, .card .sub { color: #666; font-size: 0.85em; }
.pair { display: grid; gap: 1em; grid-template-columns: repeat(auto-fit, minmax(min(100%, 28em), 1fr)); }
.gallery { display: grid; gap: 0.8em; grid-template-columns: repeat(auto-fill, minmax(min(100%, 15em), 1fr)); }
.gallery figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 0.4em; }
.gallery .imgs { display: grid; grid-template-columns: 1fr 1fr; gap: 0.3em; }
.gallery img { margin: 0; width: 100%; }
.gallery figcaption { font-size: 0.85em; }
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f} %" if _is_number(value) else "—"


def _signed_pct(value: float) -> str:
    return f"{100 * value:+.2f} %"


def _int(value: Any) -> str:
    return f"{int(value):,}" if _is_number(value) else "—"


def _seconds(value: Any) -> str:
    if not _is_number(value):
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
    return f"{value:,.1f}" if _is_number(value) else "—"


def _config_value(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{_data_uri(plots.figure_png(fig), "image/png")}">'


def _thumbnail(path: Path, alt: str) -> str:
    """An image file as a small inlined JPEG; a note when it cannot be read (moved, deleted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        return f'<span class="note">({_e(alt)} not readable)</span>'
    return f'<img alt="{_e(alt)}" src="{_data_uri(buffer.getvalue(), "image/jpeg")}">'


def _link(run_dir: Path, out: Path) -> str:
    """Relative URL from the page to ``run_dir`` (absolute file URI when none exists)."""
    try:
        relative = os.path.relpath(run_dir.resolve(), out.parent.resolve())
    except ValueError:  # another drive on Windows
        return run_dir.resolve().as_uri() + "/"
    return quote(Path(relative).as_posix()) + "/"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table that scrolls inside its own box on a narrow screen; cells are
    pre-rendered HTML (escape before calling)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _section(key: str, heading: str, content: str) -> str:
    return f'<section id="{key}"><h2>{heading}</h2>{content}</section>'


def _note(text: str, warn: bool = False) -> str:
    return f'<p class="note{" warn" if warn else ""}">{text}</p>'


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


def changed_from_defaults(config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flattened keys of ``config`` whose value is not ``Config()``'s, as (default, value);
    a key the defaults lack (an older or extended config) has the default ``_ABSENT``."""
    defaults = flatten_config(Config().to_dict())
    return {
        key: (defaults.get(key, _ABSENT), value)
        for key, value in flatten_config(config).items()
        if _differs(defaults.get(key, _ABSENT), value)
    }


def _differs(a: Any, b: Any) -> bool:
    if a is _ABSENT or b is _ABSENT:
        return a is not b
    return json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)


# --------------------------------------------------------------------------- one run


def _tta(metrics: dict) -> str:
    """`` (tta flip: 91.2%)`` beside the plain test accuracy of a run tested with TTA too."""
    tta = metrics.get("tta")
    return f" ({_e(tta['mode'])}: {_pct(tta.get('accuracy'))})" if isinstance(tta, dict) else ""


def _test_accuracy(record: RunRecord) -> float | None:
    # summary.json repeats it, so a run whose metrics.json is lost still shows it.
    return record.metrics.get("accuracy", record.summary.test_accuracy)


def _card(label: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="sub">{sub}</div>' if sub else ""
    return (
        f'<div class="card"><div class="label">{label}</div>'
        f'<div class="value">{value}</div>{sub_html}</div>'
    )


def _interval_text(evidence: RunEvidence) -> str:
    ci = evidence.interval
    if ci is None:
        return ""
    return f"{ci.level:.0%} CI {100 * ci.low:.1f}–{100 * ci.high:.1f} %"


def unapplied_edits(record: RunRecord) -> dict[str, list[Any]]:
    """``config.yaml`` keys edited since the run last trained, ``{key: [ran, edited]}``; the
    record's config becomes the one that ran, so the page shows what ran."""
    ran = trained_config(record.path)
    if not ran or not record.config:
        return {}
    before, after = flatten_config(ran), flatten_config(record.config)
    edits = {
        key: [before.get(key), after.get(key)]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }
    if edits:
        record.config = ran
    return edits


def _lifecycle_notes(record: RunRecord) -> list[str]:
    """Untrained, reported on val, edited config not run, edits applied by resumes."""
    notes = []
    if not record.trained:
        notes.append(
            _note(
                "<strong>UNTRAINED</strong>: this run has no finished epoch; its weights are "
                "the initial ones and nothing here describes a trained model.",
                warn=True,
            )
        )
    split = record.metrics.get("split")
    if split and split != "test":
        notes.append(_note(f"Metrics reported on: {_e(split_label(split))}", warn=True))
    if record.config_edits:
        changes = "; ".join(
            f"{key}: {_config_value(a)} → {_config_value(b)}"
            for key, (a, b) in record.config_edits.items()
        )
        notes.append(
            _note(
                f"{CONFIG} was edited after the run last trained; these edits have not run "
                f"(shown: the config that ran): {_e(changes)}",
                warn=True,
            )
        )
    applied = [
        f"at epoch {e.get('epoch')}: "
        + ", ".join(
            f"{k} {_config_value(c.get('from'))} → {_config_value(c.get('to'))}"
            for k, c in e["changed"].items()
        )
        for e in read_json(RunLayout(record.path).resume) or []
        if isinstance(e, dict) and isinstance(e.get("changed"), dict) and e["changed"]
    ]
    if applied:
        notes.append(_note(f"Resumed with edited config: {_e('; '.join(applied))}"))
    return notes


def _headline(record: RunRecord, evidence: RunEvidence) -> str:
    """The answer: test accuracy with its interval and the numbers a reader asks next."""
    m, s = record.metrics, record.summary
    ci = evidence.interval
    sub = (
        f"{_interval_text(evidence)} (bootstrap over {ci.images:,} test images)"
        if ci is not None
        else f"no readable {layout.TEST_PREDICTIONS}: no interval"
    )
    cards = [_card("Test accuracy", _pct(_test_accuracy(record)), sub)]
    tta = m.get("tta")
    if isinstance(tta, dict):  # tested with test-time augmentation too (train.tta)
        cards.append(
            _card(f"Test accuracy with TTA ({_e(tta['mode'])})", _pct(tta.get("accuracy")))
        )
    if m.get("top5_accuracy") is not None:  # None with five classes or fewer
        cards.append(_card("Top-5 accuracy", _pct(m["top5_accuracy"])))
    cards.append(_card("F1 macro", _pct(m.get("f1_macro"))))
    best_epoch = f"epoch {_e(s.best_epoch)}" if s.best_epoch is not None else ""
    cards.append(_card("Best val accuracy", _pct(s.best_val_accuracy), best_epoch))
    calibration = evidence.calibration or {}
    shown = calibration.get("test") or calibration.get("val")
    if shown:
        cards.append(
            _card(
                "ECE after calibration",
                f"{shown['ece_calibrated']:.3f}",
                f"before {shown['ece']:.3f}, T = {calibration['temperature']:.3g}",
            )
        )
    model = s.model or flatten_config(record.config).get("model.name", "—")
    facts = (
        f"{_e(model)} · {_e(s.status or 'status unknown')} · {_int(m.get('num_samples'))} test "
        f"images · {len(record.classes) or '—'} classes · {_int(s.params_total)} parameters "
        f"({_int(s.params_trainable)} trainable) · {_seconds(s.wall_time_s)} · "
        f"{_rate(s.train_images_per_s)} train images/s"
    )
    parts = [f'<div class="cards">{"".join(cards)}</div>', _note(facts)]
    if ci is not None and _is_number(m.get("accuracy")) and abs(ci.accuracy - m["accuracy"]) > 1e-9:
        parts.append(
            _note(
                f"The stored test predictions give {_pct(ci.accuracy)}, not {_pct(m['accuracy'])}: "
                "they were made by another checkpoint or on other files.",
                warn=True,
            )
        )
    parts.extend(_lifecycle_notes(record))
    parts.extend(_ledger_notes(evidence))
    if record.missing:
        parts.append(_note(f"Missing: {_e(', '.join(record.missing))}", warn=True))
    return "".join(parts)


def _ledger_notes(evidence: RunEvidence) -> list[str]:
    ledger = evidence.ledger
    if ledger is None:
        return [_note(f"No {layout.LEDGER}: how often the test split was looked at is unknown.")]
    times = "once" if ledger.evaluations == 1 else f"{ledger.evaluations} times"
    notes = []
    if ledger.evaluations > 1:
        notes.append(
            _note(
                f"The test split has been evaluated {times}: a choice made after looking at it "
                "more than once is no longer measured on held-out images.",
                warn=True,
            )
        )
    else:
        notes.append(_note(f"Test split evaluated {times} (the ledger's count)."))
    if ledger.changed:
        shown = ", ".join(ledger.changed[:5]) + (" …" if len(ledger.changed) > 5 else "")
        notes.append(
            _note(
                f"{len(ledger.changed)} test file(s) changed or unreadable since training "
                f"({_e(shown)}): evaluating again would not measure what this run was tested on.",
                warn=True,
            )
        )
    elif ledger.problem:
        notes.append(_note(f"Test files not checked: {_e(ledger.problem)}", warn=True))
    elif ledger.checked:
        notes.append(_note("Test files unchanged since training."))
    return notes


def _confusion(record: RunRecord, figures: Mapping[str, Figure]) -> str:
    if "confusion_matrix.png" not in figures:
        return _note("No test metrics: no confusion matrix or per-class plots.")
    pair = "".join(
        _img(figures[name], alt)
        for name, alt in (
            ("confusion_matrix.png", "confusion matrix (counts)"),
            ("confusion_matrix_normalized.png", "confusion matrix (normalised by true class)"),
        )
    )
    parts = [f'<div class="pair">{pair}</div>']
    for name in (
        "per_class_accuracy_all.png",
        "per_class_accuracy_top_bottom.png",
        "top_confused_pairs.png",
    ):
        if name in figures:
            parts.append(_img(figures[name], name.removesuffix(".png").replace("_", " ")))
    report = record.metrics.get("classification_report")
    if report:
        parts.append(
            f"<details><summary>Classification report</summary><pre>{_e(report)}</pre></details>"
        )
    return "".join(parts)


def _gallery_figure(entry: Mapping[str, Any], folder: Path, caption: str) -> str:
    original = _thumbnail(Path(str(entry.get("file", ""))), "test image")
    overlay = _thumbnail(folder / str(entry.get("overlay", "")), "Grad-CAM overlay")
    probability = entry.get("probability")
    p = f", p = {probability:.2f}" if _is_number(probability) else ""
    return (
        f'<figure><div class="imgs">{original}{overlay}</div>'
        f"<figcaption>{caption}{p}</figcaption></figure>"
    )


def _mistakes(evidence: RunEvidence) -> str:
    gallery, folder = evidence.gallery, evidence.gallery_dir
    if gallery is None or folder is None:
        return _note(
            f"No readable {layout.GALLERY}/: <code>imagefit explain RUN --mistakes</code> makes it."
        )
    total, images = gallery.get("mistakes_total", 0), gallery.get("test_images")
    if not total:
        return _note(f"No mistakes on the {_int(images)} test images.")
    parts = [
        _note(
            f"{_int(total)} of {_int(images)} test images wrong. Each: the image, then the "
            f"Grad-CAM overlay (layer <code>{_e(gallery.get('layer', '?'))}</code>) for the "
            "predicted class."
        ),
        "<h3>Most confident mistakes</h3>",
    ]
    figures = [
        _gallery_figure(
            entry,
            folder,
            f"true <b>{_e(entry.get('true'))}</b> → <b>{_e(entry.get('predicted'))}</b>",
        )
        for entry in gallery.get("mistakes", [])
    ]
    parts.append(f'<div class="gallery">{"".join(figures)}</div>')
    for pair in gallery.get("confused_pairs", []):
        heading = (
            f"{_e(pair.get('true'))} → {_e(pair.get('predicted'))} ({_int(pair.get('count'))}×)"
        )
        figures = [
            _gallery_figure(entry, folder, f"true {_e(entry.get('true'))}")
            for entry in pair.get("examples", [])
        ]
        parts.append(f'<h3>Confused: {heading}</h3><div class="gallery">{"".join(figures)}</div>')
    return "".join(parts)


def _calibration(record: RunRecord, evidence: RunEvidence) -> str:
    from imagefit.evaluate.calibration import reliability_figure

    calibration = evidence.calibration
    if not calibration:
        return _note(
            f"No readable {layout.CALIBRATION}: <code>imagefit calibrate RUN</code> makes it."
        )
    split = "test" if calibration.get("test") else "val"
    shown = calibration[split]
    fitted = calibration.get("fitted_on", {})
    rows = [
        [
            f"<td>{name}</td>",
            f'<td class="num">{shown[before]:.4f}</td>',
            f'<td class="num">{shown[after]:.4f}</td>',
        ]
        for name, before, after in (
            ("ECE (15 bins)", "ece", "ece_calibrated"),
            ("NLL", "nll", "nll_calibrated"),
        )
    ]
    parts = [
        _note(
            f"Temperature T = {calibration['temperature']:.4g}, fitted on the "
            f"{_e(fitted.get('split', 'val'))} split ({_int(fitted.get('images'))} images); "
            f"measured on the {split} split ({_int(shown.get('images'))} images). Dividing the "
            "logits by T never changes the predicted class, so accuracy is the same."
        ),
        _table(["", "before", f"after (T = {calibration['temperature']:.3g})"], rows),
    ]
    try:
        parts.append(_img(reliability_figure(shown, f"reliability on {split}"), "reliability"))
    except (KeyError, TypeError, ValueError) as exc:  # an older file without the bins
        png = RunLayout(record.path).plots / "reliability.png"
        if png.is_file():
            uri = _data_uri(png.read_bytes(), "image/png")
            parts.append(f'<img alt="reliability" src="{uri}">')
        else:
            log.warning("%s: no reliability diagram (%s)", record.path, exc)
    return "".join(parts)


def _config(record: RunRecord) -> str:
    if not record.config:
        return _note(f"No {CONFIG} found.", warn=True)
    changed = changed_from_defaults(record.config)
    rows = [
        [
            f"<td><code>{_e(key)}</code></td>",
            f"<td><code>{_e(_config_value(value))}</code></td>",
            f"<td><code>{_e(_config_value(default))}</code></td>",
        ]
        for key, (default, value) in changed.items()
    ]
    table = (
        _table(["Key", "This run", "Default"], rows)
        if rows
        else _note("Every key has its default value.")
    )
    everything = flatten_config(record.config)
    full = _table(
        ["Key", "Value"],
        [
            [f"<td><code>{_e(k)}</code></td>", f"<td><code>{_e(_config_value(v))}</code></td>"]
            for k, v in everything.items()
        ],
    )
    return (
        _note(f"{len(changed)} of {len(everything)} keys differ from the defaults.")
        + table
        + f"<details><summary>The whole config ({len(everything)} keys)</summary>{full}</details>"
    )


def _multilabel_section(record: RunRecord, figures: Mapping[str, Figure]) -> str:
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
    for filename in ("per_class_ap.png", "precision_recall.png"):
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


def _classes_section(record: RunRecord, figures: Mapping[str, Figure]) -> str:
    """The confusion matrix; a multi-label run has none (its classes overlap): its per-class
    AP, PR curves and thresholds instead."""
    if record.metrics.get("task") == "multilabel":
        return _section("multilabel", "Per-class results", _multilabel_section(record, figures))
    return _section("confusion", "Confusion matrix", _confusion(record, figures))


def _single_run_body(record: RunRecord, name: str, out: Path) -> list[str]:
    evidence = read_evidence(record.path)
    figures = plots.run_figures(record)
    curves = (
        _img(figures["training_curves.png"], "training curves")
        if "training_curves.png" in figures
        else _note("No history found.")
    )
    return [
        _section(
            "headline",
            "Result",
            _note(f'Run folder: <a href="{_e(_link(record.path, out))}">{_e(name)}</a>')
            + _headline(record, evidence),
        ),
        _section("curves", "Learning curves", curves),
        _classes_section(record, figures),
        _section("mistakes", "Mistakes", _mistakes(evidence)),
        _section("calibration", "Calibration", _calibration(record, evidence)),
        _section("config", "Configuration", _config(record)),
    ]


# --------------------------------------------------------------------------- several runs


def _comparison_table(
    records: Sequence[RunRecord],
    names: Sequence[str],
    evidence: Sequence[RunEvidence],
    out: Path,
) -> str:
    tests = [_test_accuracy(r) for r in records]
    top = max((t for t in tests if t is not None and _is_number(t)), default=None)
    top5 = any(r.metrics.get("top5_accuracy") is not None for r in records)
    header = [
        "Run",
        "Model",
        "Status",
        "Test accuracy",
        "95% interval",
        *(["Top-5"] if top5 else []),
        "F1 macro",
        "Best val accuracy (epoch)",
        "Test evaluations",
        "Params trainable",
        "Wall time",
    ]
    number = '<td class="num">{}</td>'.format
    rows = []
    for record, name, test, ev in zip(records, names, tests, evidence, strict=True):
        m, s = record.metrics, record.summary
        best_val = _pct(s.best_val_accuracy)
        if s.best_epoch is not None:
            best_val += f" ({_e(s.best_epoch)})"
        model = s.model or flatten_config(record.config).get("model.name", "—")
        best = top is not None and test == top
        uses = ev.ledger.evaluations if ev.ledger is not None else None
        rows.append(
            [
                f'<td><a href="{_e(_link(record.path, out))}">{_e(name)}</a></td>',
                f"<td>{_e(model)}</td>",
                f"<td>{_e(s.status or '—')}</td>",
                f'<td class="num{" best" if best else ""}">{_pct(test)}{_tta(m)}</td>',
                number(
                    f"{_pct(ev.interval.low)} – {_pct(ev.interval.high)}" if ev.interval else "—"
                ),
                *([number(_pct(m.get("top5_accuracy")))] if top5 else []),
                number(_pct(m.get("f1_macro"))),
                number(best_val),
                number(_int(uses) + (" ⚠" if uses is not None and uses > 1 else "")),
                number(_int(s.params_trainable)),
                number(_seconds(s.wall_time_s)),
            ]
        )
    return _table(header, rows)


def _vs_baseline_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``vs_baseline.json``'s rows: each variant's difference to the baseline, its paired
    bootstrap interval, and the verdict at 95%."""
    base = rows[0].get("baseline", "the baseline") if rows else "the baseline"
    body = []
    for r in rows:
        if "interval" not in r:
            cells = ["—", "—", "baseline"]
        else:
            low, high = r["interval"]
            cells = [
                _signed_pct(r["difference"]),
                f"{_signed_pct(low)} … {_signed_pct(high)}",
                f"<b>{verdict(r)}</b>" if r.get("beats_baseline") else verdict(r),
            ]
        body.append(
            [f"<td>{_e(r.get('name'))}</td>", f'<td class="num">{_int(r.get("seeds"))}</td>']
            + [f'<td class="num">{_pct(r.get("accuracy"))}</td>']
            + [f'<td class="num">{c}</td>' for c in cells[:2]]
            + [f"<td>{cells[2]}</td>"]
        )
    header = [
        "Variant",
        "Seeds",
        "Mean test accuracy",
        f"Difference to {_e(base)}",
        "95% interval",
        "Verdict",
    ]
    return _note(
        "Paired bootstrap over the shared test images and each variant's seeds "
        f"({layout.VS_BASELINE})."
    ) + _table(header, body)


def _find_sweep(run_dirs: Sequence[Path]) -> Path | None:
    """The sweep folder of ``run_dirs`` (``<sweep>/runs/<trial>``) when it has a
    ``vs_baseline.json``."""
    parents = {Path(d).resolve().parent.parent for d in run_dirs}
    if len(parents) != 1:
        return None
    sweep = parents.pop()
    return sweep if (sweep / layout.VS_BASELINE).is_file() else None


def _run_summary(record: RunRecord, name: str, evidence: RunEvidence, out: Path) -> str:
    """One run inside a comparison: its headline, matrix and per-class panels."""
    figures = plots.run_figures(record)
    parts = [
        f'<h3>Run <a href="{_e(_link(record.path, out))}">{_e(name)}</a></h3>',
        _headline(record, evidence),
    ]
    # Counts read best when they fit in the cells; with many classes the row fractions do.
    few = len(record.classes) <= plots.ANNOTATE_MAX
    matrix = "confusion_matrix.png" if few else "confusion_matrix_normalized.png"
    if matrix not in figures:
        parts.append(_note("No test metrics: no confusion matrix or per-class plots."))
    for filename in (
        matrix,
        "per_class_accuracy_all.png",
        "per_class_accuracy_top_bottom.png",
        "top_confused_pairs.png",
    ):
        if filename in figures:
            parts.append(_img(figures[filename], filename.removesuffix(".png").replace("_", " ")))
    return f'<div class="run">{"".join(parts)}</div>'


def _comparison_body(
    records: Sequence[RunRecord], names: Sequence[str], out: Path, sweep: Path | None
) -> list[str]:
    evidence = [read_evidence(r.path) for r in records]
    body = [
        _section("headline", "Results", _comparison_table(records, names, evidence, out)),
    ]
    rows = read_vs_baseline(sweep) if sweep is not None else None
    if rows:
        body.append(_section("baseline", "Against the baseline", _vs_baseline_table(rows)))
    figures = plots.comparison_figures(records)
    body.append(
        _section(
            "curves",
            "Learning curves and test accuracy",
            "".join(
                _img(fig, name.removesuffix(".png").replace("_", " "))
                for name, fig in figures.items()
            ),
        )
    )
    body.append(
        _section(
            "runs",
            "Each run",
            "".join(
                _run_summary(r, n, e, out) for r, n, e in zip(records, names, evidence, strict=True)
            ),
        )
    )
    body.append(
        _section("config", "Configuration differences", _config_differences(records, names))
    )
    return body


def _config_differences(records: Sequence[RunRecord], names: Sequence[str]) -> str:
    with_config = [(r, n) for r, n in zip(records, names, strict=True) if r.config]
    if not with_config:
        return _note(f"No {CONFIG} found.")
    lacking = [n for r, n in zip(records, names, strict=True) if not r.config]
    note = _note(f"No {CONFIG} in: {_e(', '.join(lacking))}", warn=True) if lacking else ""
    diff = config_differences([r.config for r, _ in with_config])
    if not diff:
        return note + _note("The configs are identical.")
    header = ["Key"] + [_e(n) for _, n in with_config]
    rows = [
        [f"<td><code>{_e(key)}</code></td>"]
        + [f"<td><code>{_e(_config_value(v))}</code></td>" for v in values]
        for key, values in diff.items()
    ]
    return note + _table(header, rows)


# --------------------------------------------------------------------------- entry point


def write_report(
    run_dirs: Sequence[Path],
    out: Path,
    title: str | None = None,
    sweep_dir: Path | None = None,
    allow_untrained: bool = False,
) -> Path:
    """Write one self-contained HTML page about ``run_dirs`` to ``out`` and return ``out``.

    One run: the result with its interval, learning curves, confusion matrices, the mistakes
    gallery, calibration, then the config keys that differ from the defaults. Several: a
    results table with intervals, the variants against the baseline when ``sweep_dir`` (by
    default the runs' sweep folder, when they share one) has ``vs_baseline.json``, overlaid
    curves, each run's panels and the config keys that differ between runs.
    """
    if not run_dirs:
        raise ValueError("write_report needs at least one run folder")
    out = Path(out)
    records = [load_run(Path(d)) for d in run_dirs]
    for record in records:  # a run with no finished epoch: refused, or labelled
        require_trained(record.path, record.finished_epochs, allow_untrained)
        record.config_edits = unapplied_edits(record)
    for record in records:
        if record.missing:
            log.warning("%s: missing %s", record.path, ", ".join(record.missing))
    names = plots.unique_names(records)
    if len(records) == 1:
        title = title or f"imagefit run {names[0]}"
        body = _single_run_body(records[0], names[0], out)
    else:
        title = title or f"imagefit: {len(records)} runs compared"
        sweep = sweep_dir if sweep_dir is not None else _find_sweep(run_dirs)
        body = _comparison_body(records, names, out, sweep)
    page = PAGE.substitute(
        title=_e(title),
        meta=_e(
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(records)} run folder(s)"
        ),
        body="\n".join(body),
    )
    make_dirs(out.parent)
    atomic_write(out, page, what="the report")
    return out
