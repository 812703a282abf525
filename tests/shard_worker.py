"""One process of a 2-process gloo run from tar shards under torchrun, for tests/test_shards.py.

``torchrun --nproc_per_node=2 shard_worker.py CONFIG_YAML OUT STOP_AFTER`` trains CONFIG (which
streams ``data.shards`` with 2 loader workers per process) into ``OUT/a``; then into ``OUT/b``,
where rank 1 sees a stop request after ``STOP_AFTER`` looks at its flag, and resumes ``OUT/b``.
Each rank logs the sample keys of every training step to ``OUT/<a|b>-rank<R>.log`` and writes
its test metrics to ``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from helpers.distributed import stop_rank_1_then_resume  # this script's folder is on sys.path


@contextmanager
def key_log(path: Path):
    logger = logging.getLogger("imagefit.data.stream.keys")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def main(config: str, out: Path, stop_after: int) -> None:
    from imagefit.config import load_config
    from imagefit.train import fit as fit_module

    rank = int(os.environ["RANK"])
    report: dict[str, object] = {}
    with key_log(out / f"a-rank{rank}.log"):
        report["a"] = fit_module.fit(load_config(config, [f"output.dir={out / 'a'}"])).metrics
    with key_log(out / f"b-rank{rank}.log"):
        b = load_config(config, [f"output.dir={out / 'b'}"])
        report.update(stop_rank_1_then_resume(b, out / "b" / "run", rank, stop_after))
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
