"""One sweep worker process, for tests/test_sweep_workers.py.

``python sweep_worker.py SWEEP_YAML REPORT_JSON [STORAGE_URL]`` runs the sweep as
``imagefit sweep SWEEP_YAML [--storage URL]`` does, with the plots and post-run checks stubbed
out (they have their own tests), and writes the names of the trials it trained to REPORT_JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(sweep: str, report: Path, storage: str | None) -> None:
    from imagefit import workflow
    from imagefit.evaluate import plots
    from imagefit.evaluate import report as html
    from imagefit.sweep import load_sweep, run_sweep, runner

    plots.plot_run = lambda run_dir: []
    plots.plot_comparison = lambda run_dirs, out_dir: []
    html.write_report = lambda run_dirs, out, title=None: Path(out)
    workflow.trust_steps = lambda run_dir: None
    trained: list[str] = []
    train = runner.train

    def counting(cfg=None, *, resume=None, on_epoch=None):
        trained.append(Path(resume).name if resume is not None else cfg.output.name)
        return train(cfg, resume=resume, on_epoch=on_epoch)

    runner.train = counting
    spec = load_sweep(sweep)
    if storage:
        spec.search.storage = storage
    result = run_sweep(spec)
    statuses = {r["name"]: r["status"] for r in result.records}
    report.write_text(json.dumps({"trained": trained, "records": statuses}), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
