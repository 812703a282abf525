import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import get_args

import pytest
import yaml

import imagefit
from imagefit import dotted, model_names
from imagefit.config import (
    Config,
    HistoryMetric,
    OptimizerName,
    ScheduleName,
    dump_config,
    load_config,
    parse_override,
)
from imagefit.errors import ConfigError

CONTRACT_KEYS = [
    "data.root",
    "data.image_size",
    "data.augment",
    "model.name",
    "model.init",
    "finetune.strategy",
    "optim.name",
    "optim.lr",
    "schedule.name",
    "train.epochs",
    "train.batch_size",
    "train.seed",
    "output.dir",
    "output.name",
]


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_contract_keys_exist(key: str) -> None:
    section, name = key.split(".")
    assert name in Config().to_dict()[section]


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet34}\noptim: {lr: 0.1}\n")
    cfg = load_config(path, ["optim.lr=1e-4", "data.augment=false", "augment.scale=[0.5, 1.0]"])
    assert cfg.model.name == "resnet34"
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.data.augment is False
    assert cfg.augment.scale == (0.5, 1.0)
    assert cfg.train.epochs == Config().train.epochs  # untouched defaults stay


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["train.epochs=7", "finetune.strategy=partial", "model.init=hub:resnet18"]
    )
    path = tmp_path / "back.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("train.epoch=3", ["unknown key", "train.epoch"]),
        ("nosuch.key=1", ["unknown key", "nosuch"]),
        ("train.epochs=abc", ["train.epochs", "abc"]),
        ("finetune.strategy=half", ["finetune.strategy", "half"]),
        ("optim.lr=-1", ["optim.lr"]),
        ("train.monitor=accuracy", ["train.monitor"]),
    ],
)
def test_errors_name_the_key(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for name in names:
        assert name in str(info.value)


def test_malformed_override_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_shipped_configs_parse() -> None:
    configs = Path(__file__).parent.parent / "configs"
    for path in sorted(configs.rglob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        if (
            "base" in tree
            or "grid" in tree
            or "variants" in tree
            or "search" in tree
            or "pretrain" in tree
        ):
            continue  # sweep and pipeline files are checked by their own tests
        load_config(path)


# ------------------------------------------------------------------ closed sets at load

SRC = Path(imagefit.__file__).resolve().parents[1]


def test_closed_sets_equal_their_registries() -> None:
    """The Literals config.py declares (it must not import torch) are the registries' keys."""
    from imagefit.data.decode import DECODERS
    from imagefit.datasets.fractal.render import DRAW_ALIASES, DRAW_MODES
    from imagefit.models.registry import list_models
    from imagefit.pipeline import DrawMode
    from imagefit.sweep.search import PRUNERS, SAMPLERS
    from imagefit.sweep.spec import PrunerName, SamplerName
    from imagefit.train.optim import OPTIMIZERS, SHAPES

    assert set(get_args(OptimizerName)) == set(OPTIMIZERS)
    assert set(get_args(ScheduleName)) == set(SHAPES)
    assert set(get_args(SamplerName)) == set(SAMPLERS)
    assert set(get_args(PrunerName)) == set(PRUNERS)
    assert set(get_args(DrawMode)) == set(DRAW_MODES) | set(DRAW_ALIASES)
    assert set(model_names.OWN_MODELS) == set(list_models())
    assert set(
        get_args(Config.model_fields["data"].annotation.model_fields["decoder"].annotation)
    ) == set(DECODERS)


def test_monitor_choices_are_the_history_columns(pattern_root: Path, tmp_path: Path) -> None:
    from imagefit.train.fit import fit

    from conftest import tiny_config

    run = fit(tiny_config(pattern_root, tmp_path, train={"epochs": 1, "limit_batches": 1}))
    row = json.loads((run.run_dir / "history.json").read_text())[0]
    metrics = {k for k in row if k.startswith(("train_", "val_"))}
    # val_map: a multi-label run's column (test_multilabel checks that it is written)
    assert set(get_args(HistoryMetric)) == metrics | {"val_map"}


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.name=lamb", ["optim.name", "'adam', 'adamw' or 'sgd'", "'lamb'"]),
        ("schedule.name=linear", ["schedule.name", "'cosine'", "'linear'"]),
        ("train.monitor=val_acc", ["train.monitor", "'val_accuracy'", "'val_acc'"]),
        ("train.device=gpu", ["train.device", "auto, cpu, cuda, cuda:N, mps", "'gpu'"]),
        ("model.name=resnt50", ["model.name", "'resnt50'", "did you mean resnet50"]),
        ("model.name=simple_cn", ["model.name", "did you mean simple_cnn"]),
        ("model.init=hub:resnet5O", ["model.init", "'resnet5O'", "did you mean resnet50"]),
        ("model.init=hub:resnet18.a1_in1kk", ["model.init", "resnet18.a1_in1k,"]),
        ("model.init=hub:resnet50.a1_in1k", ["model.init", "not a 'resnet18' architecture"]),
    ],
)
def test_closed_sets_fail_at_load(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.name=efficientnet_b0"],
        ["model.name=resnet50.a1_in1k"],  # a pretrained tag on the architecture
        ["model.name=resnet50", "model.init=hub:resnet50.a1_in1k"],
        ["model.name=resnet18", "model.init=hub:resnet18"],
        ["model.name=hog_svm", "model.init=hub:resnet50.tv_in1k"],  # a baseline ignores init
        ["model.name=simple_cnn", "model.init=runs/x/best.pt"],  # a file may come later
    ],
)
def test_known_model_names_load(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_own_model_has_no_hub_weights() -> None:
    with pytest.raises(ConfigError, match=r"model\.init: model 'simple_cnn' has no hub weights"):
        load_config(None, ["model.name=simple_cnn", "model.init=hub:resnet18"])


def test_timm_names_are_cached_per_timm_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built once (importing timm), then read from the cache file without importing timm."""
    env = {**os.environ, "IMAGEFIT_CACHE": str(tmp_path), "PYTHONPATH": str(SRC)}
    version = metadata.version("timm")
    probe = (
        "import sys; from imagefit.config import load_config; "
        "load_config(None, ['model.name=convnext_tiny']); print('timm' in sys.modules)"
    )
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    cache = json.loads((tmp_path / f"timm-models-{version}.json").read_text())
    assert cache["timm"] == version and "convnext_tiny" in cache["models"]
    assert "resnet50.a1_in1k" in cache["pretrained"]
    second = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.strip() == "False", second.stderr
    # a cache written for another timm version is not trusted
    (tmp_path / f"timm-models-{version}.json").write_text(
        json.dumps({"timm": "0.0", "models": [], "pretrained": []})
    )
    monkeypatch.setenv("IMAGEFIT_CACHE", str(tmp_path))
    model_names._catalog_cached.cache_clear()
    try:
        assert "convnext_tiny" in model_names.timm_catalog()[0]
    finally:
        model_names._catalog_cached.cache_clear()
    assert json.loads((tmp_path / f"timm-models-{version}.json").read_text())["timm"] == version


def test_a_model_registered_at_run_time_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefit.models import registry

    names = {**dict.fromkeys(registry.MODELS), "tiny_test_net": None}
    monkeypatch.setattr(registry, "MODELS", names)  # as a program's own registration would
    assert load_config(None, ["model.name=tiny_test_net"]).model.name == "tiny_test_net"


# ------------------------------------------------------------------ one --set parser


@pytest.mark.parametrize(
    ("assignment", "key", "value"),
    [
        ("data.root=2024", "data.root", "2024"),  # text stays text
        ("output.name=1e-3", "output.name", "1e-3"),
        ("train.amp=off", "train.amp", "off"),  # YAML 1.1 would read False
        ("data.root='my data'", "data.root", "my data"),
        ("data.root=null", "data.root", None),
        ("optim.lr=1e-3", "optim.lr", 1e-3),  # numbers, bools and lists parse
        ("train.epochs=3", "train.epochs", 3),
        ("data.augment=false", "data.augment", False),
        ("augment.scale=[0.5, 1.0]", "augment.scale", [0.5, 1.0]),
        ("train.grad_clip=null", "train.grad_clip", None),
    ],
)
def test_set_values_follow_the_field_type(assignment: str, key: str, value: object) -> None:
    assert parse_override(assignment) == (key, value)


def test_text_fields_keep_text_everywhere(tmp_path: Path, pattern_root: Path) -> None:
    """``data.root=2024`` is the folder "2024" in train, sweep and pipeline alike."""
    from imagefit.pipeline import load_pipeline
    from imagefit.sweep import load_sweep

    assert load_config(None, ["data.root=2024"]).data.root == "2024"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"name": "simple_cnn"}}))
    sweep = tmp_path / "s.sweep.yaml"
    sweep.write_text(
        yaml.safe_dump({"base": "base.yaml", "set": ["output.dir=7"], "grid": {"optim.lr": [0.1]}})
    )
    spec = load_sweep(sweep, ["data.root=2024", "train.epochs=3"])
    cfg = spec.config(spec.trials[0])
    assert (cfg.data.root, cfg.train.epochs, spec.common) == ("2024", 3, {"output.dir": "7"})
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        yaml.safe_dump({"pretrain": {"config": "base.yaml"}, "finetune": {"config": "base.yaml"}})
    )
    spec = load_pipeline(
        pipeline,
        [
            "finetune.data.root=2024",
            "pretrain.train.epochs=2",
            "finetune.seeds=[3, 4]",
            "fractal.categories=6",
            "fractal.render.draw=gray",
            "data.root=2025",
        ],
    )
    assert spec.file.finetune.set == {"data.root": "2024"}
    assert spec.file.pretrain.set == {"train.epochs": 2}
    assert spec.file.finetune.seeds == [3, 4] and spec.file.fractal.categories == 6
    assert spec.common == ["data.root=2025"]


def test_pipeline_step_keys_fail_at_load(tmp_path: Path) -> None:
    from imagefit.pipeline import load_pipeline

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"name": "simple_cnn"}}))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "pretrain": {"config": "base.yaml", "set": {"optim.name": "adm"}},
                "finetune": {"config": "base.yaml"},
                "fractal": {"render": {"draw": "grey"}},
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(pipeline)
    assert "p.yaml: fractal.render.draw: Input should be 'patch_gray'" in str(info.value)
    pipeline.write_text(pipeline.read_text().replace("grey", "gray"))
    with pytest.raises(ConfigError, match=r"p\.yaml, pretrain .*: optim\.name: .*'adm'"):
        load_pipeline(pipeline)
    with pytest.raises(ConfigError, match=r"p\.yaml, pretrain .*train\.epochs"):
        load_pipeline(pipeline, ["pretrain.train.epochs=many", "pretrain.optim.name=adam"])
    with pytest.raises(ConfigError, match=r"--set 'train\.epoch=2': unknown config key"):
        load_pipeline(pipeline, ["train.epoch=2", "pretrain.optim.name=adam"])


def test_every_problem_is_one_line_naming_its_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 0, epoch: 3}\noptim: {name: adm}\naugment: {scale: [a, 1]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{path}: ") for line in lines)
    text = "\n".join(lines)
    for key in ("train.epochs:", "unknown key 'train.epoch'", "optim.name:", "augment.scale[0]:"):
        assert key in text
    assert "did you mean epochs?" in text


def test_dotted_helpers() -> None:
    tree: dict = {}
    dotted.set_key(tree, "a.b.c", [1])
    assert tree == {"a": {"b": {"c": [1]}}} and dotted.get(tree, "a.b.c") == [1]
    assert dotted.get(tree, "a.x", None) is None
    assert dotted.flatten({"a": {"b": 1, "c": {}}, "d": None}) == {"a.b": 1, "a.c": {}, "d": None}
    with pytest.raises(ConfigError, match="'a.b.c.d': 'c' holds a value"):
        dotted.set_key(tree, "a.b.c.d", 1)
    with pytest.raises(ConfigError, match="not a dotted key"):
        dotted.set_key(tree, "a..b", 1)


# ------------------------------------------------------------------ the CLI fails early


def _cli(args: list[str], cwd: Path, cache: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``imagefit ARGS`` in a fresh process; report whether torch was imported."""
    code = (
        "import sys\n"
        "from imagefit.cli import main\n"
        f"sys.argv = ['imagefit', *{args!r}]\n"
        "try:\n    main()\nfinally:\n    print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "IMAGEFIT_CACHE": str(cache), "PYTHONPATH": str(SRC)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    return done, time.perf_counter() - started


@pytest.fixture
def warm_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder that holds timm's names (the first ever check builds it)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMAGEFIT_CACHE", str(cache))
    model_names._catalog_cached.cache_clear()
    model_names.timm_catalog()
    return cache


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train: {epoch: 3}", "train.epoch"),
        ("optim: {lr: fast}", "optim.lr"),
        ("model: {name: resnet5}", "model.name"),
        ("schedule: {name: cosin}", "schedule.name"),
    ],
)
def test_train_fails_before_torch_and_before_a_run_folder(
    tmp_path: Path, warm_catalog: Path, text: str, key: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {{dir: runs, name: exp}}\n{text}\n")
    done, seconds = _cli(["train", str(config)], tmp_path, warm_catalog)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and key in error[0] and "Traceback" not in done.stderr
    assert "torch imported: False" in done.stdout
    assert not (tmp_path / "runs").exists()  # the fixed rerun gets runs/exp, not runs/exp-2
    assert seconds < 5


def test_config_show_and_sweep_fail_fast_on_a_typo(tmp_path: Path, warm_catalog: Path) -> None:
    (tmp_path / "base.yaml").write_text("model: {name: resnet18}\n")
    done, seconds = _cli(
        ["config", "show", "base.yaml", "--set", "model.name=resnet81"], tmp_path, warm_catalog
    )
    assert done.returncode == 2 and seconds < 5
    assert "model.name: unknown model 'resnet81'; did you mean resnet18" in done.stderr
    sweep = tmp_path / "s.sweep.yaml"
    sweep.write_text(
        "base: base.yaml\nout: out\ngrid: {model.name: [resnet18, resnet34, efficentnet_b0]}\n"
    )
    done, seconds = _cli(["sweep", str(sweep)], tmp_path, warm_catalog)
    assert done.returncode == 2 and seconds < 5, done.stderr
    assert "trial 'name-efficentnet_b0': model.name: unknown model" in done.stderr
    assert "did you mean efficientnet_b0" in done.stderr
    assert "torch imported: False" in done.stdout
    assert not (tmp_path / "out").exists()  # no sweep folder, no first trial
