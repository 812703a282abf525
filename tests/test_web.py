"""``imagefit export --web``: the static page runs the model in headless Chromium, served by
``python -m http.server``, and shows the same top-1 as ``imagefit predict``."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.export.predict import predict

from helpers.serving import flowers_run, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flowers_run(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def site(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "web"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--web", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_folder_is_self_contained(site: Path) -> None:
    names = {p.name for p in site.iterdir()}
    assert {"index.html", "model.onnx", "ort.wasm.min.js", "ort-wasm-simd-threaded.wasm"} <= names
    assert "MIT License" in (site / "ort-web-LICENSE").read_text()
    page = (site / "index.html").read_text()
    assert "://" not in page  # nothing loaded from elsewhere: works offline
    config = json.loads(re.search(r'<script id="config"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert config["classes"] == ["daisy", "roses", "sunflowers"] and config["input"] == "image"


def test_web_needs_a_model_with_preprocessing(run_dir: Path, tmp_path: Path) -> None:
    from imagefit.export import ExportError
    from imagefit.export.web import export_web

    with pytest.raises(ExportError, match="--with-preprocessing"):
        export_web(run_dir / "model.onnx", tmp_path / "web")


def chromium_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # virtual time waits for the fetches, the WebAssembly compile and the inference
        "--virtual-time-budget=60000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def body_attributes(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z0-9]+)="([^"]*)"', body)}


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')"
)
def test_page_shows_the_top1_of_imagefit_predict(site: Path, run_dir: Path, tmp_path: Path) -> None:
    photos = sorted((run_dir.parents[1] / "flowers").rglob("*.jpg"))[::6]
    for index, photo in enumerate(photos):
        shutil.copy(photo, site / f"photo{index}.jpg")
    (site / "notes.jpg").write_text("not an image")
    expected = predict(run_dir / "model.onnx", photos, top_k=3)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(base + "/index.html", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for index, want in enumerate(expected):
            dom = chromium_dom(f"{base}/index.html?image=photo{index}.jpg", tmp_path / "profile")
            shown = body_attributes(dom)
            assert shown.get("status") == "done", shown
            assert shown["top1"] == want["label"], (photos[index], shown, want)
            top = json.loads(shown["result"])
            assert abs(top[0]["probability"] - want["probability"]) < 1e-3
            assert f">{want['label']}<" in dom  # the bars show it too
        broken = body_attributes(
            chromium_dom(f"{base}/index.html?image=notes.jpg", tmp_path / "p2")
        )
        assert broken["status"] == "error" and "top1" not in broken
    finally:
        server.terminate()
        server.wait(10)
