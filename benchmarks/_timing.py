"""Shared by the benchmarks: interleaved rounds and medians, for noisy shared machines.

Every case runs once per round and the order rotates between rounds, so a burst of load from
elsewhere hits all cases alike; each case's figure is the median over the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """``{name: [value of round 1, ...]}``; each case returns a rate (e.g. images/s)."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cases[name]())
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_line(label: str, ours: list[float], base: list[float], goal: float | None = None) -> str:
    """``label: ours X/s vs baseline Y/s = R x``: R is the median of the per-round ratios.

    A round runs both cases back to back, so its ratio cancels slow swings of machine load
    that the ratio of the two medians would keep.
    """
    ratios = sorted(o / b for o, b in zip(ours, base, strict=True))
    value = median(ratios)
    verdict = f"  (goal >= {goal:g}: {'met' if value >= goal else 'NOT met'})" if goal else ""
    quartiles = (
        f"[per-round ratios {ratios[len(ratios) // 4]:.2f}..{ratios[(3 * len(ratios)) // 4]:.2f}]"
    )
    return f"{label}: {median(ours):,.1f}/s vs {median(base):,.1f}/s = {value:.3f}x {quartiles}{verdict}"
