"""The HTML report: content, escaping, config differences, and that a real browser renders it."""

from __future__ import annotations

import html
import json
import re
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from imagefit.evaluate.metrics import compute_metrics
from imagefit.evaluate.report import config_differences, flatten_config, write_report

from conftest import tiny_config, write_photo_folder
from helpers.runs import write_evidence, write_run

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
# PROBE goes last in <body>: once every image has decoded, it posts to the frame around the
# page what the page saw: the errors HOOK recorded, how many images decoded, the viewport's
# width and how far the page is wider than it (horizontal overflow: a sideways scroll).
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const root = document.documentElement;
  parent.postMessage({
    errors: JSON.parse(root.getAttribute("data-errors")),
    images: imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length,
    viewport: window.innerWidth,
    overflow: root.scrollWidth - root.clientWidth,
  }, "*");
});
</script>"""
# The page is shown in a frame of the width under test: headless Chromium's window is never
# narrower than 500 px, so a phone's 390 px viewport can only be had inside a frame. The frame
# page writes the probe's message onto its own <html> for --dump-dom to show.
FRAME = string.Template("""<!DOCTYPE html><html><head><meta charset="utf-8"></head>
<body style="margin:0"><iframe src="$src" style="border:0;width:${width}px;height:900px">
</iframe><script>
window.addEventListener("message", e => {
  document.documentElement.setAttribute("data-probe", JSON.stringify(e.data));
});
</script></body></html>""")
DESKTOP, PHONE = 1280, 390  # px
# With --enable-logging=stderr Chromium logs every console message as `INFO:CONSOLE(...)`;
# an uncaught exception or rejection reads "Uncaught ...": a second witness beside HOOK.
UNCAUGHT = re.compile(r'CONSOLE[^\n]*"Uncaught[^\n]*')


def render(page: Path, tmp_path: Path, width: int = DESKTOP) -> tuple[dict[str, Any], list[str]]:
    """(what the probe saw: errors, images, viewport, overflow; Uncaught lines on stderr) of
    ``page`` with the hooks injected, rendered by headless Chromium ``width`` px wide."""
    assert CHROMIUM is not None
    html_text = page.read_text(encoding="utf-8")
    assert html_text.count("<head>") == 1 and html_text.count("</body>") == 1
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(
        html_text.replace("<head>", "<head>" + HOOK).replace("</body>", PROBE + "</body>"),
        encoding="utf-8",
    )
    frame = page.with_name(f"frame-{width}-{page.name}")
    frame.write_text(FRAME.substitute(src=probe.name, width=width), encoding="utf-8")
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
        f"--window-size={max(width, 500) + 100},1000",
        "--virtual-time-budget=10000",
        "--dump-dom",
        frame.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<html[^>]*\sdata-probe="([^"]*)"', result.stdout)
    assert found, f"the probe did not report: {result.stdout[:500]}"
    return json.loads(html.unescape(found.group(1))), UNCAUGHT.findall(result.stderr)


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


SINGLE_ORDER = ["headline", "curves", "confusion", "mistakes", "calibration", "config"]
IMAGE = re.compile(r'<img alt="([^"]*)" src="data:image/(?:png|jpeg);base64,')


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)">', page)


def section(page: str, key: str) -> str:
    start = page.index(f'<section id="{key}">')
    return page[start : page.index("</section>", start)]


def test_single_run_report(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "resnet18-a")
    out = write_report([run], tmp_path / "reports" / "one.html")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert sections(page) == SINGLE_ORDER
    accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
    assert f"{100 * accuracy:.2f} %" in section(page, "headline")
    assert "11,689,512" in page and "1 h 02 min" in page and "812.5" in page
    assert 'href="../runs/resnet18-a/"' in page  # relative link to the run folder
    alts = IMAGE.findall(page)
    assert alts == [
        "training curves",
        "confusion matrix (counts)",
        "confusion matrix (normalised by true class)",
        "per class accuracy all",
        "top confused pairs",
    ]  # 10 classes: no best/worst 10 panel
    # Without the post-run files each section says what is missing and how to make it.
    assert "no readable test_predictions.npz: no interval" in section(page, "headline")
    assert "imagefit explain RUN --mistakes" in section(page, "mistakes")
    assert "imagefit calibrate RUN" in section(page, "calibration")
    assert not re.search(r'(src|href)="(https?:|//)', page) and "<link" not in page


def test_config_shows_the_keys_that_differ_from_the_defaults(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", lr=0.02)  # model resnet18, optim adamw: the defaults
    config = section(write_report([run], tmp_path / "r.html").read_text(), "config")
    table, folded = config.split("<details>")
    for key in ("optim.lr", "data.image_size", "data.root", "model.pretrained"):
        assert f"<code>{key}</code>" in table
    assert "<code>model.name</code>" not in table and "<code>optim.name</code>" not in table
    assert "<code>0.02</code>" in table and "<code>0.001</code>" in table  # value and default
    for key in ("model.name", "optim.name", "optim.lr"):  # the whole tree, folded away
        assert f"<code>{key}</code>" in folded
    assert "4 of 6 keys differ from the defaults" in config


def test_the_answer_comes_first_with_its_interval_and_evidence(
    tmp_path: Path, photo_root: Path
) -> None:
    run = write_evidence(write_run(tmp_path / "run"), photo_root, test_evaluations=3)
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert sections(page) == SINGLE_ORDER
    headline = section(page, "headline")
    low_high = re.search(r"95% CI (\d+\.\d)–(\d+\.\d) %", headline)
    accuracy = 100 * json.loads((run / "metrics.json").read_text())["accuracy"]
    assert low_high and float(low_high[1]) < accuracy < float(low_high[2]), headline
    assert "bootstrap over 60 test images" in headline
    assert "evaluated 3 times" in headline and "warn" in headline
    assert "ECE after calibration" in headline and "T = 1.7" in headline
    mistakes = section(page, "mistakes")
    assert mistakes.count("<figure>") == 6 + 2  # confident mistakes + confused-pair examples
    assert mistakes.count('alt="test image"') == 8 and mistakes.count('alt="Grad-CAM overlay"') == 8
    assert "p = 0.90" in mistakes and "layer4" in mistakes
    calibration = section(page, "calibration")
    assert "ECE (15 bins)" in calibration and "NLL" in calibration
    assert 'alt="reliability"' in calibration and "T = 1.7" in calibration
    # Data URIs only: the page opens anywhere, the photos need not be there any more.
    assert 'src="data:' in mistakes and str(photo_root) not in mistakes


def test_a_gallery_photo_that_moved_leaves_a_note(tmp_path: Path, photo_root: Path) -> None:
    run = write_evidence(write_run(tmp_path / "run"), photo_root)
    shutil.rmtree(photo_root)
    mistakes = section(write_report([run], tmp_path / "r.html").read_text(), "mistakes")
    assert "(test image not readable)" in mistakes and 'alt="Grad-CAM overlay"' in mistakes


@pytest.mark.parametrize(
    ("num_classes", "top5", "best_worst", "pairs"),
    [(2, False, False, False), (5, False, False, True), (21, True, True, True)],
)
def test_panels_that_say_nothing_at_this_size_are_left_out(
    tmp_path: Path, num_classes: int, top5: bool, best_worst: bool, pairs: bool
) -> None:
    run = write_run(tmp_path / "run", num_classes=num_classes)
    page = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    alts = IMAGE.findall(page)
    assert ("Top-5 accuracy" in section(page, "headline")) is top5
    assert ("per class accuracy top bottom" in alts) is best_worst
    assert ("top confused pairs" in alts) is pairs
    assert "confusion matrix (counts)" in alts and "per class accuracy all" in alts


def test_comparison_shows_only_differing_config_keys(tmp_path: Path) -> None:
    files = {"config.yaml", "summary.json"}  # no plots needed here
    runs = [
        write_run(tmp_path / "a", lr=0.001, files=files),
        write_run(tmp_path / "b", lr=0.01, model="vit", files=files),
    ]
    page = write_report(runs, tmp_path / "cmp.html", title="LR study").read_text(encoding="utf-8")
    assert "<title>LR study</title>" in page and "Configuration differences" in page
    config = section(page, "config")
    assert "optim.lr" in config and "model.name" in config
    assert "data.image_size" not in config and "optim.name" not in config
    assert config.count("<tr>") == 1 + 2  # header + 2 keys
    assert section(page, "headline").count("<tr>") == 1 + 2  # header + 2 runs
    assert 'href="a/"' in page and 'href="b/"' in page


def test_sweep_report_shows_each_variant_against_the_baseline(
    tmp_path: Path, photo_root: Path
) -> None:
    sweep = tmp_path / "sweep"
    runs = [
        write_evidence(write_run(sweep / "runs" / name, seed=i), photo_root)
        for i, name in enumerate(("base-s0", "wide-s0", "tiny-s0"))
    ]
    page = write_report(runs, sweep / "report.html").read_text(encoding="utf-8")
    assert "baseline" not in sections(page)  # no vs_baseline.json yet
    rows = [
        {"name": "base", "seeds": 1, "accuracy": 0.80, "baseline": "base"},
        {
            "name": "wide",
            "seeds": 1,
            "accuracy": 0.90,
            "baseline": "base",
            "difference": 0.10,
            "interval": [0.04, 0.16],
            "beats_baseline": True,
            "worse_than_baseline": False,
        },
        {
            "name": "tiny",
            "seeds": 1,
            "accuracy": 0.78,
            "baseline": "base",
            "difference": -0.02,
            "interval": [-0.08, 0.03],
            "beats_baseline": False,
            "worse_than_baseline": False,
        },
    ]
    (sweep / "vs_baseline.json").write_text(json.dumps(rows))
    page = write_report(runs, sweep / "report.html").read_text(encoding="utf-8")
    assert sections(page) == ["headline", "baseline", "curves", "runs", "config"]
    headline = section(page, "headline")
    assert headline.count("95% interval") == 1 and headline.count(" % – ") == 3
    baseline = section(page, "baseline")
    wide = baseline[baseline.index("<td>wide</td>") : baseline.index("<td>tiny</td>")]
    assert "+10.00 %" in wide and "+4.00 % … +16.00 %" in wide
    assert "beats baseline at 95%" in wide
    assert baseline.count("beats baseline at 95%") == 1
    assert "no clear difference at 95%" in baseline[baseline.index("<td>tiny</td>") :]


def test_damaged_post_run_files_are_left_out(tmp_path: Path, photo_root: Path) -> None:
    runs = [
        write_evidence(write_run(tmp_path / "sweep" / "runs" / name), photo_root)
        for name in ("a", "b")
    ]
    a = runs[0]
    (a / "calibration.json").write_text('{"temperature": "hot", "test": {}}')
    (a / "test_predictions.npz").write_bytes(b"not an npz")
    (a / "gallery" / "gallery.json").write_text("[1, 2")
    (tmp_path / "sweep" / "vs_baseline.json").write_text('[{"name": "a", "interval": 3}]')
    page = write_report([a], tmp_path / "one.html").read_text(encoding="utf-8")
    assert sections(page) == SINGLE_ORDER
    assert "no readable test_predictions.npz: no interval" in section(page, "headline")
    assert "No readable gallery/" in section(page, "mistakes")
    assert "No readable calibration.json" in section(page, "calibration")
    page = write_report(runs, tmp_path / "two.html").read_text(encoding="utf-8")
    assert "baseline" not in sections(page)


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
    assert sections(page) == SINGLE_ORDER
    assert "Missing: history.json, metrics.json, summary.json" in page
    assert "No history found" in page and "—" in page
    with pytest.raises(ValueError):
        write_report([], tmp_path / "none.html")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for real on flower photos, with every post-run check."""
    from imagefit.evaluate.post_run import trust_steps
    from imagefit.train.fit import fit

    tmp = tmp_path_factory.mktemp("real")
    root = write_photo_folder(tmp / "photos", ("daisy", "roses", "tulips"), per_class=20, size=40)
    cfg = tiny_config(root, tmp / "runs", data={"image_size": 32}, train={"epochs": 2})
    run = fit(cfg).run_dir
    results = trust_steps(run)
    assert all(v is not None for v in results.values()), results
    return run


def test_report_of_a_real_run(real_run: Path, tmp_path: Path) -> None:
    page = write_report([real_run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert sections(page) == SINGLE_ORDER
    headline = section(page, "headline")
    assert re.search(r"95% CI \d+\.\d–\d+\.\d %", headline)
    assert "Top-5" not in headline  # 3 classes
    assert "Test split evaluated once" in headline and "unchanged since training" in headline
    alts = IMAGE.findall(page)
    assert "per class accuracy top bottom" not in alts
    gallery = json.loads((real_run / "gallery" / "gallery.json").read_text())
    shown = len(gallery["mistakes"]) + sum(len(p["examples"]) for p in gallery["confused_pairs"])
    assert section(page, "mistakes").count('alt="Grad-CAM overlay"') == shown > 0
    assert 'alt="reliability"' in section(page, "calibration")
    # A test photo edited after training: the report says the split is no longer what was tested.
    split = json.loads((real_run / "split.json").read_text())
    edited = Path(split["root"]) / split["splits"]["test"][0][0]
    edited.write_bytes(edited.read_bytes() + b"edited")
    page = write_report([real_run], tmp_path / "r2.html").read_text(encoding="utf-8")
    assert "1 test file(s) changed or unreadable since training" in section(page, "headline")
    edited.write_bytes(edited.read_bytes()[: -len(b"edited")])


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')"
)
@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_report_renders_in_headless_chromium(real_run: Path, tmp_path: Path, width: int) -> None:
    """Every image loads, nothing logs an error and the body never scrolls sideways, on a
    desktop and on a phone: for a real run's page and for a comparison with many classes."""
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=0.01, num_classes=30)]
    pages = [
        write_report([real_run], tmp_path / "one.html"),
        write_report(runs, tmp_path / "report.html"),
    ]
    for out in pages:
        images = out.read_text(encoding="utf-8").count("<img ")
        seen, uncaught = render(out, tmp_path, width)
        assert seen["errors"] == [] and uncaught == [], (seen, uncaught)
        assert seen["images"] == f"{images}/{images}" and seen["viewport"] == width, seen
        assert seen["overflow"] == 0, (out.name, seen)
    assert images == 2 + 3 + 4  # comparison; per run: matrix, all classes, (best/worst), pairs


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
    seen, uncaught = render(page, tmp_path)
    errors = seen["errors"]
    assert "console.error: logged 42" in errors
    assert any(e.startswith("error: Uncaught TypeError") for e in errors), errors
    assert any(e.startswith("rejection: Error: refused") for e in errors), errors
    assert any(e.startswith("resource: ") and e.endswith("missing.png") for e in errors), errors
    assert any("TypeError" in line for line in uncaught) and any(
        "refused" in line for line in uncaught
    )
    assert seen["images"] == "0/1"


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')"
)
def test_chromium_check_catches_sideways_scroll_on_a_phone(tmp_path: Path) -> None:
    page = tmp_path / "wide.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>wide</title></head><body>"
        '<div style="width:600px">wide</div></body></html>',
        encoding="utf-8",
    )
    assert render(page, tmp_path, DESKTOP)[0]["overflow"] == 0
    seen = render(page, tmp_path, PHONE)[0]
    assert seen["viewport"] == PHONE and seen["overflow"] > 0, seen


def test_report_shows_test_accuracy_with_and_without_tta(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "tta")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["tta"] = {"mode": "flip", "accuracy": 0.9375}
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_report([run], tmp_path / "one.html").read_text(encoding="utf-8")
    assert "Test accuracy with TTA (flip)" in page and "93.75 %" in page
    other = write_run(tmp_path / "runs" / "plain")
    both = write_report([run, other], tmp_path / "two.html").read_text(encoding="utf-8")
    assert f"{100 * metrics['accuracy']:.2f} % (flip: 93.75 %)" in both
