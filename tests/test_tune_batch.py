"""tune-batch: doubling then bisection with real steps, stopped by the memory limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.errors import ConfigError
from imagefit.train import tune_batch as tune

from conftest import tiny_config


def test_search_doubles_then_bisects_on_multiples_of_8() -> None:
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= 50

    assert tune.search(fits, max_batch=4096) == 48
    assert tried == [2, 4, 8, 16, 32, 64, 48, 56]
    assert tune.search(lambda b: b <= 5, 4096) == 5  # below 8: steps of one
    assert tune.search(lambda b: True, 100) == 100  # capped
    assert tune.search(lambda b: False, 100) == 0


class FakeRam(tune.HostMemory):
    """Host RAM of 1.5 GiB where a step of batch b peaks at 1 GiB + b x 10 MiB (x 20 MiB past
    batch ``kink``: growth that the earlier probes cannot predict)."""

    def __init__(self, batches: list[int], kink: int = 10**9):
        self.batches, self.kink = batches, kink

    def total(self) -> int:
        return int(1.5 * tune.GIB)

    def measure(self, step) -> int:
        step()  # the real step runs
        batch = self.batches[-1]
        return tune.GIB + batch * (10 if batch <= self.kink else 20) * 2**20


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes of the real training steps that tune_batch runs."""
    batches: list[int] = []
    step = tune._Trainer.step

    def recording_step(self: tune._Trainer, batch: int) -> None:
        batches.append(batch)
        step(self, batch)

    monkeypatch.setattr(tune._Trainer, "step", recording_step)
    return batches


def test_tune_batch_stops_at_the_memory_limit(
    pattern_root: Path, tmp_path: Path, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune, "HostMemory", lambda: FakeRam(batches))
    result = tune.tune_batch(tiny_config(pattern_root, tmp_path), headroom=0.1)
    # limit 1.35 GiB = 1 GiB + 35.84 batches of 10 MiB: 32 fits, 64 is over
    assert result.largest == 32 and result.memory == "host RAM"
    assert result.limit_bytes == int(1.5 * tune.GIB * 0.9)
    probes = {p.batch: p for p in result.probes}
    assert [b for b in sorted(probes) if probes[b].fits] == [2, 4, 8, 16, 32]
    # 64, 48 and 40 are predicted from the measured growth and never run: on a CPU running
    # out of memory kills the process
    assert {b for b in probes if probes[b].note.startswith("predicted")} == {64, 48, 40}
    assert not {64, 48, 40} & set(batches)


def test_a_measured_peak_over_the_limit_does_not_fit(
    pattern_root: Path, tmp_path: Path, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tune, "HostMemory", lambda: FakeRam(batches, kink=16))
    result = tune.tune_batch(tiny_config(pattern_root, tmp_path), headroom=0.1)
    probes = {p.batch: p for p in result.probes}
    assert result.largest == 16 and probes[32].note == probes[24].note == "over the limit"
    assert 32 in batches and 24 in batches


def test_balanced_class_weights_do_not_stop_the_probes(
    pattern_root: Path, tmp_path: Path, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.class_weights=balanced used to fail with "train split has no images": the probes'
    loss was built from no labels."""
    monkeypatch.setattr(tune, "HostMemory", lambda: FakeRam(batches))
    cfg = tiny_config(pattern_root, tmp_path, train={"class_weights": "balanced"})
    assert tune.tune_batch(cfg, headroom=0.1).largest == 32
    assert cfg.train.class_weights == "balanced"  # the caller's config is left as it was


def test_nothing_fits(pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ram = FakeRam([])
    monkeypatch.setattr(ram, "total", lambda: tune.GIB)
    monkeypatch.setattr(tune, "HostMemory", lambda: ram)
    monkeypatch.setattr(tune._Trainer, "step", lambda self, b: ram.batches.append(b))
    with pytest.raises(ConfigError, match="not even a batch of 2 fits simple_cnn"):
        tune.tune_batch(tiny_config(pattern_root, tmp_path))


def test_cli_prints_the_table(pattern_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(pattern_root, tmp_path).to_dict()))
    result = CliRunner().invoke(
        app,
        [
            "tune-batch",
            str(config),
            "--max-batch",
            "8",
            "--set",
            "data.image_size=20",
            "--set",
            "train.class_weights=balanced",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "simple_cnn at 20 px" in result.output and "host RAM" in result.output
    assert "largest batch that fits: 8" in result.output
    assert tune.count_classes(tiny_config(pattern_root, tmp_path)) == 3
