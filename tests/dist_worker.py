"""One process of a 2-process gloo run under torchrun, for tests/test_distributed.py.

``torchrun --nproc_per_node=2 dist_worker.py DIGITS_YAML PATTERN_YAML OUT STOP_AFTER`` runs, in
the same processes (so that the test pays the start-up once):

1. ``imagefit train DIGITS_YAML``: the command line, exactly as a user runs it under torchrun;
2. ``fit(PATTERN_YAML)`` into ``OUT/a`` without interruption;
3. ``fit(PATTERN_YAML)`` into ``OUT/b`` where rank 1 alone sees a stop request after
   ``STOP_AFTER`` looks at its flag (a signal that reached one process): every rank must stop
   at the same step;
4. ``fit(resume=OUT/b/run)``.

Each run joins and leaves the process group itself. Each rank writes ``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from helpers.distributed import stop_rank_1_then_resume  # this script's folder is on sys.path


def run_cli(*args: str) -> int:
    from imagefit.cli import main

    sys.argv = ["imagefit", *args]
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(digits: str, patterns: str, out: Path, stop_after: int) -> None:
    from imagefit.config import load_config
    from imagefit.train import fit as fit_module

    rank = int(os.environ["RANK"])
    report: dict[str, object] = {"cli_exit": run_cli("train", digits)}
    report["a"] = fit_module.fit(load_config(patterns, [f"output.dir={out / 'a'}"])).metrics
    b = load_config(patterns, [f"output.dir={out / 'b'}"])
    report.update(stop_rank_1_then_resume(b, out / "b" / "run", rank, stop_after))
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
