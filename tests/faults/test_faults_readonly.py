"""Places that cannot be written, and studies with holes: one line naming the path, exit 2;
a sweep or pipeline whose trials failed exits 1 and names them.

Tests run as root here and in CI, and root ignores permission bits, so a read-only folder is a
real read-only bind mount (``mount -o remount,ro,bind``: EROFS from the kernel, exactly what a
container's ``:ro`` volume gives); skipped where mount is not allowed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imagefit import cli
from imagefit.config import config_from_dict
from imagefit.train.fit import fit

from conftest import write_pattern_folder

pytestmark = pytest.mark.faults


def run_cli(args: list[str], capsys: pytest.CaptureFixture, monkeypatch) -> tuple[int, str]:
    """``imagefit ARGS`` through the real entry point (its top-level error handling included);
    returns the exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["imagefit", "-q", *args])
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_line(err: str, *parts: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], err


def tree(root: Path, out: Path, **sections: dict) -> dict:
    result = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "train": {"epochs": 1, "batch_size": 8, "seed": 0, "threads": 1},
        "output": {"dir": str(out), "name": "run"},
    }
    for section, values in sections.items():
        result.setdefault(section, {}).update(values)
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("readonly")
    root = write_pattern_folder(base / "patterns")
    run = fit(config_from_dict(tree(root, base / "runs"))).run_dir
    return {"base": base, "root": root, "run": run}


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator:
    """``make(folder)``: ``folder`` becomes a read-only bind mount of itself until the test ends."""
    mounted: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for args in (["--bind"], ["-o", "remount,ro,bind"]):
            done = subprocess.run(
                ["mount", *args, str(folder), str(folder)], capture_output=True, text=True
            )
            if done.returncode != 0:
                if mounted or args == ["-o", "remount,ro,bind"]:
                    subprocess.run(["umount", str(folder)], check=False)
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
        mounted.append(folder)
        probe = folder / ".probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_train_into_a_read_only_output_folder(
    lab: dict, tmp_path: Path, read_only, capsys, monkeypatch
) -> None:
    out = read_only(tmp_path / "out")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree(lab["root"], out)))
    code, err = run_cli(["train", str(config)], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, str(out / "run"), "read-only filesystem")


def test_read_only_image_cache(lab: dict, tmp_path: Path, read_only, capsys, monkeypatch) -> None:
    cache = read_only(tmp_path / "cache")
    config = tmp_path / "c.yaml"
    data = {"root": str(lab["root"]), "image_size": 16, "num_workers": 0, "cache_dir": str(cache)}
    config.write_text(yaml.safe_dump(tree(lab["root"], tmp_path / "runs", data=data)))
    code, err = run_cli(["train", str(config)], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, str(cache), "image cache", "read-only filesystem", "IMAGEFIT_CACHE")


def test_read_only_run_folder_resume_report_export(
    lab: dict, tmp_path: Path, read_only, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(lab["run"], run)
    read_only(run)
    for args, culprit in (
        (["train", "--resume", str(run)], str(run)),
        (["report", str(run)], str(run / "report.html")),  # the page is written first
        (["export", str(run), "--onnx"], str(run)),
        (["export", str(run), "--onnx", "--out", str(tmp_path / "m.onnx")], str(run)),
    ):
        code, err = run_cli(args, capsys, monkeypatch)
        assert code == 2, (args, err)
        assert_one_line(err, culprit, "read-only filesystem")
        assert "opset" not in err  # the model is fine: only the folder is at fault
    # A page written elsewhere still works: the run folder's own plots are what is skipped.
    code, err = run_cli(
        ["report", str(run), "--out", str(tmp_path / "r.html")], capsys, monkeypatch
    )
    assert code == 0, err
    assert (tmp_path / "r.html").stat().st_size > 1000


def test_unwrapped_os_error_is_one_line_at_the_top(capsys, monkeypatch) -> None:
    """The last net: an OSError from the file system that no layer wrapped is still one line."""
    import errno

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/models/x.yaml")

    monkeypatch.setattr("imagefit.cli.run.load_config", refuse, raising=False)
    monkeypatch.setattr("imagefit.config.load_config", refuse)
    code, err = run_cli(["config", "show", "whatever.yaml"], capsys, monkeypatch)
    assert code == 2
    assert_one_line(err, "/data/models/x.yaml", "permission denied (EACCES)")


def test_bad_opset_is_one_line_before_any_work(lab: dict, capsys, monkeypatch) -> None:
    for opset in ("3", "99"):
        code, err = run_cli(
            ["export", str(lab["run"]), "--onnx", "--opset", opset], capsys, monkeypatch
        )
        assert code == 2
        assert_one_line(err, f"--opset {opset}", "exports ONNX opsets 7 to")
    assert not (lab["run"] / "model.onnx").exists()


def test_exporter_failure_is_one_line_with_details_in_debug_log(
    lab: dict, tmp_path: Path, capsys, monkeypatch, caplog
) -> None:
    from imagefit.export import onnx as onnx_export

    def broken(*args, **kwargs):
        graph = "\n".join(f"  %{i} : Float(2, 3) = aten::op(%{i - 1})" for i in range(40))
        raise RuntimeError(f"Exporting the operator 'aten::fancy' is not supported\n{graph}")

    monkeypatch.setattr(onnx_export, "_torch_export", broken)
    caplog.set_level(logging.DEBUG, logger="imagefit.export.onnx")
    code, err = run_cli(
        ["export", str(lab["run"]), "--onnx", "--out", str(tmp_path / "m.onnx")],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert_one_line(err, "aten::fancy", "try --opset 18")
    assert "aten::op(%38)" in caplog.text  # the dump is kept for -v


def sweep_file(folder: Path, root: Path, **extra) -> Path:
    base = tree(root, folder / "unused")
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    variants = [
        {"name": "good", "set": {}},
        {"name": "broken", "set": {"data.root": str(folder / "no_such_folder")}},
    ]
    sweep = {"base": "base.yaml", "out": str(folder / "out"), "variants": variants, **extra}
    path = folder / "s.sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_with_failed_trials_exits_1_and_names_them(
    lab: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("imagefit.evaluate.plots.plot_comparison", lambda runs, out: [])
    monkeypatch.setattr("imagefit.evaluate.report.write_report", lambda runs, out, title: out)
    path = sweep_file(tmp_path, lab["root"])
    code, err = run_cli(["sweep", str(path)], capsys, monkeypatch)
    assert code == 1, err
    tail = err.strip().splitlines()[-2:]
    assert tail[0] == "1 trial(s) failed:"
    assert tail[1].startswith("  broken:") and "no_such_folder" in tail[1]
    results = yaml.safe_load((tmp_path / "out" / "all_results.json").read_text())
    assert [f["name"] for f in results["failed"]] == ["broken"]
    assert "no_such_folder" in results["failed"][0]["error"]
    assert "## Failed trials" in (tmp_path / "out" / "results.md").read_text()


def test_pipeline_with_failed_fine_tune_trials_exits_1_and_names_them(
    lab: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr("imagefit.evaluate.plots.plot_comparison", lambda runs, out: [])
    monkeypatch.setattr("imagefit.evaluate.report.write_report", lambda runs, out, title: out)
    pretrain = tree(lab["root"], tmp_path / "unused", train={"monitor": "train_loss"})
    pretrain["data"].update(val_fraction=0, test_fraction=0)
    target = tree(tmp_path / "no_such_folder", tmp_path / "unused")
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    spec = {
        "name": "holes",
        "out": str(tmp_path / "out"),
        "pretrain": {"config": "pretrain.yaml"},
        "finetune": {"config": "target.yaml", "seeds": [0]},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    code, err = run_cli(["pipeline", str(tmp_path / "p.yaml")], capsys, monkeypatch)
    assert code == 1, err
    tail = err.strip().splitlines()[-3:]
    assert tail[0] == "2 trial(s) failed:"
    assert tail[1].startswith("  scratch-seed0:") and "no_such_folder" in tail[1]
    assert tail[2].startswith("  pretrained-seed0:")
    summary = yaml.safe_load((tmp_path / "out" / "pipeline.json").read_text())
    assert [f["name"] for f in summary["failed"]] == ["scratch-seed0", "pretrained-seed0"]
