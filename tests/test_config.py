from pathlib import Path

import pytest
import yaml

from imagefit.config import Config, dump_config, load_config
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
