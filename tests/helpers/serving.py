"""A tiny real-photo run for the serving tests, and a served model in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imagefit.export.onnx import export_onnx
from imagefit.train.fit import fit

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
# The shared real photos sit beside the repository (CI mounts them read-only there).
FLOWERS = ROOT.parent / "shared" / "data" / "flowers"
CLASSES = ("daisy", "roses", "sunflowers")


def copy_flowers(root: Path, per_class: int = 8) -> Path:
    """The first ``per_class`` photos of three flower classes (small JPEGs, 200-500 px)."""
    if not FLOWERS.is_dir():
        pytest.skip(f"the shared real photos are not at {FLOWERS}")
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((FLOWERS / name).glob("*.jpg"))[:per_class]:
            shutil.copy(photo, root / name / photo.name)
    return root


def flowers_run(tmp: Path) -> Path:
    """simple_cnn at 32 px, one short epoch on real photos, exported with preprocessing."""
    cfg = tiny_config(
        copy_flowers(tmp / "flowers"),
        tmp / "runs",
        data={"image_size": 32},
        train={"epochs": 1, "limit_batches": 2},
    )
    run = fit(cfg).run_dir
    export_onnx(run, with_preprocessing=True)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``imagefit serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, *args: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagefit", "serve", str(model), "--port", str(self.port)]
            + list(args),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited {self.process.returncode}: {self.log.read_text()}"
                )
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM and wait; uvicorn re-raises the signal after its graceful shutdown, so a
        clean stop exits with -SIGTERM."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
