"""``imagefit demo``: the whole flow on embedded data that needs no download."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from imagefit.config import Config, apply_override, config_from_dict, read_yaml
from imagefit.errors import ConfigError

if TYPE_CHECKING:  # training imports torch: the config is checked first
    from imagefit.runs.records import RunResult


def demo_config(workdir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The packaged demo config with data and output placed under ``workdir``."""
    workdir = Path(workdir)
    with resources.as_file(resources.files("imagefit.resources") / "demo.yaml") as path:
        tree = read_yaml(path)
    tree["data"]["root"] = str(workdir / "data" / "digits")
    tree["output"]["dir"] = str(workdir / "runs")
    for assignment in overrides:
        apply_override(tree, assignment)
    return config_from_dict(tree, source="demo.yaml")


def run_demo(
    workdir: str | Path = "imagefit-demo", overrides: list[str] | tuple[str, ...] = ()
) -> RunResult:
    """Write digits as PNGs, split 70/15/15 (seed 42), train SimpleCNN, test the best epoch."""
    cfg = demo_config(workdir, overrides)
    if cfg.data.root is None:  # demo_config sets it; only an override can clear it
        raise ConfigError("the demo needs data.root (where it writes the digit images)")
    from imagefit.datasets.digits import write_digits
    from imagefit.workflow import train

    write_digits(cfg.data.root)
    return train(cfg)
