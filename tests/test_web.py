"""``imagefit export --web``: the static page runs the model in headless Chromium, served by
``python -m http.server``, and shows the same top-1 as ``imagefit predict``."""

from __future__ import annotations

import contextlib
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
from websockets.sync.client import connect

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


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket): the page's result
    is awaited in real time. ``--dump-dom`` with a virtual-time budget cannot wait for it,
    because compiling the WebAssembly does not hold virtual time back; under load the DOM was
    dumped before the model had loaded."""

    def __init__(self, profile: Path):
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
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
                "--remote-debugging-port=0",  # Chromium picks a port and writes it to the profile
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.socket = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.ids = 0

    def call(self, method: str, **params: object) -> dict:
        self.ids += 1
        self.socket.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.ids:
                assert "error" not in message, message
                return message["result"]

    def body_after(self, url: str, timeout: float = 90) -> dict[str, str]:
        """Open ``url``; the page's ``<body data-*>`` once its status is done or error."""
        # mark the old page, so that its result is not read while the new one loads
        self.call(
            "Runtime.evaluate",
            expression="document.body && (document.body.dataset.status = 'left')",
        )
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        script = "JSON.stringify(document.body ? {...document.body.dataset} : {})"
        while time.monotonic() < deadline:
            result = self.call("Runtime.evaluate", expression=script, returnByValue=True)
            data = json.loads(result["result"].get("value") or "{}")
            if data.get("status") in ("done", "error"):
                return data
            time.sleep(0.2)
        raise TimeoutError(f"{url}: page status still {data.get('status')!r} after {timeout}s")

    def close(self) -> None:
        self.stack.close()
        self.process.terminate()
        self.process.wait(20)


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
        browser = Browser(tmp_path / "profile")
        try:
            for index, want in enumerate(expected):
                shown = browser.body_after(f"{base}/index.html?image=photo{index}.jpg")
                assert shown.get("status") == "done", shown
                assert shown["top1"] == want["label"], (photos[index], shown, want)
                top = json.loads(shown["result"])
                assert abs(top[0]["probability"] - want["probability"]) < 1e-3
                bars = browser.call(
                    "Runtime.evaluate",
                    expression="document.querySelector('#result .label').textContent",
                    returnByValue=True,
                )
                assert bars["result"]["value"] == want["label"]  # the bars show it too
            broken = browser.body_after(f"{base}/index.html?image=notes.jpg")
            assert broken["status"] == "error" and "top1" not in broken
        finally:
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
