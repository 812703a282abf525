"""Comparing runs honestly: intervals, paired tests and the images whose prediction flipped.

Two accuracies on the same test images are not independent: the images that both runs get
right (or wrong) say nothing about which run is better. :func:`compare_runs` therefore pairs
the runs image by image: a bootstrap 95% interval for each accuracy and for their difference
(resampling images, both runs together), McNemar's test on the discordant images (exact
binomial when there are fewer than 25 of them, else chi-squared with continuity correction,
statsmodels' ``mcnemar``), per-class deltas and the list of flipped images. Runs tested on
different files are refused: their accuracies would not measure the same thing.

:func:`variants_vs_baseline` does the same for sweep variants over seeds: a paired bootstrap
(images resampled jointly, seeds within each variant) of each variant's mean accuracy minus
the baseline's, and whether the interval excludes zero.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.data.splits import SplitManifest
from imagefit.errors import DataError
from imagefit.evaluate.ledger import note_test_use, read_ledger
from imagefit.evaluate.predictions import SplitPredictions, run_test_predictions
from imagefit.fileio import atomic_write, make_dirs
from imagefit.models.trained import resolve_checkpoint
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)

LEVEL = 0.95
RESAMPLES = 10_000
EXACT_BELOW = 25  # discordant pairs under which McNemar's test uses the exact binomial
THUMB = 96  # px, longer side of the thumbnails on the diff page


# --------------------------------------------------------------------------- statistics


def bootstrap_interval(
    values: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), resampling entries.

    The percentile method rather than BCa: with every image right (or wrong) BCa is undefined,
    and at test-set sizes the two agree closely.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise DataError("no images to bootstrap")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=1000,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_test(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's test of paired correctness vectors: exact binomial with < 25 discordant
    pairs, else chi-squared with continuity correction."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    discordant = int(table[0, 1] + table[1, 0])
    exact = discordant < EXACT_BELOW
    result = mcnemar(table, exact=exact, correction=True)
    return {
        "table": table.tolist(),  # rows: A right/wrong; columns: B right/wrong
        "only_a_right": int(table[0, 1]),
        "only_b_right": int(table[1, 0]),
        "discordant": discordant,
        "method": "exact binomial" if exact else "chi-squared, continuity corrected",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue) if discordant else 1.0,
    }


# --------------------------------------------------------------------------- two runs


def same_test_split(run_a: Path, run_b: Path) -> None:
    """Raise DataError unless both runs were tested on the same files with the same labels."""
    manifests = []
    for run in (run_a, run_b):
        path = RunLayout(run).split
        if not path.is_file():
            raise DataError(f"{run}: no {layout.SPLIT}; cannot tell which images it was tested on")
        manifests.append(SplitManifest.load(path))
    a, b = manifests
    if a.classes != b.classes:
        raise DataError(f"{run_a} and {run_b} have different classes: {a.classes} vs {b.classes}")

    def files(m: SplitManifest) -> set[tuple[str, int]]:
        return {(p.relative_to(m.root).as_posix(), label) for p, label in m.splits.get("test", [])}

    fa, fb = files(a), files(b)
    if not fa:
        raise DataError(f"{run_a}: its {layout.SPLIT} has no test split")
    if fa != fb:
        raise DataError(
            f"{run_a} and {run_b} were tested on different test splits ({len(fa - fb)} files "
            f"only in the first, {len(fb - fa)} only in the second): compare runs that share "
            "one split (data.split_manifest, or the same data.split_seed and fractions)"
        )
    hashes = [read_ledger(run).get("split_sha256", {}).get("test") for run in (run_a, run_b)]
    if all(hashes) and hashes[0] != hashes[1]:
        differ = sorted(k for k in hashes[0] if hashes[0][k] != hashes[1].get(k))
        raise DataError(
            f"{run_a} and {run_b} list the same test files, but {len(differ)} of them had other "
            f"content when each run trained (e.g. {differ[0]})"
        )


def _aligned(a: SplitPredictions, b: SplitPredictions) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Paths both runs predicted (a file one run could not decode is left out of both)."""
    index_b = {p: i for i, p in enumerate(b.paths)}
    common = [p for p in a.paths if p in index_b]
    if len(common) < max(len(a.paths), len(b.paths)):
        log.warning(
            "compared on the %d test images both runs could read (%d and %d)",
            len(common),
            len(a.paths),
            len(b.paths),
        )
    index_a = {p: i for i, p in enumerate(a.paths)}
    return (
        common,
        np.array([index_a[p] for p in common], dtype=np.int64),
        np.array([index_b[p] for p in common], dtype=np.int64),
    )


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Paired comparison of two runs on their shared test split (see the module docstring)."""
    dirs = [resolve_checkpoint(r).parent for r in (run_a, run_b)]
    same_test_split(*dirs)
    preds = [run_test_predictions(d) for d in dirs]
    for d in dirs:
        note_test_use(d, "diff")
    paths, ia, ib = _aligned(*preds)
    labels = preds[0].labels[ia]
    pred_a, pred_b = preds[0].predicted[ia], preds[1].predicted[ib]
    prob_a, prob_b = preds[0].probabilities()[ia], preds[1].probabilities()[ib]
    right_a, right_b = pred_a == labels, pred_b == labels
    classes = preds[0].classes
    per_class = []
    for k, name in enumerate(classes):
        members = labels == k
        n = int(members.sum())
        acc_a = float(right_a[members].mean()) if n else None
        acc_b = float(right_b[members].mean()) if n else None
        per_class.append(
            {
                "class": name,
                "support": n,
                "accuracy_a": acc_a,
                "accuracy_b": acc_b,
                "delta": None if acc_a is None or acc_b is None else acc_b - acc_a,
            }
        )
    flipped = [
        {
            "path": paths[i],
            "file": str(preds[0].file(int(ia[i]))),
            "label": classes[labels[i]],
            "pred_a": classes[pred_a[i]],
            "prob_a": float(prob_a[i, pred_a[i]]),
            "pred_b": classes[pred_b[i]],
            "prob_b": float(prob_b[i, pred_b[i]]),
            "change": "fixed" if right_b[i] else "broken",
        }
        for i in np.flatnonzero(right_a != right_b)
    ]
    return {
        "run_a": str(dirs[0]),
        "run_b": str(dirs[1]),
        "images": len(paths),
        "level": LEVEL,
        "accuracy_a": float(right_a.mean()),
        "accuracy_a_interval": bootstrap_interval(right_a),
        "accuracy_b": float(right_b.mean()),
        "accuracy_b_interval": bootstrap_interval(right_b),
        "difference": float(right_b.mean() - right_a.mean()),
        "difference_interval": bootstrap_interval(right_b.astype(float) - right_a),
        "mcnemar": mcnemar_test(right_a, right_b),
        "per_class": per_class,
        "flipped": flipped,
    }


# --------------------------------------------------------------------------- sweeps


def variants_vs_baseline(
    correct: Mapping[str, Sequence[np.ndarray]],
    baseline: str | None = None,
    resamples: int = 4000,
    level: float = LEVEL,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each variant (name -> one correctness vector (N,) per seed, all over the same test
    images in the same order): mean accuracy, the paired-bootstrap interval of its difference
    to ``baseline`` (default: the first variant) and whether that interval excludes zero.

    Each replicate draws the test images once for all variants (the pairing that removes the
    images' shared difficulty) and the seeds of each variant with replacement (the
    seed-to-seed spread); one seed per variant leaves only the image resampling.
    """
    names = list(correct)
    if not names:
        return []
    base = baseline if baseline is not None else names[0]
    if base not in correct:
        raise DataError(f"baseline '{base}' is not one of the variants {names}")
    matrices = {k: np.asarray(v, dtype=np.float64).reshape(len(v), -1) for k, v in correct.items()}
    n = {m.shape[1] for m in matrices.values()}
    if len(n) != 1:
        raise DataError(f"variants were tested on different numbers of images: {sorted(n)}")
    images = n.pop()
    rng = np.random.default_rng(seed)
    # (R, N) image counts per replicate, shared by every variant: the pairing.
    image_weights = rng.multinomial(images, np.full(images, 1 / images), size=resamples)
    boot: dict[str, np.ndarray] = {}
    for name, m in matrices.items():
        seeds = m.shape[0]
        seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
        per_seed = m @ image_weights.T  # (S, R): right answers per seed per replicate
        boot[name] = np.sum(seed_weights * per_seed.T, axis=1) / (seeds * images)
    alpha = (1 - level) / 2
    rows = []
    for name in names:
        m = matrices[name]
        row: dict[str, Any] = {
            "name": name,
            "seeds": m.shape[0],
            "accuracy": float(m.mean()),
            "baseline": base,
        }
        if name != base:
            diff = boot[name] - boot[base]
            low, high = np.quantile(diff, [alpha, 1 - alpha])
            row.update(
                difference=float(m.mean() - matrices[base].mean()),
                interval=(float(low), float(high)),
                beats_baseline=bool(low > 0),
                worse_than_baseline=bool(high < 0),
            )
        rows.append(row)
    return rows


def sweep_vs_baseline(
    sweep_dir: str | Path,
    baseline: str | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """:func:`variants_vs_baseline` over a sweep folder's finished trials (``records``, default
    those of ``all_results.json``), seeds grouped by trial group; each run's test predictions
    are read, or computed and saved."""
    sweep_dir = Path(sweep_dir)
    if records is None:
        try:
            doc = json.loads((sweep_dir / "all_results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{sweep_dir}: no readable all_results.json ({exc})") from None
        records = doc.get("trials", [])
    correct: dict[str, list[np.ndarray]] = {}
    order: list[str] | None = None
    for record in records:
        if record.get("status") != "finished":
            continue
        preds = run_test_predictions(sweep_dir / record["run_dir"])
        keyed = dict(zip(preds.paths, preds.correct, strict=True))
        order = order or sorted(keyed)
        if sorted(keyed) != order:
            raise DataError(f"{record['run_dir']}: tested on other images than the first trial")
        correct.setdefault(record["group"], []).append(np.array([keyed[p] for p in order]))
    return variants_vs_baseline(correct, baseline)


def verdict(row: Mapping[str, Any]) -> str:
    """What a variant's paired 95% interval against the baseline says, in words."""
    if row.get("beats_baseline"):
        return "beats baseline at 95%"
    if row.get("worse_than_baseline"):
        return "worse than baseline at 95%"
    return "no clear difference at 95%"


def vs_baseline_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`variants_vs_baseline`'s rows."""
    if not rows:
        return ""
    base = rows[0]["baseline"]
    lines = [
        f"| variant | seeds | test accuracy | difference to {base} | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "interval" not in r:
            cells = ["-", "-", "baseline"]
        else:
            low, high = r["interval"]
            cells = [
                f"{100 * r['difference']:+.2f}%",
                f"[{100 * low:+.2f}%, {100 * high:+.2f}%]",
                verdict(r),
            ]
        lines.append(
            f"| {r['name']} | {r['seeds']} | {100 * r['accuracy']:.2f}% | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the diff page


def _thumbnail(path: str) -> str:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            thumb = opened.convert("RGB")
        thumb.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        thumb.save(buffer, "JPEG", quality=80)
    except OSError:
        return "<span>(unreadable)</span>"
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="">'


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _interval(pair: Sequence[float]) -> str:
    return f"[{100 * pair[0]:.2f}%, {100 * pair[1]:.2f}%]"


def write_diff_page(result: dict[str, Any], out: str | Path) -> Path:
    """A self-contained HTML page of :func:`compare_runs`' result (thumbnails inlined)."""
    e = html.escape
    m = result["mcnemar"]
    rows = [
        ("A", result["run_a"], result["accuracy_a"], result["accuracy_a_interval"]),
        ("B", result["run_b"], result["accuracy_b"], result["accuracy_b_interval"]),
    ]
    summary = "".join(
        f"<tr><td>{k}</td><td>{e(r)}</td><td>{_pct(a)}</td><td>{_interval(ci)}</td></tr>"
        for k, r, a, ci in rows
    )
    classes = "".join(
        f"<tr><td>{e(c['class'])}</td><td>{c['support']}</td><td>{_pct(c['accuracy_a'])}</td>"
        f"<td>{_pct(c['accuracy_b'])}</td><td>{_pct(c['delta'])}</td></tr>"
        for c in result["per_class"]
    )
    flips = "".join(
        f"<tr><td>{_thumbnail(f['file'])}</td><td>{e(f['path'])}</td><td>{e(f['label'])}</td>"
        f"<td>{e(f['pred_a'])} ({f['prob_a']:.2f})</td><td>{e(f['pred_b'])} ({f['prob_b']:.2f})"
        f"</td><td>{f['change']}</td></tr>"
        for f in result["flipped"]
    )
    verdict = (
        "the difference is significant at 5%"
        if m["p_value"] < 0.05
        else "the difference is not significant at 5%"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>imagefit diff</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>A vs B on the same {result["images"]} test images</h1>
<table><tr><th>run</th><th>folder</th><th>accuracy</th><th>95% bootstrap interval</th></tr>
{summary}</table>
<p>Difference B - A: {_pct(result["difference"])}, 95% paired bootstrap interval
{_interval(result["difference_interval"])}.</p>
<p>McNemar's test ({e(m["method"])}): only A right {m["only_a_right"]}, only B right
{m["only_b_right"]}, p = {m["p_value"]:.4g}: {verdict}.</p>
<h2>Per class</h2>
<table><tr><th>class</th><th>images</th><th>A</th><th>B</th><th>B - A</th></tr>{classes}</table>
<h2>Flipped predictions ({len(result["flipped"])})</h2>
<table><tr><th></th><th>file</th><th>label</th><th>A</th><th>B</th><th>change</th></tr>
{flips}</table></body></html>
"""
    out = Path(out)
    make_dirs(out.parent)
    atomic_write(out, page, what="the diff page")
    return out
