"""What the torchrun test workers share: a run that one process alone is asked to stop, resumed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import StopAfter


def stop_rank_1_then_resume(config: Any, run: Path, rank: int, stop_after: int) -> dict[str, Any]:
    """Train ``config`` with rank 1 alone seeing a stop request at its ``stop_after``-th look
    (a signal that reached one process), then resume ``run``.

    Returns ``interrupted`` (the Interrupted message, or None if training ended first) and
    ``resumed`` (the resumed run's test metrics).
    """
    from imagefit.errors import Interrupted
    from imagefit.train import fit as fit_module

    @contextmanager
    def stop_on_rank_1() -> Iterator[StopAfter]:
        yield StopAfter(stop_after if rank == 1 else 10**9)

    report: dict[str, Any] = {}
    original = fit_module.graceful_stop
    fit_module.graceful_stop = stop_on_rank_1
    try:
        fit_module.fit(config)
        report["interrupted"] = None
    except Interrupted as exc:
        report["interrupted"] = str(exc)
    finally:
        fit_module.graceful_stop = original
    report["resumed"] = fit_module.fit(resume=run).metrics
    return report
