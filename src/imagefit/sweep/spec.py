"""Sweep files: one base config, common overrides, and a grid, a list of variants or a search.

.. code-block:: yaml

    base: base.yaml            # a normal config file, relative to this sweep file
    out: sweeps/lr             # optional; default sweeps/<this file's stem>
    set: {train.epochs: 5}     # optional; every trial
    seeds: [0, 1, 2]           # optional; every trial once per seed (train.seed)
    grid: {optim.lr: [1.0e-4, 1.0e-3]}                      # the cartesian product, or
    variants: [{name: adam, set: {optim.name: adam}}]       # named trials, or
    search: {n_trials: 20, params: {optim.lr: {type: float, low: 1.0e-5, high: 0.1, log: true}}}

Every key and every trial's config is checked before the first trial runs, so a typo fails in
a second, naming the file and the key, rather than after hours of other trials.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from imagefit import dotted
from imagefit.config import (
    SEED_LIMIT,
    Config,
    ConfigKey,
    ConfigOverrides,
    HistoryMetric,
    Section,
    apply_override,
    config_from_dict,
    key_problem,
    parse_override,
    read_yaml,
    validate,
)
from imagefit.errors import ConfigError
from imagefit.model_names import BASELINES

__all__ = ["BASELINES", "SearchSpec", "SweepSpec", "Trial", "load_sweep"]

MODES = ("grid", "variants", "search")
# Optuna's samplers and pruners by the names a sweep file uses (sweep.search builds them).
SamplerName = Literal["tpe", "random", "qmc"]
PrunerName = Literal["median", "percentile", "threshold", "successive_halving", "hyperband", "none"]


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: its run folder name, its own overrides and its seed."""

    name: str
    group: str  # the trial's name without the seed suffix (rows averaged over seeds share it)
    overrides: dict[str, Any]
    seed: int | None = None


@dataclass
class SearchSpec:
    """An Optuna search: parameter spaces, budget, objective, sampler, pruner, storage."""

    params: dict[str, dict[str, Any]]
    n_trials: int
    metric: str
    direction: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    storage: str | None
    study: str
    heartbeat_s: int = 30
    retries: int = 2


@dataclass
class SweepSpec:
    """A parsed, validated sweep file plus the command line's overrides."""

    path: Path
    name: str
    base: Path
    out: Path
    common: dict[str, Any]
    mode: str
    cli: list[str] = field(default_factory=list)  # ``key=value`` strings, applied last
    seeds: list[int] | None = None
    trials: list[Trial] = field(default_factory=list)  # grid and variants (empty for search)
    search: SearchSpec | None = None
    base_tree: dict[str, Any] = field(default_factory=dict)

    def config(self, trial: Trial) -> Config:
        """The trial's typed config: base <- ``set`` <- trial <- command line <- folder/seed."""
        tree = copy.deepcopy(self.base_tree)
        for key, value in {**self.common, **trial.overrides}.items():
            dotted.set_key(tree, key, value)
        for assignment in self.cli:
            apply_override(tree, assignment)
        dotted.set_key(tree, "output.dir", str(self.out / "runs"))
        dotted.set_key(tree, "output.name", trial.name)
        if trial.seed is not None:
            dotted.set_key(tree, "train.seed", trial.seed)
        return config_from_dict(tree, source=f"{self.path}, trial '{trial.name}'")


# --------------------------------------------------------------------------- the file


def _as_name(value: Any) -> Any:
    return value if isinstance(value, str) or value is None else value_text(value)


Name = Annotated[str, BeforeValidator(_as_name)]
Seed = Annotated[int, Field(strict=True, ge=0, lt=SEED_LIMIT)]


class Variant(Section):
    name: Name | None = None  # default variant-N
    set: ConfigOverrides = {}


class _Range(Section):
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        low, high = getattr(self, "low"), getattr(self, "high")  # noqa: B009 - the subclasses'
        if low > high:
            raise ValueError(f"needs low <= high (got {low}, {high})")
        return self


class FloatSpace(_Range):
    type: Literal["float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)


class IntSpace(_Range):
    type: Literal["int"]
    low: int
    high: int
    step: int | None = Field(None, gt=0)


class CategoricalSpace(Section):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


ParamSpace = Annotated[FloatSpace | IntSpace | CategoricalSpace, Field(discriminator="type")]


class OptunaChoice(BaseModel):
    """``{type: NAME, ...}``: the other keys are options of that Optuna class (checked when
    the search builds it)."""

    model_config = ConfigDict(extra="allow")


class SamplerChoice(OptunaChoice):
    type: SamplerName = "tpe"


class PrunerChoice(OptunaChoice):
    type: PrunerName = "median"


class SearchSection(Section):
    params: dict[ConfigKey, ParamSpace] = Field(min_length=1)
    n_trials: int = Field(ge=1)
    metric: HistoryMetric | None = None  # default: the base config's train.monitor
    direction: Literal["minimize", "maximize"] | None = None  # default: by the metric
    sampler: SamplerChoice = SamplerChoice()
    pruner: PrunerChoice = PrunerChoice()
    storage: str | None = None  # a database URL; default SQLite in the sweep folder
    study: str | None = None  # default: the sweep's name
    # Workers sharing the storage: each running trial beats this often; one silent for 3 beats
    # (its worker was killed) is failed and run again, from its last.pt, up to `retries` times
    heartbeat_s: int = Field(30, ge=1)
    retries: int = Field(2, ge=0)


class SweepFile(Section):
    name: Name | None = None  # default: the file's stem
    description: str | None = None
    base: str  # a config file, relative to the sweep file
    out: str | None = None  # default: sweeps/<name>
    set: ConfigOverrides = {}  # every trial
    seeds: list[Seed] | None = Field(None, min_length=1)  # every trial once per seed
    grid: dict[ConfigKey, Annotated[list[Any], Field(min_length=1)]] | None = Field(
        None, min_length=1
    )
    variants: list[Variant] | None = Field(None, min_length=1)
    search: SearchSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_mode(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            found = [m for m in MODES if m in raw]
            if len(found) != 1:
                raise ValueError(
                    f"a sweep needs exactly one of {', '.join(MODES)} "
                    f"(found {', '.join(found) or 'none'})"
                )
        return raw

    @model_validator(mode="after")
    def _distinct_seeds(self) -> SweepFile:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeats a seed: {self.seeds}")
        return self


def value_text(value: Any) -> str:
    """A value as it appears in a folder name: ``0.001``, ``resnet18``, ``true``, ``0.8x1.0``."""
    if isinstance(value, list | tuple):
        return "x".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def grid_name(values: dict[str, Any]) -> str:
    """``lr-0.001_name-resnet18``: the last key part, or the whole key where two share it."""
    lasts = [k.rsplit(".", 1)[-1] for k in values]
    parts = [
        f"{last if lasts.count(last) == 1 else key}-{value_text(value)}"
        for (key, value), last in zip(values.items(), lasts, strict=True)
    ]
    return "_".join(parts)


def plan_trials(
    named: list[tuple[str, dict[str, Any]]], seeds: list[int] | None, where: str
) -> list[Trial]:
    """Trials of ``named`` (name, overrides) pairs, each repeated over ``seeds``."""
    names = [name for name, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: trial names must be unique; repeated: {', '.join(duplicates)}")
    if seeds is None:
        return [Trial(name, name, overrides) for name, overrides in named]
    return [
        Trial(f"{name}-seed{seed}", name, overrides, seed)
        for name, overrides in named
        for seed in seeds
    ]


def _search_spec(section: SearchSection, default_metric: str, default_study: str) -> SearchSpec:
    metric = section.metric or default_metric
    direction = section.direction or ("minimize" if metric.endswith("loss") else "maximize")
    return SearchSpec(
        {key: space.model_dump(exclude_unset=True) for key, space in section.params.items()},
        section.n_trials,
        metric,
        direction,
        section.sampler.model_dump(exclude_unset=True),
        section.pruner.model_dump(exclude_unset=True),
        section.storage,
        section.study or default_study,
        section.heartbeat_s,
        section.retries,
    )


def _search_probes(search: SearchSpec) -> list[Trial]:
    """Trials at each end of every numeric range and at every choice, to validate the space."""
    probes = []
    for key, space in search.params.items():
        values = (
            space["choices"] if space["type"] == "categorical" else [space["low"], space["high"]]
        )
        probes += [Trial(f"search-{key}={v}", "probe", {key: v}) for v in values]
    return probes


def sweep_stem(path: Path) -> str:
    """``lr`` for ``lr.sweep.yaml`` or ``lr.yaml``."""
    return path.name.split(".")[0]


def load_sweep(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None
) -> SweepSpec:
    """Parse and validate the sweep file ``path``; ``overrides`` (``key=value``) apply to every
    trial, last; ``out`` replaces the file's ``out``. Every trial's config is built once here."""
    path = Path(path)
    file = validate(SweepFile, read_yaml(path), str(path))
    base = path.parent / file.base
    if not base.is_file():
        raise ConfigError(f"{path}: base: config file not found: {base}")
    for assignment in overrides:
        problem = key_problem(parse_override(assignment)[0])
        if problem:
            raise ConfigError(f"--set '{assignment}': {problem}")
    name = file.name or sweep_stem(path)
    spec = SweepSpec(
        path,
        name,
        base,
        Path(out or file.out or Path("sweeps") / name),
        file.set,
        next(m for m in MODES if getattr(file, m) is not None),
        list(overrides),
        file.seeds,
        base_tree=read_yaml(base),
    )
    _plan(spec, file)
    return spec


def _plan(spec: SweepSpec, file: SweepFile) -> None:
    """Fill ``spec.trials`` (or ``spec.search``) and build every config once to validate it."""
    base_cfg = spec.config(Trial("base", "base", {}))
    if file.search is not None:
        spec.search = _search_spec(file.search, base_cfg.train.monitor, spec.name)
        probes = _search_probes(spec.search)
    else:
        if file.grid is not None:
            named = expand_grid(file.grid)
        else:
            named = [
                (value_text(v.name or f"variant-{i}"), v.set)
                for i, v in enumerate(file.variants or [], 1)
            ]
        spec.trials = plan_trials(named, spec.seeds, str(spec.path))
        probes = spec.trials
    for trial in probes:
        spec.config(trial)


def expand_grid(grid: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for every combination of the grid's values, first key slowest."""
    return [
        (grid_name(dict(zip(grid, c, strict=True))), dict(zip(grid, c, strict=True)))
        for c in itertools.product(*grid.values())
    ]
