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
from typing import Any

from imagefit.config import Config, apply_override, config_from_dict, read_yaml
from imagefit.errors import ConfigError

SWEEP_KEYS = ("name", "description", "base", "out", "set", "seeds", "grid", "variants", "search")
MODES = ("grid", "variants", "search")
SEARCH_KEYS = ("params", "n_trials", "metric", "direction", "sampler", "pruner", "storage", "study")
PARAM_TYPES = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
}
# The per-epoch history columns a search can optimise and prune on (fit's history row).
HISTORY_METRICS = (
    "val_accuracy",
    "val_loss",
    "val_top5_accuracy",
    "val_f1_macro",
    "train_accuracy",
    "train_loss",
)
BASELINES = ("hog_svm",)  # model.name values that run a classical baseline instead of fit()


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
            set_dotted(tree, key, value)
        for assignment in self.cli:
            apply_override(tree, assignment)
        set_dotted(tree, "output.dir", str(self.out / "runs"))
        set_dotted(tree, "output.name", trial.name)
        if trial.seed is not None:
            set_dotted(tree, "train.seed", trial.seed)
        return config_from_dict(tree, source=f"{self.path}, trial '{trial.name}'")


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``key`` "a.b" (a typed value, unlike apply_override)."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{key}': '{part}' is not a section")
    node[parts[-1]] = copy.deepcopy(value)


def check_key(key: Any, where: str) -> str:
    """``key`` if it names a config value (not a section); else a ConfigError naming it."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: {key!r} is not a dotted config key such as optim.lr")
    model: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise ConfigError(
                f"{where}: '{key}' is not a config key "
                f"('{'.'.join(parts[:depth])}' is a value, not a section)"
            )
        if part not in fields:
            section = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"{where}: unknown config key '{key}' ({section} has: {', '.join(fields)})"
            )
        model = fields[part].annotation
    if getattr(model, "model_fields", None):
        raise ConfigError(f"{where}: '{key}' is a section; name one of its keys ({key}.<key>)")
    return key


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _assignments(value, where)
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be a mapping of dotted key -> value, got {type(value).__name__}"
        )
    return {check_key(k, f"{where} key {k!r}"): v for k, v in value.items()}


def _assignments(items: list[str], where: str) -> dict[str, Any]:
    """``["a.b=1", ...]`` (the ``--set`` form) as a typed mapping."""
    result: dict[str, Any] = {}
    for item in items:
        tree: dict[str, Any] = {}
        apply_override(tree, item)
        key = item.partition("=")[0].strip()
        check_key(key, f"{where} '{item}'")
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        result[key] = node
    return result


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


def expand_grid(grid: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for every combination of the grid's values, first key slowest."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{where}: 'grid' must map dotted config keys to lists of values")
    for key, values in grid.items():
        check_key(key, f"{where}: grid key {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{where}: grid key '{key}' must list one or more values, got {values!r}"
            )
    combos = itertools.product(*grid.values())
    return [
        (grid_name(dict(zip(grid, c, strict=True))), dict(zip(grid, c, strict=True)))
        for c in combos
    ]


def expand_variants(variants: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) of each ``{name, set}`` entry."""
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"{where}: 'variants' must be a list of {{name, set}} entries")
    result = []
    for index, entry in enumerate(variants):
        label = f"{where}: variant {index + 1}"
        if not isinstance(entry, dict) or set(entry) - {"name", "set"}:
            raise ConfigError(
                f"{label} must be a mapping with keys 'name' and 'set', got {entry!r}"
            )
        name = value_text(entry.get("name", f"variant-{index + 1}"))
        result.append((name, _mapping(entry.get("set"), f"{label} ('{name}') set")))
    return result


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


def _seeds(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and s >= 0 for s in value)
    ):
        raise ConfigError(
            f"{where}: 'seeds' must be a list of non-negative integers, got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: 'seeds' repeats a seed: {value}")
    return value


def _check_param(key: str, space: Any, where: str) -> dict[str, Any]:
    label = f"{where}: search.params '{key}'"
    check_key(key, label)
    if not isinstance(space, dict) or space.get("type") not in PARAM_TYPES:
        raise ConfigError(f"{label} needs 'type': one of {', '.join(PARAM_TYPES)} (got {space!r})")
    allowed = PARAM_TYPES[space["type"]]
    unknown = set(space) - {"type", *allowed}
    if unknown:
        raise ConfigError(
            f"{label}: unknown field(s) {sorted(unknown)}; {space['type']} takes {allowed}"
        )
    if space["type"] == "categorical":
        if not isinstance(space.get("choices"), list) or not space["choices"]:
            raise ConfigError(f"{label}: 'choices' must be a non-empty list")
    elif (
        not isinstance(space.get("low"), int | float)
        or not isinstance(space.get("high"), int | float)
        or space["low"] > space["high"]
    ):
        raise ConfigError(
            f"{label}: needs numbers 'low' <= 'high' (got {space.get('low')!r}, {space.get('high')!r})"
        )
    return space


def parse_search(raw: Any, default_metric: str, default_study: str, where: str) -> SearchSpec:
    """The validated ``search:`` section."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: 'search' must be a mapping with at least 'params' and 'n_trials'"
        )
    unknown = set(raw) - set(SEARCH_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown search key(s) {sorted(unknown)}; allowed: {', '.join(SEARCH_KEYS)}"
        )
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: search.params must map dotted config keys to parameter spaces")
    n_trials = raw.get("n_trials")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"{where}: search.n_trials must be a positive integer, got {n_trials!r}")
    metric = raw.get("metric", default_metric)
    if metric not in HISTORY_METRICS:
        raise ConfigError(
            f"{where}: search.metric '{metric}' is not one of {', '.join(HISTORY_METRICS)}"
        )
    direction = raw.get("direction", "minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(
            f"{where}: search.direction must be minimize or maximize, got {direction!r}"
        )
    for name in ("sampler", "pruner"):
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError(f"{where}: search.{name} must be a mapping such as {{type: median}}")
    return SearchSpec(
        {k: _check_param(k, v, where) for k, v in params.items()},
        n_trials,
        metric,
        direction,
        raw.get("sampler", {}),
        raw.get("pruner", {}),
        raw.get("storage"),
        str(raw.get("study", default_study)),
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
    raw = read_yaml(path)
    unknown = set(raw) - set(SWEEP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {', '.join(SWEEP_KEYS)}"
        )
    modes = [m for m in MODES if m in raw]
    if len(modes) != 1:
        raise ConfigError(
            f"{path}: a sweep needs exactly one of {', '.join(MODES)} (found {modes or 'none'})"
        )
    if not isinstance(raw.get("base"), str):
        raise ConfigError(
            f"{path}: 'base' must name the base config file (relative to the sweep file)"
        )
    base = path.parent / raw["base"]
    if not base.is_file():
        raise ConfigError(f"{path}: base config not found: {base}")
    name = value_text(raw.get("name", sweep_stem(path)))
    spec = SweepSpec(
        path,
        name,
        base,
        Path(out or raw.get("out") or Path("sweeps") / name),
        _mapping(raw.get("set"), f"{path}: set"),
        modes[0],
        list(overrides),
        _seeds(raw.get("seeds"), str(path)),
        base_tree=read_yaml(base),
    )
    for assignment in spec.cli:
        check_key(assignment.partition("=")[0].strip(), f"--set '{assignment}'")
    _plan(spec, raw)
    return spec


def _plan(spec: SweepSpec, raw: dict[str, Any]) -> None:
    """Fill ``spec.trials`` (or ``spec.search``) and build every config once to validate it."""
    where = str(spec.path)
    base_cfg = spec.config(Trial("base", "base", {}))
    if spec.mode == "search":
        spec.search = parse_search(raw["search"], base_cfg.train.monitor, spec.name, where)
        probes = _search_probes(spec.search)
    else:
        named = (
            expand_grid(raw["grid"], where)
            if spec.mode == "grid"
            else expand_variants(raw["variants"], where)
        )
        spec.trials = plan_trials(named, spec.seeds, where)
        probes = spec.trials
    for trial in probes:
        spec.config(trial)
