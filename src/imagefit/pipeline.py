"""Formula-driven pretraining as one pipeline: generate fractals -> pretrain -> fine-tune
from scratch and from the pretrained weights with the identical recipe -> compare.

.. code-block:: yaml

    name: ofdb_digits
    out: pipelines/ofdb_digits             # default pipelines/<name>
    fractal:                               # optional: generate 2D-OFDB into out/fractal/
      categories: 1000
      search: {compat: fast, seed: 1, fill_rate: 0.2}
      render: {size: 362, points: 200000, format: png, draw: patch_gray}
    pretrain: {config: ofdb_pretrain.yaml, set: {train.epochs: 100}}
    finetune: {config: target.yaml, set: {data.root: data/digits}, seeds: [0, 1, 2]}

Each step is skipped when its output is complete and resumed when it was interrupted, so
rerunning the command continues where it stopped. The two training steps are sweeps
(``out/pretrain.sweep.yaml``, ``out/finetune.sweep.yaml``, written for anyone to rerun by
hand); the fine-tune sweep's ``all_results.json``, ``results.md`` and ``report.html`` hold
the comparison, and ``out/pipeline.json`` its headline: test accuracy mean ± std per variant.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from imagefit import dotted
from imagefit.config import (
    SEED_LIMIT,
    ConfigOverrides,
    Section,
    apply_override,
    config_from_dict,
    key_problem,
    parse_override,
    read_yaml,
    validate,
)
from imagefit.errors import ConfigError, Interrupted, TrainingStopped
from imagefit.fileio import atomic_write, make_dirs, write_json
from imagefit.runs.layout import RunLayout

if TYPE_CHECKING:  # the sweep runner imports torch: loading a pipeline file must not
    from imagefit.sweep import SweepResult

log = logging.getLogger(__name__)

PRETRAIN_TRIAL = "pretrain"
VARIANTS = ("scratch", "pretrained")  # the fine-tune sweep's two trials
# datasets.fractal.render's DRAW_MODES and DRAW_ALIASES (it imports numba; a test proves it)
DrawMode = Literal[
    "patch_gray", "point_gray", "patch_color", "point_color", "color", "gray", "patch", "point"
]


class SearchStep(Section):
    compat: Literal["fast", "official"] = "fast"
    seed: int = Field(1, ge=0)
    fill_rate: float = Field(0.2, gt=0, le=1)


class RenderStep(Section):
    size: int = Field(362, ge=8)
    points: int = Field(200_000, ge=2)
    format: Literal["png", "ppm"] = "png"
    draw: DrawMode = "patch_gray"
    seed: int = Field(0, ge=0)
    weight_row: Literal["official", "ones"] = "official"  # official: a x 0.2 (the 2D-OFDB script)
    keep_aspect: bool = False
    burn_in: int = Field(0, ge=0)
    vflip: bool = True


class FractalStep(Section):
    categories: int = Field(1000, ge=2)
    search: SearchStep = SearchStep()
    render: RenderStep = RenderStep()


class TrainStep(Section):
    config: str  # a config file, relative to the pipeline file
    set: ConfigOverrides = {}  # dotted key -> value, this step only


class FinetuneStep(TrainStep):
    seeds: list[Annotated[int, Field(strict=True, ge=0, lt=SEED_LIMIT)]] = Field([0], min_length=1)

    @model_validator(mode="after")
    def _distinct_seeds(self) -> FinetuneStep:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeats a seed: {self.seeds}")
        return self


class PipelineFile(Section):
    name: str | None = None
    out: str | None = None
    fractal: FractalStep | None = None
    pretrain: TrainStep
    finetune: FinetuneStep


@dataclass
class PipelineSpec:
    path: Path
    name: str
    out: Path
    file: PipelineFile
    common: list[str]  # --set assignments for both training steps


@dataclass
class PipelineResult:
    out: Path
    pretrain: SweepResult
    finetune: SweepResult
    comparison: dict[str, Any]


STEPS = ("pretrain", "finetune")


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """Parse ``path``; ``overrides`` starting with ``fractal.``, ``pretrain.`` or ``finetune.``
    change that section (``pretrain.train.epochs=2`` sets the pretraining's epochs), the rest
    apply to both training steps. Every value is typed by the field it sets, as in ``train``,
    and both steps' configs are built once here, so a typo fails before any step runs."""
    path = Path(path)
    tree = read_yaml(path)
    common = []
    for assignment in overrides:
        section, _, rest = assignment.strip().partition(".")
        step_key = rest.partition("=")[0].strip()
        if section in STEPS and step_key not in FinetuneStep.model_fields:
            key, value = parse_override(rest)  # a config key of that step alone
            step = tree.setdefault(section, {})
            if isinstance(step, dict) and isinstance(step.setdefault("set", {}), dict):
                step["set"][key] = value
        elif section in PipelineFile.model_fields:
            apply_override(tree, assignment, PipelineFile)
        else:
            problem = key_problem(parse_override(assignment)[0])
            if problem:
                raise ConfigError(f"--set '{assignment}': {problem}")
            common.append(assignment)
    file = validate(PipelineFile, tree, str(path))
    for name in STEPS:
        _check_step(path, name, getattr(file, name), common)
    name = file.name or path.name.split(".")[0]
    return PipelineSpec(path, name, Path(file.out or Path("pipelines") / name), file, common)


def _check_step(path: Path, name: str, step: TrainStep, common: list[str]) -> None:
    """Build the step's config (its file, ``set:``, the common ``--set``) to validate it."""
    config = path.parent / step.config
    if not config.is_file():
        raise ConfigError(f"{path}: {name}.config: config file not found: {config}")
    tree = read_yaml(config)
    for key, value in step.set.items():
        dotted.set_key(tree, key, value)
    for assignment in common:
        apply_override(tree, assignment)
    config_from_dict(tree, source=f"{path}, {name} ({config})")


def _build_once(target: Path, build: Callable[[Path], Any], what: str) -> None:
    """Build ``target`` unless it is complete: into ``target.partial``, renamed when done, so
    an interrupted build is redone instead of half-used."""
    if target.exists():
        log.info("%s: %s exists, skipped", what, target)
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.rename(target)


def generate_fractals(step: FractalStep, out: Path) -> Path:
    """Search ``step.categories`` categories and render 2D-OFDB; return the image folder."""
    from imagefit.datasets.fractal.dataset import (
        OFDB_OFFICIAL_WEIGHT_ROW,
        search_categories,
        write_ofdb,
        write_params,
    )

    s, r = step.search, step.render
    params, images = out / "params", out / "images"

    def search(folder: Path) -> None:
        write_params(search_categories(step.categories, s.fill_rate, s.seed, s.compat), folder)

    def render(folder: Path) -> None:
        row = OFDB_OFFICIAL_WEIGHT_ROW if r.weight_row == "official" else None
        write_ofdb(
            params,
            folder,
            r.size,
            r.points,
            r.format,
            r.draw,
            seed=r.seed,
            weight_row=row,
            keep_aspect=r.keep_aspect,
            burn_in=r.burn_in,
            vflip=r.vflip,
        )

    _build_once(params, search, "fractal search")
    _build_once(images, render, "2D-OFDB render")
    return images


def _write_sweep(
    target: Path,
    base: Path,
    out: Path,
    common: dict[str, Any],
    variants: list[dict[str, Any]],
    seeds: list[int] | None = None,
) -> Path:
    sweep = {
        "base": str(base.resolve()),
        "out": str(out.resolve()),
        "set": common,
        "variants": variants,
        **({"seeds": seeds} if seeds else {}),
    }
    make_dirs(target.parent)
    atomic_write(target, yaml.safe_dump(sweep, sort_keys=False))
    return target


def compare(finetune: SweepResult) -> dict[str, Any]:
    """Test accuracy (mean, std over seeds) of scratch vs pretrained, and their difference."""
    groups = {g["name"]: g for g in finetune.groups}
    rows = {
        name: {
            "seeds": groups[name]["seeds"],
            "test_accuracy": groups[name]["test_accuracy"],
            "best_val_accuracy": groups[name]["best_val_accuracy"],
        }
        for name in VARIANTS
        if name in groups
    }
    means = [rows.get(name, {}).get("test_accuracy", {}).get("mean") for name in VARIANTS]
    gain = None if None in means else means[1] - means[0]
    return {"variants": rows, "pretrained_minus_scratch": gain}


def run_pipeline(spec: PipelineSpec) -> PipelineResult:
    """Run every step of ``spec`` that is not complete yet; write ``out/pipeline.json``."""
    try:
        return _run_steps(spec)
    except Interrupted as exc:  # the sweeps' message says to rerun a sweep: rerun this instead
        raise Interrupted(
            f"pipeline {spec.name} stopped; run `imagefit pipeline {spec.path}` "
            "again to continue where it stopped"
        ) from exc


def _run_steps(spec: PipelineSpec) -> PipelineResult:
    from imagefit.sweep import load_sweep, run_sweep

    f, out = spec.file, spec.out
    make_dirs(out)
    pretrain_set = dict(f.pretrain.set)
    if f.fractal is not None:
        pretrain_set["data.root"] = str(generate_fractals(f.fractal, out / "fractal").resolve())
    where = spec.path.parent
    pre = load_sweep(
        _write_sweep(
            out / "pretrain.sweep.yaml",
            where / f.pretrain.config,
            out / "pretrain",
            pretrain_set,
            [{"name": PRETRAIN_TRIAL}],
        ),
        spec.common,
    )
    pretrained = run_sweep(pre)
    checkpoint = RunLayout(pre.out / "runs" / PRETRAIN_TRIAL).best
    if pretrained.records[0]["status"] != "finished" or not checkpoint.is_file():
        raise TrainingStopped(
            f"pretraining did not finish ({pretrained.records[0].get('error')}); "
            f"see {pre.out / 'runs' / PRETRAIN_TRIAL}"
        )
    variants = [
        {"name": "scratch", "set": {"model.init": "scratch"}},
        {"name": "pretrained", "set": {"model.init": str(checkpoint.resolve())}},
    ]
    fine = load_sweep(
        _write_sweep(
            out / "finetune.sweep.yaml",
            where / f.finetune.config,
            out / "finetune",
            dict(f.finetune.set),
            variants,
            f.finetune.seeds,
        ),
        spec.common,
    )
    finetuned = run_sweep(fine)
    comparison = {
        "name": spec.name,
        "pretrain_run": str(checkpoint.parent),
        "finetune_results": str(finetuned.files.get("all_results", fine.out)),
        **compare(finetuned),
        "failed": finetuned.failed,  # fine-tune trials that raised: the comparison lacks them
    }
    write_json(out / "pipeline.json", comparison)
    return PipelineResult(out, pretrained, finetuned, comparison)
