"""Running the app on uvicorn: one process, or ``workers`` processes sharing the socket.

On SIGTERM/SIGINT uvicorn stops listening and waits for the requests in flight; in one
process, the drain flag makes any request that still arrives on an open connection a 503.
"""

from __future__ import annotations

import logging
import os
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from imagefit.serve import ServeError
from imagefit.serve.app import PROCESS_DRAIN, SETTINGS_ENV, Settings, create_app

log = logging.getLogger(__name__)

# A stop waits this long for the requests in flight, then cancels them.
GRACE_S = 60


class DrainingServer(uvicorn.Server):
    """uvicorn's server that also raises the drain flag when asked to stop."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        PROCESS_DRAIN.set()
        super().handle_exit(sig, frame)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve until stopped. The model is loaded before listening: a bad one raises here."""
    if settings.max_batch < 1:
        raise ServeError(f"--max-batch must be at least 1, got {settings.max_batch}")
    if settings.max_wait_ms < 0:
        raise ServeError(f"--max-wait-ms must not be negative, got {settings.max_wait_ms}")
    if settings.max_body_mb <= 0:
        raise ServeError(f"--max-body-mb must be positive, got {settings.max_body_mb}")
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, got {workers}")
    app = create_app(settings)  # fails fast, in this process, on a model that does not load
    if workers == 1:
        DrainingServer(
            uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=GRACE_S)
        ).run()
        return
    # Worker processes import the app by name and read the settings from the environment.
    del app
    os.environ[SETTINGS_ENV] = settings.to_env()
    config = uvicorn.Config(
        "imagefit.serve.app:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACE_S,
    )
    # uvicorn's workers run its plain Server: a stop closes their listener, so requests after
    # SIGTERM are refused rather than answered 503; those in flight still finish.
    Multiprocess(config, sockets=[config.bind_socket()]).run()
