"""Sweeps: grid/variants/search files, run folders, all_results.json, resume, failures, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from imagefit import workflow
from imagefit.cli import app
from imagefit.config import Config, load_config
from imagefit.errors import ConfigError, Interrupted
from imagefit.sweep import load_sweep, run_sweep
from imagefit.sweep import runner as sweep_runner
from imagefit.sweep.table import groups_table

from helpers.sweeps import base_tree, read, search_sweep, write_sweep

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class CountingFit:
    """Wraps workflow.train(): counts fresh and resumed calls; can interrupt one trial after an epoch."""

    def __init__(self, interrupt: str | None = None, error: type[BaseException] = Interrupted):
        self.fresh: list[str] = []
        self.resumed: list[str] = []
        self.interrupt, self.error = interrupt, error

    def __call__(
        self, cfg: Config | None = None, *, resume: Path | None = None, on_epoch: Any = None
    ) -> Any:
        if resume is not None:
            self.resumed.append(Path(resume).name)
            return workflow.train(resume=resume, on_epoch=on_epoch)
        self.fresh.append(cfg.output.name)
        if cfg.output.name == self.interrupt:

            def on_epoch(row: dict[str, Any]) -> None:
                raise self.error("stop requested")

        return workflow.train(cfg, on_epoch=on_epoch)


def test_grid_sweep_records_each_run(
    pattern_root: Path, tmp_path: Path, quick_pictures: list
) -> None:
    grid = {"optim.lr": [0.001, 0.01], "optim.name": ["adam", "sgd"]}
    spec = load_sweep(write_sweep(tmp_path, {"grid": grid}, base_tree(pattern_root)))
    result = run_sweep(spec)
    out = tmp_path / "out"
    names = ["lr-0.001_name-adam", "lr-0.001_name-sgd", "lr-0.01_name-adam", "lr-0.01_name-sgd"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == names
    doc = read(out / "all_results.json")
    assert doc["mode"] == "grid" and [t["name"] for t in doc["trials"]] == names
    for trial in doc["trials"]:
        run = out / trial["run_dir"]
        metrics, summary = read(run / "metrics.json"), read(run / "summary.json")
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert trial["status"] == "finished" and trial["error"] is None
        assert config["optim"]["lr"] == trial["overrides"]["optim.lr"]
        assert config["optim"]["name"] == trial["overrides"]["optim.name"]
        assert (
            trial["test"]["accuracy"] == metrics["accuracy"]
            and trial["test"]["loss"] == metrics["loss"]
        )
        assert trial["test"]["f1_macro"] == metrics["f1_macro"]
        for key in (
            "best_val_accuracy",
            "params_total",
            "params_trainable",
            "wall_time_s",
            "train_images_per_s",
        ):
            assert trial[key] == summary[key], key
    lines = (out / "results.csv").read_text().strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith(
        "trial,status,optim.lr,optim.name,seed,best_val_accuracy"
    )
    markdown = (out / "results.md").read_text()
    assert all(f"| {name} | finished | " in markdown for name in names)
    assert result.files["report"] == out / "report.html"
    kinds = {call[0]: call for call in quick_pictures}
    assert sorted(d.name for d in kinds["plot_comparison"][1]) == names
    assert kinds["write_report"][2] == out / "report.html"


@pytest.mark.parametrize("error", [Interrupted, KeyboardInterrupt])
def test_interrupted_sweep_resumes_without_rerunning(
    pattern_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_pictures: list,
    error: type[BaseException],
) -> None:
    path = write_sweep(
        tmp_path,
        {"grid": {"optim.lr": [0.001, 0.002, 0.003, 0.004]}},
        base_tree(pattern_root, epochs=2),
    )
    first = CountingFit(interrupt="lr-0.003", error=error)
    monkeypatch.setattr(sweep_runner, "train", first)
    with pytest.raises(Interrupted, match="again to continue"):
        run_sweep(load_sweep(path))
    runs = tmp_path / "out" / "runs"
    assert first.fresh == ["lr-0.001", "lr-0.002", "lr-0.003"]
    statuses = {
        t["name"]: t["status"] for t in read(tmp_path / "out" / "all_results.json")["trials"]
    }
    assert statuses == {
        "lr-0.001": "finished",
        "lr-0.002": "finished",
        "lr-0.003": "interrupted",
        "lr-0.004": "pending",
    }
    stamps = {
        name: (runs / name / "summary.json").stat().st_mtime_ns for name in ("lr-0.001", "lr-0.002")
    }

    second = CountingFit()
    monkeypatch.setattr(sweep_runner, "train", second)
    result = run_sweep(load_sweep(path))
    assert second.fresh == ["lr-0.004"] and second.resumed == ["lr-0.003"]
    assert all((runs / n / "summary.json").stat().st_mtime_ns == t for n, t in stamps.items())
    assert [r["status"] for r in result.records] == ["finished"] * 4
    assert len(read(runs / "lr-0.003" / "history.json")) == 2  # epoch 1 kept, epoch 2 added


def test_variants_seeds_baseline_and_failure(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_pictures: list
) -> None:
    variants = [
        {"name": "cnn", "set": {"optim.lr": 0.01}},
        {"name": "hog", "set": {"model.name": "hog_svm"}},
        # a valid config that fails when it runs (a typo would stop the sweep at load)
        {"name": "broken", "set": {"data.root": str(tmp_path / "no_such_folder")}},
    ]
    path = write_sweep(tmp_path, {"variants": variants, "seeds": [0, 1]}, base_tree(pattern_root))
    result = run_sweep(load_sweep(path))
    out = tmp_path / "out"
    by_name = {r["name"]: r for r in result.records}
    assert list(by_name) == [
        "cnn-seed0",
        "cnn-seed1",
        "hog-seed0",
        "hog-seed1",
        "broken-seed0",
        "broken-seed1",
    ]
    assert read(out / "runs" / "cnn-seed1" / "environment.json")["seed"] == 1
    hog = by_name["hog-seed0"]
    assert hog["status"] == "finished" and hog["model"] == "hog_svm"
    assert hog["test"]["accuracy"] == read(out / "runs" / "hog-seed0" / "metrics.json")["accuracy"]
    assert hog["params_total"] > 0
    broken = by_name["broken-seed0"]
    assert broken["status"] == "failed" and "no_such_folder" in broken["error"]
    assert read(out / "runs" / "broken-seed0" / "trial.json")["status"] == "failed"
    groups = {g["name"]: g for g in result.groups}
    accs = [by_name[f"cnn-seed{s}"]["test"]["accuracy"] for s in (0, 1)]
    assert groups["cnn"]["test_accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert groups["broken"]["finished"] == 0 and groups["broken"]["test_accuracy"]["mean"] is None
    assert "## Mean ± std over seeds" in (out / "results.md").read_text()
    cnn = by_name["cnn-seed0"]  # parameter counts: one value per trial, not a mean over seeds
    assert groups["cnn"]["params_total"] == cnn["params_total"] > 0
    assert groups["cnn"]["params_trainable"] == cnn["params_trainable"] > 0
    header, rows = groups_table(result.groups)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert cells["cnn"]["params"] == f"{cnn['params_total']:,}"
    assert cells["cnn"]["trainable"] == f"{cnn['params_trainable']:,}"
    assert " ± " in cells["cnn"]["test acc"] and cells["broken"]["params"] == "-"
    assert cells["hog"]["params"] == f"{hog['params_total']:,}"
    means = (out / "results.md").read_text().split("## Mean ± std over seeds")[1]
    assert "| params | trainable |" in means and f"| {cnn['params_total']:,} |" in means

    again = CountingFit()  # finished trials are skipped; the failed one is tried again
    monkeypatch.setattr(sweep_runner, "train", again)
    run_sweep(load_sweep(path))
    assert again.fresh == ["broken-seed0", "broken-seed1"]


def test_rerun_with_another_config_warns(
    pattern_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_pictures: list,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_sweep(tmp_path, {"variants": [{"name": "a", "set": {}}]}, base_tree(pattern_root))
    run_sweep(load_sweep(path))
    counter = CountingFit()
    monkeypatch.setattr(sweep_runner, "train", counter)
    with caplog.at_level(logging.WARNING):
        run_sweep(load_sweep(path, ["optim.lr=0.5"]))
    assert counter.fresh == [] and "trial a ran with other values of optim.lr" in caplog.text


def test_search_prunes_and_continues_its_study(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_pictures: list
) -> None:
    import optuna

    # Validation accuracy never exceeds 1.01, so the threshold pruner must prune every trial
    # at its first report after the warm-up epoch: deterministic, whatever the model learns.
    pruner = {"type": "threshold", "lower": 1.01, "n_warmup_steps": 2}
    path = write_sweep(
        tmp_path, search_sweep(pattern_root, pruner, 2), base_tree(pattern_root, epochs=3)
    )
    result = run_sweep(load_sweep(path))
    out = tmp_path / "out"
    assert [r["name"] for r in result.records] == ["trial-000", "trial-001"]
    assert {r["status"] for r in result.records} == {"pruned"}
    for record in result.records:
        assert (
            len(read(out / "runs" / record["name"] / "history.json")) == 2
        )  # stopped after epoch 2
        assert record["overrides"].keys() == {"optim.lr", "optim.name"}
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2

    counter = CountingFit()  # the study already holds its trials: a rerun runs nothing
    monkeypatch.setattr(sweep_runner, "train", counter)
    again = run_sweep(load_sweep(path))
    assert counter.fresh == [] and [r["status"] for r in again.records] == ["pruned", "pruned"]


def test_search_completes_trials_with_values(
    pattern_root: Path, tmp_path: Path, quick_pictures: list
) -> None:
    path = write_sweep(
        tmp_path, search_sweep(pattern_root, {"type": "none"}, 2), base_tree(pattern_root, epochs=2)
    )
    result = run_sweep(load_sweep(path))
    for record in result.records:
        history = read(tmp_path / "out" / record["run_dir"] / "history.json")
        assert record["status"] == "finished"
        assert record["value"] == max(row["val_accuracy"] for row in history)
    assert read(tmp_path / "out" / "all_results.json")["search"]["direction"] == "maximize"


def test_interrupted_search_trial_resumes(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_pictures: list
) -> None:
    import optuna

    path = write_sweep(
        tmp_path, search_sweep(pattern_root, {"type": "none"}, 2), base_tree(pattern_root, epochs=2)
    )
    monkeypatch.setattr(
        sweep_runner, "train", CountingFit(interrupt="trial-001", error=KeyboardInterrupt)
    )
    with pytest.raises(Interrupted):
        run_sweep(load_sweep(path))
    again = CountingFit()
    monkeypatch.setattr(sweep_runner, "train", again)
    result = run_sweep(load_sweep(path))
    assert again.resumed == ["trial-001"] and again.fresh == []  # the same Optuna trial goes on
    assert [r["name"] for r in result.records] == ["trial-000", "trial-001"]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.trials[1].value == result.records[1]["value"]


def test_shipped_sweeps_parse() -> None:
    """Every sweep in configs/ loads: its base through the typed config, every trial's
    overrides applied and validated (load_sweep builds each trial's Config)."""
    files = sorted(CONFIGS.rglob("*.sweep.yaml"))
    for path in files:
        spec = load_sweep(path)
        assert spec.trials or spec.search, path
    names = {f"{p.parent.name}/{p.name}" for p in files}
    seeds = {
        "ablation/architecture.sweep.yaml",
        "ablation/optimizer.sweep.yaml",
        "ablation/lr.sweep.yaml",
        "ablation/image_size.sweep.yaml",
        "ablation/augmentation.sweep.yaml",
        "ablation/hog_svm.sweep.yaml",
        "dogs/strategies.sweep.yaml",
        "configs/cifar10_scratch_vs_pretrained.sweep.yaml",
    }
    assert seeds <= names
    assert {n.replace("ablation/", "digits/") for n in seeds if n.startswith("ablation/")} <= names
    dogs = load_sweep(CONFIGS / "dogs" / "strategies.sweep.yaml")
    full = dogs.config(next(t for t in dogs.trials if t.name == "efficientnet_b0_full"))
    assert (full.optim.lr, full.train.epochs, full.finetune.strategy) == (1e-5, 20, "full")
    assert (full.optim.name, full.schedule.name, full.train.batch_size, full.train.seed) == (
        "adam",
        "cosine",
        32,
        42,
    )
    # Seed 004 exports at opset 14, INT8 optional: every dogs training config (and so the sweep).
    trained = sorted(p for p in (CONFIGS / "dogs").glob("*.yaml") if ".sweep" not in p.name)
    assert len(trained) == 6
    for cfg in [load_config(p) for p in trained] + [full]:
        assert (cfg.export.onnx, cfg.export.opset, cfg.export.int8) == (True, 14, False)


@pytest.mark.slow
def test_digits_twins_run_in_order(
    digits_root: Path, tmp_path: Path, quick_pictures: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU-sized seed studies run as shipped, from a working folder holding data/digits:
    pretrain first, then seed 004's 2 x 3 strategies from its checkpoints."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "digits").symlink_to(digits_root)
    quick = ["train.limit_batches=1", "train.threads=1"]
    pre = run_sweep(load_sweep(CONFIGS / "digits" / "pretrain.sweep.yaml", quick))
    assert [r["status"] for r in pre.records] == ["finished", "finished"]
    strategies = run_sweep(load_sweep(CONFIGS / "digits" / "strategies.sweep.yaml", quick))
    records = {r["name"]: r for r in strategies.records}
    assert all(r["status"] == "finished" for r in records.values()), records
    trainable = {name: r["params_trainable"] for name, r in records.items()}
    for model in ("simple_cnn", "resnet18"):
        freeze, partial, full = (trainable[f"{model}_{s}"] for s in ("freeze", "partial", "full"))
        assert freeze < partial < full == records[f"{model}_full"]["params_total"]
    init = json.loads(
        (tmp_path / "sweeps/digits_strategies/runs/resnet18_full/summary.json").read_text()
    )["init"]
    assert init["path"] == str(
        (tmp_path / "sweeps/digits_pretrain/runs/resnet18/best.pt").resolve()
    )


@pytest.mark.parametrize(
    ("sweep", "base", "message"),
    [
        (
            {"grid": {"optim.lrr": [1, 2]}},
            True,
            r"s\.sweep\.yaml: grid\.optim\.lrr: unknown config key 'optim\.lrr' "
            r"\(did you mean lr\? optim has: name, lr, ",
        ),
        ({"grid": {"optim": [1]}}, True, r"grid\.optim: 'optim' is a section"),
        ({"grid": {"optim.lr": 0.1}}, True, r"grid\.optim\.lr: Input should be a valid list"),
        ({"grid": {"optim.lr": []}}, True, r"grid\.optim\.lr: List should have at least 1 item"),
        ({"grid": {"optim.lr": ["fast"]}}, True, r"(?s)trial 'lr-fast'.*optim\.lr"),
        (
            {"grid": {"optim.lr": [0.1]}},
            False,
            r"s\.sweep\.yaml: base: config file not found: .*base\.yaml",
        ),
        (
            {"grid": {"optim.lr": [0.1]}, "variants": []},
            True,
            r"exactly one of grid, variants, search",
        ),
        (
            {"grid": {"optim.lr": [0.1]}, "seed": [1]},
            True,
            r"unknown key 'seed' \(did you mean seeds\? the top level has: name, ",
        ),
        (
            {"variants": [{"name": "a", "set": {"model.nmae": "x"}}]},
            True,
            r"variants\[0\]\.set\.model\.nmae: unknown config key 'model\.nmae'",
        ),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, True, r"repeated: a"),
        (
            {"search": {"n_trials": 2, "params": {"optim.lr": {"type": "uniform"}}}},
            True,
            r"search\.params\.optim\.lr: .*'uniform'.*'float', 'int', 'categorical'",
        ),
        (
            {
                "search": {
                    "n_trials": 2,
                    "metric": "test_accuracy",
                    "params": {"optim.lr": {"type": "float", "low": 1, "high": 2}},
                }
            },
            True,
            r"search\.metric: Input should be 'val_accuracy', .* \(got 'test_accuracy'\)",
        ),
    ],
)
def test_sweep_file_errors_name_the_key(
    tmp_path: Path, pattern_root: Path, sweep: dict, base: bool, message: str
) -> None:
    path = write_sweep(tmp_path, sweep, base_tree(pattern_root) if base else None)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_sweep_refuses_to_run_under_torchrun(
    tmp_path: Path, pattern_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_sweep(write_sweep(tmp_path, {"grid": {"optim.lr": [0.1]}}, base_tree(pattern_root)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        run_sweep(spec)
    assert not spec.out.exists()  # nothing written by any of the processes


def test_cli_set_key_is_checked(tmp_path: Path, pattern_root: Path) -> None:
    path = write_sweep(tmp_path, {"grid": {"optim.lr": [0.1]}}, base_tree(pattern_root))
    with pytest.raises(
        ConfigError, match=r"--set 'train\.epoch=2'.*unknown config key 'train\.epoch'"
    ):
        load_sweep(path, ["train.epoch=2"])


def test_cli_sweep_and_baseline(
    tmp_path: Path, pattern_root: Path, quick_pictures: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("COLUMNS", "200")  # rich folds cells to the terminal's width
    path = write_sweep(
        tmp_path,
        {"variants": [{"name": "a", "set": {}}], "seeds": [0, 1]},
        base_tree(pattern_root, limit_batches=None),
    )
    result = runner.invoke(
        app,
        [
            "sweep",
            str(path),
            "--out",
            str(tmp_path / "cli"),
            "--limit-batches",
            "1",
            "--set",
            "train.epochs=1",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "sweep s" in result.output and "all_results" in result.output
    config = yaml.safe_load((tmp_path / "cli" / "runs" / "a-seed0" / "config.yaml").read_text())
    assert config["train"]["limit_batches"] == 1
    # Both tables (per run, and mean ± std over seeds) show size and cost (issue 4 item 7).
    runs_part, means_part = result.output.split("mean ± std over seeds")
    summary = read(tmp_path / "cli" / "runs" / "a-seed0" / "summary.json")
    for part in (runs_part, means_part):
        for title in ("params", "trainable", "wall s", "images/s"):
            assert title in part, (title, part)
        assert f"{summary['params_total']:,}" in part
    assert f"{summary['train_images_per_s']:.1f}" in runs_part

    (tmp_path / "hog.yaml").write_text(
        yaml.safe_dump({**base_tree(pattern_root), "output": {"dir": str(tmp_path / "b")}})
    )
    result = runner.invoke(
        app,
        ["baseline", "hog-svm", str(tmp_path / "hog.yaml"), "--set", "output.name=hog"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "b" / "hog"
    assert (
        read(run / "summary.json")["status"] == "finished"
        and read(run / "metrics.json")["split"] == "test"
    )
    assert "test accuracy" in result.output


def test_report_command_plots_one_run(tmp_path: Path, pattern_root: Path) -> None:
    tree = {**base_tree(pattern_root), "output": {"dir": str(tmp_path), "name": "r"}}
    run = workflow.train(Config.model_validate(tree)).run_dir
    assert (run / "plots" / "training_curves.png").is_file()  # training plots its run
    result = CliRunner().invoke(
        app, ["report", str(run), "--out", str(tmp_path / "r.html")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_plotting_error_does_not_fail_a_run(
    tmp_path: Path,
    pattern_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(run_dir: Path) -> list[Path]:
        raise RuntimeError("no display")

    monkeypatch.setattr("imagefit.evaluate.plots.plot_run", broken)
    tree = {**base_tree(pattern_root), "output": {"dir": str(tmp_path), "name": "r"}}
    with caplog.at_level(logging.WARNING):
        result = workflow.train(Config.model_validate(tree))
    assert result.summary.status == "finished"
    assert "could not write plots (RuntimeError: no display)" in caplog.text
