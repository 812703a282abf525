"""The HTML report: content, escaping, config differences, and that a real browser renders it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from imagefit.evaluate.metrics import compute_metrics
from imagefit.evaluate.report import config_differences, flatten_config, write_report

from helpers.runs import write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected by the test only (the report itself carries no script). HOOK goes first in <head>,
# before anything else can fail: it records script errors, failed resource loads (capture phase),
# unhandled promise rejections and console.error/console.warn calls as a JSON list on <html>.
HOOK = """<script>
(() => {
  const errors = [];
  const root = document.documentElement;
  const note = (kind, text) => {
    errors.push(kind + ": " + String(text));
    root.setAttribute("data-errors", JSON.stringify(errors));
  };
  root.setAttribute("data-errors", "[]");
  window.addEventListener("error", e => {
    const source = e.target && e.target !== window && (e.target.src || e.target.href);
    note(source ? "resource" : "error", source || e.message);
  }, true);
  window.addEventListener("unhandledrejection", e => note("rejection", e.reason));
  for (const level of ["error", "warn"]) {
    const original = console[level].bind(console);
    console[level] = (...args) => { note("console." + level, args.join(" ")); original(...args); };
  }
})();
</script>"""
# PROBE goes last in <body>: marks it once every image has decoded.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});
</script>"""
# With --enable-logging=stderr Chromium logs every console message as `INFO:CONSOLE(...)`;
# an uncaught exception or rejection reads "Uncaught ...": a second witness beside HOOK.
UNCAUGHT = re.compile(r'CONSOLE[^\n]*"Uncaught[^\n]*')


def render(page: Path, tmp_path: Path) -> tuple[str, list[str], list[str]]:
    """(dumped DOM, errors HOOK recorded, Uncaught lines on stderr) of ``page`` with the hooks
    injected, rendered by headless Chromium."""
    assert CHROMIUM is not None
    html_text = page.read_text(encoding="utf-8")
    assert html_text.count("<head>") == 1 and html_text.count("</body>") == 1
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(
        html_text.replace("<head>", "<head>" + HOOK).replace("</body>", PROBE + "</body>"),
        encoding="utf-8",
    )
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB: renderers crash on big pages
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    found = re.search(r'<html[^>]*\sdata-errors="([^"]*)"', dom)
    assert found, f"the error hook did not run: {dom[:500]}"
    return dom, json.loads(html.unescape(found.group(1))), UNCAUGHT.findall(result.stderr)


def test_flatten_and_config_differences() -> None:
    a = {
        "model": {"name": "resnet18", "head": {"dropout": 0.1}},
        "optim": {"lr": 0.1},
        "tags": [1, 2],
    }
    b = {
        "model": {"name": "resnet50", "head": {"dropout": 0.1}},
        "optim": {"lr": 0.1},
        "extra": None,
    }
    assert flatten_config(a) == {
        "model.name": "resnet18",
        "model.head.dropout": 0.1,
        "optim.lr": 0.1,
        "tags": [1, 2],
    }
    diff = config_differences([a, b])
    assert list(diff) == ["model.name", "tags", "extra"]  # absent counts as different
    assert diff["model.name"] == ["resnet18", "resnet50"]
    assert config_differences([a, a]) == {}
    assert config_differences([a]) == {k: [v] for k, v in flatten_config(a).items()}  # all keys


def test_single_run_report(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "resnet18-a")
    out = write_report([run], tmp_path / "reports" / "one.html")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
    assert "<table>" in page and f"{100 * accuracy:.2f} %" in page
    for key in ("model.name", "optim.lr", "data.image_size", "data.root"):  # whole config
        assert key in page
    assert "11,689,512" in page and "1 h 02 min" in page and "812.5" in page
    assert 'href="../runs/resnet18-a/"' in page  # relative link to the run folder
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)
    assert len(images) == 5  # curves, confusion matrix, per-class all, top/bottom, confused pairs
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<link" not in page


def test_comparison_shows_only_differing_config_keys(tmp_path: Path) -> None:
    files = {"config.yaml", "summary.json"}  # no plots needed here
    runs = [
        write_run(tmp_path / "a", lr=0.001, files=files),
        write_run(tmp_path / "b", lr=0.01, model="vit", files=files),
    ]
    page = write_report(runs, tmp_path / "cmp.html", title="LR study").read_text(encoding="utf-8")
    assert "<title>LR study</title>" in page and "Configuration differences" in page
    assert "optim.lr" in page and "model.name" in page
    assert "data.image_size" not in page and "optim.name" not in page
    assert page.count("<tr>") == (1 + 2) + (1 + 2)  # header + 2 runs, header + 2 keys
    assert 'href="a/"' in page and 'href="b/"' in page


def test_text_is_escaped(tmp_path: Path) -> None:
    run = write_run(tmp_path / "x", files={"summary.json"})
    metrics = compute_metrics(np.array([0, 1]), np.eye(2), ["<b>bold</b>", "b"])
    (run / "metrics.json").write_text(json.dumps(metrics))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "name": "<i>evil</i>"}))
    config = {"model": {"name": "<script>alert(1)</script>"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page = write_report([run], tmp_path / "r.html", title="a & <b>").read_text(encoding="utf-8")
    assert "<script>" not in page and "<i>evil</i>" not in page and "<b>bold" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page  # in the classification report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;evil&lt;/i&gt;" in page
    assert "<title>a &amp; &lt;b&gt;</title>" in page


def test_missing_files_still_give_a_page(tmp_path: Path) -> None:
    run = write_run(tmp_path / "crashed", files={"config.yaml"})
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Missing: history.json, metrics.json, summary.json" in page
    assert "No history found" in page and "—" in page
    with pytest.raises(ValueError):
        write_report([], tmp_path / "none.html")


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')"
)
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=0.01, num_classes=30)]
    out = write_report(runs, tmp_path / "report.html")
    images = out.read_text(encoding="utf-8").count("<img ")
    dom, errors, uncaught = render(out, tmp_path)
    assert errors == [] and uncaught == [], (errors, uncaught)
    assert f'data-images="{images}/{images}"' in dom, dom[:500]
    assert "<table>" in dom and "Configuration differences" in dom
    assert images == 2 + 2 * 5  # comparison, and per run: curves, matrix, 3 per-class


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')"
)
def test_chromium_check_catches_console_and_script_errors(tmp_path: Path) -> None:
    """The check above is only as good as its hooks: a broken page must trip each of them."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body><p>x</p>"
        '<script>console.error("logged", 42); null.field;</script>'
        '<script>Promise.reject(new Error("refused"));</script>'
        '<img alt="gone" src="missing.png"></body></html>',
        encoding="utf-8",
    )
    dom, errors, uncaught = render(page, tmp_path)
    assert "console.error: logged 42" in errors
    assert any(e.startswith("error: Uncaught TypeError") for e in errors), errors
    assert any(e.startswith("rejection: Error: refused") for e in errors), errors
    assert any(e.startswith("resource: ") and e.endswith("missing.png") for e in errors), errors
    assert any("TypeError" in line for line in uncaught) and any(
        "refused" in line for line in uncaught
    )
    assert 'data-images="0/1"' in dom
