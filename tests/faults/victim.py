"""A real ``imagefit`` process with fault-injection hooks, for the fault suite to signal or kill.

The suite forks it from a preloaded server (:func:`faultkit.start_victim`, which calls
:func:`run`); by hand, run ``IMAGEFIT_FAULT='{...}' python victim.py <imagefit arguments>``.
The hooks are configured by a dict (the JSON of ``IMAGEFIT_FAULT``):

- ``events``: a file that gets one line per event: ``enter train N`` (N-th training forward),
  ``enter eval N`` / ``leave eval N`` (N-th call of fit's evaluate), ``enter ckpt NAME N`` /
  ``leave ckpt NAME N`` (N-th write of NAME, logged once part of it is on disk),
  ``enter decode`` (the first image decoded);
- ``slow``: seconds to stretch one phase by, so that a signal sent after an event lands inside
  it: ``train`` (per training forward), ``eval`` (per evaluation forward), ``ckpt`` (per
  checkpoint, written in 8 chunks) and ``decode`` (per image).

The hooks only sleep and log, never change what is computed or written, so a run of this
process ends with the same weights as a plain ``imagefit train``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

CONFIG: dict = {}
SLOW: dict[str, float] = {}
COUNTS: Counter[str] = Counter()


def event(text: str) -> None:
    if "events" in CONFIG:
        with open(CONFIG["events"], "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def _install(config: dict) -> None:
    CONFIG.update(config)
    SLOW.update(config.get("slow", {}))
    import imagefit.data.images as images
    import imagefit.train.fit as fit
    from imagefit.models.simple_cnn import SimpleCNN

    forward = SimpleCNN.forward

    def slow_forward(self: SimpleCNN, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            COUNTS["train"] += 1
            event(f"enter train {COUNTS['train']}")
        time.sleep(SLOW.get("train" if self.training else "eval", 0.0))
        return forward(self, x)

    SimpleCNN.forward = slow_forward

    def logged(evaluate):
        # fit validates with evaluate and tests with evaluate_modes (with and without TTA)
        def logged_evaluate(*args, **kwargs):
            COUNTS["eval"] += 1
            n = COUNTS["eval"]
            event(f"enter eval {n}")
            result = evaluate(*args, **kwargs)
            event(f"leave eval {n}")
            return result

        return logged_evaluate

    fit.evaluate = logged(fit.evaluate)
    fit.evaluate_modes = logged(fit.evaluate_modes)

    save = torch.save

    def chunked_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        name = Path(getattr(f, "path", "?")).name  # the checkpoint being written: "last.pt"
        COUNTS[name] += 1
        step = -(-len(data) // 8)
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            if i == 0:
                f.flush()
                event(f"enter ckpt {name} {COUNTS[name]}")
            time.sleep(SLOW.get("ckpt", 0.0) / 8)
        event(f"leave ckpt {name} {COUNTS[name]}")

    torch.save = chunked_save

    # Every decoder ends in load_rgb (the one decode policy), looked up at call time.
    load_rgb = images.load_rgb

    def slow_load_rgb(*args, **kwargs):
        COUNTS["decode"] += 1
        if COUNTS["decode"] == 1:
            event("enter decode")
        time.sleep(SLOW.get("decode", 0.0))
        return load_rgb(*args, **kwargs)

    images.load_rgb = slow_load_rgb


def run(argv: list[str], config: dict) -> None:
    """Install the hooks, then run ``imagefit <argv>`` in this process (exits like it)."""
    _install(config)
    from imagefit.cli import main

    sys.argv = ["imagefit", *argv]
    main()


if __name__ == "__main__":
    run(sys.argv[1:], json.loads(os.environ.get("IMAGEFIT_FAULT", "{}")))
