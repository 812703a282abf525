"""``imagefit serve`` over real HTTP: predictions equal ``imagefit predict``, every bad input
gets its 4xx JSON and the server keeps answering, concurrent requests share a batch, SIGTERM
lets the request in flight finish, a model that does not load stops startup with exit code 2."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imagefit.export.predict import predict

from helpers.serving import SRC, Served, flowers_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flowers_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def photos(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real JPEGs of the run's folder and a PNG re-encoding with an odd size."""
    jpegs = sorted((run_dir.parents[1] / "flowers").rglob("*.jpg"))[::4]
    png = tmp_path_factory.mktemp("png") / "odd.png"
    Image.open(jpegs[0]).crop((3, 5, 201, 150)).save(png)
    return [*jpegs, png]


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    served = Served(
        run_dir,
        "--max-body-mb",
        "1",
        "--max-wait-ms",
        "100",
        "--max-batch",
        "16",
        log=tmp_path_factory.mktemp("log") / "server.log",
    )
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


def test_predictions_equal_imagefit_predict(server: Served, run_dir: Path, photos: list[Path]):
    expected = predict(run_dir / "model.onnx", photos, top_k=3)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path, want in zip(photos, expected, strict=True):
            multipart = client.post("/predict?top_k=3", files={"file": path.read_bytes()})
            raw = client.post("/predict", params={"top_k": 3}, content=path.read_bytes())
            for response in (multipart, raw):
                assert response.status_code == 200, response.text
                got = response.json()
                assert got["model"]["name"] == run_dir.name and len(got["model"]["version"]) == 12
                assert got["label"] == want["label"] and got["index"] == want["index"]
                assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
                np.testing.assert_allclose(
                    [t["probability"] for t in got["top_k"]],
                    [t["probability"] for t in want["top_k"]],
                    rtol=1e-5,
                )
        files = [("file", (p.name, p.read_bytes())) for p in photos]
        batch = client.post("/predict/batch?top_k=3", files=files)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["file"] for r in results] == [p.name for p in photos]
    assert [r["index"] for r in results] == [w["index"] for w in expected]


def test_metadata_health_and_ready(server: Served, run_dir: Path):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        meta = client.get("/metadata").json()
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").status_code == 200
    assert meta["classes"] == ["daisy", "roses", "sunflowers"] and meta["input_size"] == [32, 32]
    assert meta["run"] == str(run_dir.resolve()) and meta["preprocessing"]["mean"][0] == 0.485
    assert meta["batching"] == {"max_batch": 16, "max_wait_ms": 100.0}


def _bomb() -> bytes:
    """A 10000 x 10000 one-bit PNG: a few kB that would decode to 10^8 pixels."""
    out = io.BytesIO()
    Image.new("1", (10000, 10000)).save(out, "PNG")
    return out.getvalue()


def test_bad_inputs_get_4xx_json_and_the_server_keeps_answering(server: Served, photos: list[Path]):
    good = photos[0].read_bytes()
    cases = {
        "not an image": (415, "not_image", {"content": b"hello, this is text"}),
        "truncated": (422, "unreadable", {"content": good[: len(good) // 2]}),
        "bomb": (413, "too_large", {"files": {"file": ("bomb.png", _bomb())}}),
        "too large": (413, "body_too_large", {"content": b"\xff" * (1_200_000)}),
        "empty": (400, "empty_body", {"content": b""}),
        "empty file": (400, "empty_body", {"files": {"file": ("e.jpg", b"")}}),
        "no file field": (400, "no_file", {"files": {"other": ("x.jpg", good)}}),
        "bad top_k": (400, "bad_parameter", {"content": good, "params": {"top_k": "zero"}}),
    }
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (status, kind, request) in cases.items():
            response = client.post("/predict", **request)
            assert response.status_code == status, (name, response.text)
            body = response.json()
            assert body["kind"] == kind and body["error"], (name, body)
        assert "1 MB" in client.post("/predict", content=b"\xff" * 1_200_000).json()["error"]
        missing = client.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["kind"] == "not_found"
        assert client.get("/predict").status_code == 405
        # still serving, and counting by status
        assert client.post("/predict", content=good).status_code == 200
        metrics = client.get("/metrics").text
    assert 'imagefit_requests_total{route="/predict",status="415"} 1.0' in metrics
    assert 'imagefit_requests_total{route="other",status="404"} 1.0' in metrics


def test_a_bad_file_in_a_batch_gets_its_own_error(server: Served, photos: list[Path]):
    files = [
        ("file", ("a.jpg", photos[0].read_bytes())),
        ("file", ("notes.txt", b"not an image")),
    ]
    response = httpx.post(server.url + "/predict/batch", files=files, timeout=30)
    assert response.status_code == 200
    first, second = response.json()["results"]
    assert "label" in first and second["kind"] == "not_image" and "notes.txt" in second["error"]


def batch_sizes(metrics: str) -> tuple[float, float]:
    """(calls, images) from the batch-size histogram."""
    count = float(re.search(r"^imagefit_batch_size_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^imagefit_batch_size_sum (\S+)$", metrics, re.M).group(1))
    return count, total


def test_concurrent_requests_share_one_inference_call(server: Served, photos: list[Path]):
    before = batch_sizes(httpx.get(server.url + "/metrics").text)
    data = photos[1].read_bytes()
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.post(server.url + "/predict", content=data, timeout=30), range(12)
            )
        )
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["label"] for r in responses}) == 1
    metrics = httpx.get(server.url + "/metrics").text
    calls, images = (a - b for a, b in zip(batch_sizes(metrics), before, strict=True))
    assert images == 12 and calls < 12, f"12 requests took {calls} calls"


@pytest.mark.faults
def test_sigterm_lets_the_request_in_flight_finish(run_dir: Path, photos: list[Path], tmp_path):
    # A 3 s batching wait keeps the first request in flight while the signal arrives.
    served = Served(run_dir, "--max-wait-ms", "3000", "--max-batch", "64", log=tmp_path / "log")
    served.wait_ready()
    answer: dict = {}

    def slow() -> None:
        answer["response"] = httpx.post(
            served.url + "/predict", content=photos[0].read_bytes(), timeout=30
        )

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(1.0)
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    try:
        late = httpx.get(served.url + "/health", timeout=5).status_code
    except httpx.TransportError:
        late = "refused"
    worker.join(30)
    # uvicorn re-raises the signal it handled once it has shut down, so the exit status says
    # "terminated by SIGTERM"; the log says it shut down in order.
    assert served.process.wait(30) in (0, -signal.SIGTERM)
    assert answer["response"].status_code == 200, answer["response"].text
    assert late in (503, "refused")
    log = (tmp_path / "log").read_text()
    assert "Waiting for connections to close" in log and "Finished server process" in log


def _serve_exit(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imagefit", "serve", str(target), "--port", "1"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_a_model_that_does_not_load_stops_startup(run_dir: Path, tmp_path: Path):
    from imagefit.errors import ImagefitError
    from imagefit.serve.model import load_served_model

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    cases = {
        tmp_path / "missing": "no such run folder or ONNX file",
        tmp_path: "has no model.onnx; export it first",
        broken: "ONNX Runtime cannot load it",
        run_dir / "model.preprocess.onnx": "serve the plain model.onnx",
    }
    for target, message in cases.items():
        with pytest.raises(ImagefitError, match=message):
            load_served_model(target)
    # and through the command: one line, exit code 2, before listening
    result = _serve_exit(broken)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {broken}: ONNX Runtime cannot load it"), result.stderr
    assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr


@pytest.mark.slow
def test_two_worker_processes_answer(run_dir: Path, photos: list[Path], tmp_path: Path):
    served = Served(run_dir, "--workers", "2", log=tmp_path / "log")
    try:
        served.wait_ready(120)
        with httpx.Client(base_url=served.url, timeout=30) as client:
            labels = {
                client.post("/predict", content=photos[0].read_bytes()).json()["label"]
                for _ in range(6)
            }
        assert len(labels) == 1
    finally:
        assert served.stop() in (0, -signal.SIGTERM)


def test_server_normalisation_is_bit_identical_to_the_loaders() -> None:
    from imagefit.data.inputs import normalise
    from imagefit.serve.model import normalise_hwc

    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for mean, std in (
        ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ([0.1, 0.7, 0.3], [0.01, 0.9, 0.1]),
    ):
        assert np.array_equal(
            normalise_hwc(pixels, mean, std), normalise(pixels[None], mean, std)[0]
        )
