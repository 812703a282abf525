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
    finetune:
      config: target.yaml
      set: {data.root: data/digits}
      seeds: [0, 1, 2]
      candidates:                          # optional: recipes, chosen per variant by val
        - {optim.lr: 0.003}
        - {optim.lr: 0.001, schedule.warmup_epochs: 1}

Each step is skipped when its output is complete and resumed when it was interrupted, so
rerunning the command continues where it stopped. The two training steps are sweeps
(``out/pretrain.sweep.yaml``, ``out/finetune.sweep.yaml``, written for anyone to rerun by
hand); the fine-tune sweep's ``all_results.json``, ``results.md`` and ``report.html`` hold
the comparison, and ``out/pipeline.json`` its headline: test accuracy mean ± std per variant
and ``pretrained_minus_scratch`` with its paired 95% bootstrap interval (over seeds and test
images, :func:`imagefit.evaluate.compare.variants_vs_baseline`).

With ``finetune.candidates``, scratch and pretrained each get the same small recipe search
first (``out/select``: every candidate once, on the first seed) and keep the candidate with
the best validation accuracy, so neither side is compared under a recipe tuned for the other.
With a pretraining config of ``data.source: fractal`` the fractal step only searches the
categories and pretraining renders its images on the fly. The pretrained weights are left as
``out/pretrained.pt`` with their provenance in the meta; any run can start from them with
``model.init=out/pretrained.pt``.
"""

from __future__ import annotations

import logging
import os
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
    Config,
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
PRETRAINED_FILE = "pretrained.pt"  # the product: pretrained weights with their provenance
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
    # recipes (dotted key -> value) searched for scratch and pretrained alike; each side keeps
    # its best by validation accuracy on the first seed (none: the step's config as it is)
    candidates: list[ConfigOverrides] = []

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
        if "=" in section:  # a top-level key such as out=DIR (its value may hold dots)
            section, rest = section.partition("=")[0].strip(), ""
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
    for index, candidate in enumerate(file.finetune.candidates):
        _check_step(path, f"finetune.candidates[{index}]", file.finetune, common, candidate)
    name = file.name or path.name.split(".")[0]
    return PipelineSpec(path, name, Path(file.out or Path("pipelines") / name), file, common)


def _check_step(
    path: Path, name: str, step: TrainStep, common: list[str], extra: dict[str, Any] | None = None
) -> Config:
    """Build the step's config (its file, ``set:``, ``extra``, the common ``--set``)."""
    config = path.parent / step.config
    if not config.is_file():
        raise ConfigError(f"{path}: {name}.config: config file not found: {config}")
    tree = read_yaml(config)
    for key, value in {**step.set, **(extra or {})}.items():
        dotted.set_key(tree, key, value)
    for assignment in common:
        apply_override(tree, assignment)
    return config_from_dict(tree, source=f"{path}, {name} ({config})")


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


def generate_fractals(step: FractalStep, out: Path, render_images: bool = True) -> Path:
    """Search ``step.categories`` categories and render 2D-OFDB; return the image folder (the
    parameter folder when ``render_images`` is false: pretraining renders on the fly)."""
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
    if not render_images:
        return params
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
    """Test accuracy (mean, std over seeds) of scratch vs pretrained, their difference and its
    paired 95% bootstrap interval (test images resampled jointly, seeds within each variant)."""
    from imagefit.evaluate.compare import sweep_vs_baseline

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
    result: dict[str, Any] = {"variants": rows, "pretrained_minus_scratch": gain}
    done = [r for r in finetune.records if r["status"] == "finished" and r["group"] in VARIANTS]
    if {r["group"] for r in done} == set(VARIANTS):
        paired = {r["name"]: r for r in sweep_vs_baseline(finetune.out_dir, "scratch", done)}
        row = paired["pretrained"]
        result.update(
            # over every test image (the group means follow train.limit_batches)
            pretrained_minus_scratch=row["difference"],
            pretrained_minus_scratch_interval=list(row["interval"]),
            pretrained_beats_scratch=row["beats_baseline"],
            pretrained_worse_than_scratch=row["worse_than_baseline"],
            interval_method="paired bootstrap over seeds and test images, 95%",
        )
    return result


def select_recipes(
    spec: PipelineSpec, inits: dict[str, str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per variant, the candidate recipe with the best validation accuracy (first seed): the
    same search for scratch and pretrained. Returns (variant -> chosen overrides, the record
    of the search for pipeline.json)."""
    from imagefit.sweep import load_sweep, run_sweep

    f = spec.file.finetune
    if not f.candidates:
        return {name: {} for name in inits}, {}
    variants = [
        {"name": f"{name}-{k}", "set": {"model.init": init, **candidate}}
        for name, init in inits.items()
        for k, candidate in enumerate(f.candidates)
    ]
    sweep = load_sweep(
        _write_sweep(
            spec.out / "select.sweep.yaml",
            spec.path.parent / f.config,
            spec.out / "select",
            dict(f.set),
            variants,
            f.seeds[:1],
        ),
        spec.common,
    )
    result = run_sweep(sweep)
    scores = {r["group"]: r.get("best_val_accuracy") for r in result.records}
    chosen, record = {}, {}
    for name in inits:
        tried = [(scores.get(f"{name}-{k}"), k) for k in range(len(f.candidates))]
        valid = [(score, k) for score, k in tried if score is not None]
        if not valid:
            raise TrainingStopped(f"no {name} candidate finished; see {spec.out / 'select'}")
        best = max(valid, key=lambda pair: (pair[0], -pair[1]))[1]  # ties: the earlier one
        chosen[name] = dict(f.candidates[best])
        record[name] = {
            "chosen": chosen[name],
            "val_accuracy": [score for score, _ in tried],
            "seed": f.seeds[0],
        }
    return chosen, {"by": "best_val_accuracy", "candidates": f.candidates, **record}


def write_pretrained(run_dir: Path, target: Path) -> Path:
    """``target``: the pretraining's best weights with their provenance in the meta (which
    data, which recipe, how many steps), loadable by ``model.init`` in any later run."""
    from imagefit.runs.checkpoint import load_checkpoint, save_checkpoint

    best = RunLayout(run_dir).best
    if target.is_file() and target.stat().st_mtime_ns >= best.stat().st_mtime_ns:
        return target  # made from this very best.pt: a rerun leaves it as it is
    state = load_checkpoint(best)
    cfg = config_from_dict(state["config"], source=str(best))
    # best.pt holds the weights; the training record (history, images seen) is last.pt's
    record = load_checkpoint(RunLayout(run_dir).last)
    history = record.get("history") or []
    last = history[-1] if history else {}
    images = record.get("train_images")
    provenance: dict[str, Any] = {
        "pretrain_run": str(run_dir.resolve()),
        "data": _data_provenance(cfg),
        "recipe": state["config"],
        "epochs": state["meta"].get("epoch"),
        "train_images": images,
        "steps": None if images is None else -(-images // cfg.train.batch_size),
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
    }
    # meta.run_dir is relative to the file's folder: from out/, the pretraining run's
    run_rel = os.path.relpath(run_dir.resolve(), target.parent.resolve())
    meta = {**state["meta"], "run_dir": run_rel, "provenance": provenance}
    product = {"model": state["model"], "meta": meta}
    save_checkpoint(product, target)
    return target


def _data_provenance(cfg: Config) -> dict[str, Any]:
    if cfg.data.source == "fractal":
        from imagefit.datasets.fractal.source import provenance

        return provenance(cfg.data)
    return {"source": cfg.data.source, "root": cfg.data.root}


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
    pre_cfg = _check_step(spec.path, "pretrain", f.pretrain, spec.common)
    if f.fractal is not None:
        on_the_fly = pre_cfg.data.source == "fractal"
        made = generate_fractals(f.fractal, out / "fractal", render_images=not on_the_fly)
        key = "data.fractal_params" if on_the_fly else "data.root"
        pretrain_set[key] = str(made.resolve())
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
    run_dir = pre.out / "runs" / PRETRAIN_TRIAL
    if pretrained.records[0]["status"] != "finished" or not RunLayout(run_dir).best.is_file():
        raise TrainingStopped(
            f"pretraining did not finish ({pretrained.records[0].get('error')}); see {run_dir}"
        )
    weights = write_pretrained(run_dir, out / PRETRAINED_FILE).resolve()
    inits = {"scratch": "scratch", "pretrained": str(weights)}
    chosen, search = select_recipes(spec, inits)
    variants = [
        {"name": name, "set": {"model.init": init, **chosen[name]}} for name, init in inits.items()
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
        "pretrain_run": str(run_dir),
        "pretrained_weights": str(weights),
        "finetune_results": str(finetuned.files.get("all_results", fine.out)),
        "recipes": {name: chosen[name] for name in inits},
        "recipe_search": search or None,
        **compare(finetuned),
        "failed": finetuned.failed,  # fine-tune trials that raised: the comparison lacks them
    }
    write_json(out / "pipeline.json", comparison)
    return PipelineResult(out, pretrained, finetuned, comparison)
