"""The HTTP app: ``/predict``, ``/predict/batch``, ``/health``, ``/ready``, ``/metadata``, ``/metrics``.

Starlette rather than FastAPI: every route reads the raw body itself (size limit while
streaming, multipart or raw image), so request models would add nothing. Every error a client
can cause is a 4xx JSON ``{"error": message, "kind": kind}``; the server keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagefit.errors import ImageError
from imagefit.export.predict import label_scores
from imagefit.serve.batching import Batcher
from imagefit.serve.metrics import CONTENT_TYPE, Metrics
from imagefit.serve.model import ServedModel, decode_upload, load_served_model

log = logging.getLogger(__name__)

SETTINGS_ENV = "IMAGEFIT_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker
# Set when this process was asked to stop (SIGTERM/SIGINT): new requests get 503 while the
# requests already in flight finish.
PROCESS_DRAIN = threading.Event()

# ImageError.kind -> HTTP status
KIND_STATUS = {
    "not_image": 415,
    "unsupported_mode": 415,
    "unreadable": 422,  # truncated or corrupt
    "too_small": 422,
    "too_large": 413,  # decompression bomb
}
ROUTES = ("/predict", "/predict/batch", "/health", "/ready", "/metadata", "/metrics")


@dataclass
class Settings:
    model: str
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_mb: float = 20.0
    threads: int | None = None  # ONNX Runtime intra-op threads (None: all cores)
    allow_untrained: bool = False  # serve a model exported with no finished epoch (labelled)

    def to_env(self) -> str:
        return json.dumps(asdict(self))


class ClientError(Exception):
    """A request the server refuses: answered as ``status`` with a JSON error."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def create_app(settings: Settings, drain: threading.Event | None = None) -> ASGIApp:
    """Load the model now (so a bad model fails before the server listens) and build the app."""
    model = load_served_model(settings.model, settings.threads, settings.allow_untrained)
    return build_app(model, settings, drain or PROCESS_DRAIN)


def app_from_env() -> ASGIApp:
    """Factory for uvicorn's worker processes: settings from :data:`SETTINGS_ENV`."""
    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))


def build_app(model: ServedModel, settings: Settings, drain: threading.Event) -> ASGIApp:
    metrics = Metrics()
    batcher = Batcher(model.logits, settings.max_batch, settings.max_wait_ms, metrics.observe_batch)
    max_body = int(settings.max_body_mb * 2**20)
    state = {"ready": False}
    identity = {"name": model.name, "version": model.version}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    async def predict_one(request: Request) -> Response:
        top_k = _top_k(request)
        name, data = (await _uploads(request, max_body, single=True))[0]
        x = await _decode(data, name, model)
        scores = label_scores(await batcher.submit(x), model.meta, top_k)
        return JSONResponse({"model": identity, **scores})

    async def predict_batch(request: Request) -> Response:
        top_k = _top_k(request)
        uploads = await _uploads(request, max_body, single=False)
        decoded = await asyncio.gather(
            *(_decode(data, name, model) for name, data in uploads), return_exceptions=True
        )
        good = [x for x in decoded if isinstance(x, np.ndarray)]
        rows = iter(await asyncio.gather(*(batcher.submit(x) for x in good)))
        results: list[dict[str, Any]] = []
        for (name, _), x in zip(uploads, decoded, strict=True):
            if isinstance(x, ClientError):
                results.append({"file": name, "error": str(x), "kind": x.kind})
            elif isinstance(x, BaseException):
                raise x
            else:
                results.append({"file": name, **label_scores(next(rows), model.meta, top_k)})
        return JSONResponse({"model": identity, "results": results})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok = state["ready"] and not drain.is_set()
        return JSONResponse({"ready": ok, "model": identity}, status_code=200 if ok else 503)

    async def metadata(request: Request) -> Response:
        return JSONResponse(
            {
                **model.describe(),
                "batching": {
                    "max_batch": settings.max_batch,
                    "max_wait_ms": settings.max_wait_ms,
                },
                "max_body_mb": settings.max_body_mb,
            }
        )

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def client_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ClientError)
        return _error(exc.status, str(exc), exc.kind)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += f" (routes: {', '.join(ROUTES)})"
        return _error(exc.status_code, message, kind)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}", "internal")

    app = Starlette(
        routes=[
            Route("/predict", predict_one, methods=["POST"]),
            Route("/predict/batch", predict_batch, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ],
        exception_handlers={
            ClientError: client_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    return _Observe(_Drain(app, drain), metrics)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": message, "kind": kind}, status_code=status)


def _top_k(request: Request) -> int:
    raw = request.query_params.get("top_k", "5")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ClientError(400, f"top_k must be a positive integer, got {raw!r}", "bad_parameter")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (declared or streamed)."""
    mb = f"{limit / 2**20:g} MB (--max-body-mb)"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"body of {int(declared):,} bytes is over {mb}", "body_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ClientError(413, f"body is over {mb}", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, limit: int, single: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploaded images: multipart ``file`` fields, or the raw body."""
    body = await _read_body(request, limit)
    if not body:
        raise ClientError(
            400, "empty body: send an image (raw body or multipart field 'file')", "empty_body"
        )
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if not single:
            raise ClientError(
                400,
                "/predict/batch takes multipart/form-data with one or more 'file' fields",
                "bad_request",
            )
        return [("<body>", body)]

    async def replay() -> Message:  # the form parser reads the body we already hold
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1024)
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several unrelated types
        raise ClientError(400, f"malformed multipart body: {exc}", "bad_multipart") from None
    files = [v for k, v in form.multi_items() if k in ("file", "files") and not isinstance(v, str)]
    if not files:
        raise ClientError(400, "multipart body has no 'file' field holding a file", "no_file")
    if single and len(files) > 1:
        raise ClientError(
            400, f"/predict takes one file, got {len(files)}; use /predict/batch", "too_many_files"
        )
    uploads = [(f.filename or "<file>", await f.read()) for f in files]
    for name, data in uploads:
        if not data:
            raise ClientError(400, f"{name}: empty file", "empty_body")
    return uploads


async def _decode(data: bytes, name: str, model: ServedModel) -> np.ndarray:
    """Decode off the event loop (Pillow releases the GIL while decoding)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(
            None, decode_upload, data, name, model.meta
        )
    except ImageError as exc:
        raise ClientError(KIND_STATUS.get(exc.kind, 422), str(exc), exc.kind) from None


class _Drain:
    """After a stop request, new HTTP requests get 503 while those in flight finish."""

    def __init__(self, app: ASGIApp, drain: threading.Event):
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.drain.is_set():
            response = _error(503, "server is shutting down", "shutting_down")
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Observe:
    """Counts requests by route and status and times them (unknown paths count as ``other``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
