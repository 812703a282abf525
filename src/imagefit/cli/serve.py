"""``imagefit serve``: an HTTP inference server for an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import AllowUntrainedOption


def serve(
    model: Annotated[
        Path, typer.Argument(help="Run folder (its exported model) or an .onnx file.")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Server processes.")] = 1,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Most images per inference call (1: no batching).")
    ] = 32,
    max_wait_ms: Annotated[
        float,
        typer.Option("--max-wait-ms", help="Longest wait for more requests to join a batch."),
    ] = 5.0,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="Largest request body accepted (413 above).")
    ] = 20.0,
    threads: Annotated[
        int | None, typer.Option("--threads", help="ONNX Runtime threads per process.")
    ] = None,
    allow_untrained: AllowUntrainedOption = False,
) -> None:
    """Serve predictions over HTTP: POST /predict, /predict/batch; GET /health, /ready,
    /metadata, /metrics. Stops gracefully on SIGTERM."""
    from imagefit.serve.app import Settings
    from imagefit.serve.server import serve as run_server

    settings = Settings(str(model), max_batch, max_wait_ms, max_body_mb, threads, allow_untrained)
    run_server(settings, host=host, port=port, workers=workers)


def register(app: typer.Typer) -> None:
    app.command()(serve)
