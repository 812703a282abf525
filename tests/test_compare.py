"""Honest comparison: McNemar against hand computation, paired intervals, the diff refusing
runs tested on different files, and sweep variants against a baseline."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagefit.cli import app, main
from imagefit.errors import DataError
from imagefit.evaluate.compare import (
    bootstrap_interval,
    compare_runs,
    mcnemar_test,
    variants_vs_baseline,
    write_diff_page,
)
from imagefit.evaluate.ledger import count_test_uses
from imagefit.train.fit import fit

from conftest import tiny_config


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    return a, b


def test_mcnemar_exact_below_25_discordant_matches_the_binomial_by_hand() -> None:
    result = mcnemar_test(*_pairs(50, 3, 12, 5))
    # two-sided: 2 * P(X <= 3), X ~ Binomial(15, 1/2)
    by_hand = 2 * sum(math.comb(15, k) for k in range(4)) / 2**15
    assert result["method"] == "exact binomial" and result["discordant"] == 15
    assert result["p_value"] == pytest.approx(by_hand)  # 0.0352
    assert result["table"] == [[50, 3], [12, 5]]


def test_mcnemar_chi_squared_with_continuity_correction_by_hand() -> None:
    result = mcnemar_test(*_pairs(100, 10, 30, 20))
    statistic = (abs(10 - 30) - 1) ** 2 / (10 + 30)  # 9.025
    assert result["method"].startswith("chi-squared")
    assert result["statistic"] == pytest.approx(statistic)
    # the chi-squared survival function with one degree of freedom
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_images() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(100) < 0.8
    large = rng.random(2000) < 0.8
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)


def test_variants_vs_baseline_pairs_images_and_seeds() -> None:
    rng = np.random.default_rng(1)
    hard = rng.random(400) < 0.3  # images every variant finds hard
    base = [~hard & (rng.random(400) < 0.9) for _ in range(3)]
    better = [~hard | (rng.random(400) < 0.5) for _ in range(3)]
    same = [~hard & (rng.random(400) < 0.9) for _ in range(3)]
    rows = variants_vs_baseline({"base": base, "better": better, "same": same})
    by = {r["name"]: r for r in rows}
    assert "interval" not in by["base"]
    assert by["better"]["beats_baseline"] and by["better"]["interval"][0] > 0
    assert not by["same"]["beats_baseline"] and not by["same"]["worse_than_baseline"]
    low, high = by["same"]["interval"]
    assert low < 0 < high
    with pytest.raises(DataError, match="baseline 'nope'"):
        variants_vs_baseline({"base": base}, baseline="nope")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from conftest import write_pattern_folder

    tmp = tmp_path_factory.mktemp("diff")
    root = write_pattern_folder(tmp / "patterns", per_class=20)
    a = fit(tiny_config(root, tmp / "a", train={"epochs": 1})).run_dir
    b = fit(tiny_config(root, tmp / "b", train={"epochs": 4, "seed": 1})).run_dir
    other = fit(tiny_config(root, tmp / "c", data={"split_seed": 7}, train={"epochs": 1})).run_dir
    return a, b, other


def test_diff_pairs_two_runs_on_their_shared_test_split(two_runs, tmp_path: Path) -> None:
    a, b, _ = two_runs
    result = compare_runs(a, b)
    metrics_a = json.loads((a / "metrics.json").read_text())
    metrics_b = json.loads((b / "metrics.json").read_text())
    assert result["images"] == metrics_a["num_samples"]
    assert result["accuracy_a"] == pytest.approx(metrics_a["accuracy"])
    assert result["accuracy_b"] == pytest.approx(metrics_b["accuracy"])
    m = result["mcnemar"]
    assert len(result["flipped"]) == m["discordant"]
    assert sum(f["change"] == "fixed" for f in result["flipped"]) == m["only_b_right"]
    assert (a / "test_predictions.npz").is_file() and count_test_uses(a) >= 2
    page = write_diff_page(result, tmp_path / "diff.html")
    text = page.read_text()
    assert "McNemar" in text and text.count("data:image/jpeg;base64") == m["discordant"]


def test_diff_refuses_runs_tested_on_different_splits(
    two_runs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    a, _, other = two_runs
    with pytest.raises(DataError, match="different test splits"):
        compare_runs(a, other)
    monkeypatch.setattr(sys, "argv", ["imagefit", "diff", str(a), str(other)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_diff_cli_writes_the_page(two_runs, tmp_path: Path) -> None:
    a, b, _ = two_runs
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["diff", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "McNemar" in result.output and out.is_file()


def test_sweep_table_gains_the_baseline_comparison(tmp_path: Path) -> None:
    from imagefit.sweep.runner import run_sweep
    from imagefit.sweep.spec import load_sweep

    from conftest import write_pattern_folder

    root = write_pattern_folder(tmp_path / "patterns", per_class=16)
    base = tmp_path / "base.yaml"
    from imagefit.config import dump_config

    base.write_text(dump_config(tiny_config(root, tmp_path / "unused", train={"epochs": 1})))
    (tmp_path / "s.yaml").write_text(
        f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0, 1]\n"
        "variants:\n  - {name: a, set: {optim.lr: 0.003}}\n  - {name: b, set: {optim.lr: 0.01}}\n"
    )
    spec = load_sweep(tmp_path / "s.yaml")
    run_sweep(spec)
    result = CliRunner().invoke(app, ["diff", str(spec.out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((spec.out / "vs_baseline.json").read_text())
    assert [r["name"] for r in rows] == ["a", "b"] and rows[1]["seeds"] == 2
    low, high = rows[1]["interval"]
    assert low <= rows[1]["difference"] <= high
    run_sweep(spec)  # finished trials are skipped; the table now has the predictions it needs
    assert "Difference to the first variant" in (spec.out / "results.md").read_text()
    page = (spec.out / "report.html").read_text(encoding="utf-8")  # the sweep's report shows it
    baseline = page[page.index('<section id="baseline">') :]
    assert "<td>b</td>" in baseline and "at 95%" in baseline
