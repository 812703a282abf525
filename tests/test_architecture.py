"""The package structure: imports run one way (``imagefit.layers``), no package-level cycle,
and each run-folder file name is spelled in one module (``imagefit.runs.layout``)."""

from __future__ import annotations

import ast
import graphlib
from collections import defaultdict
from pathlib import Path

import pytest

import imagefit
from imagefit.layers import LAYERS, layer_of

SRC = Path(imagefit.__file__).resolve().parent
MODULES = sorted(SRC.rglob("*.py"))

# Run-folder names found inside any string (messages included; docstrings and comments are
# prose and may mention them), and names that count only as a whole string.
RUN_FILE_NAMES = (
    "config.yaml",
    "environment.json",
    "split.json",
    "skipped.json",
    "history.json",
    "history.csv",
    "metrics.json",
    "summary.json",
    "last.pt",
    "best.pt",
    "epoch_",
    "model.onnx",
    ".int8.onnx",
    ".rejected.onnx",
    "export.json",
    "mlflow.json",
    "trial.json",
    "report.html",
)
RUN_FOLDER_NAMES = ("plots", "tensorboard")
LAYOUT = "runs/layout.py"
# The same word as another name: the TensorBoard sink's registry name is its config switch.
ALSO = {"tensorboard": {"track/tensorboard_sink.py"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["imagefit", *parts])


def package_of(module: str) -> str:
    """``imagefit.train.fit`` -> ``train``; ``imagefit`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative).is_dir()


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, imported imagefit module) of every import in ``path``, nested ones included."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "imagefit"
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "imagefit":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else base))
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(package, imported package) -> where ("file:line imports module")."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in MODULES:
        source = package_of(module_name(path))
        for line, target in imported(path):
            dependency = package_of(target)
            if dependency != source:
                where = f"{path.relative_to(SRC)}:{line} imports {target}"
                edges[(source, dependency)].append(where)
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module_name(p)) for p in MODULES}
    listed = {name for layer in LAYERS for name in layer}
    assert packages <= listed, f"packages without a layer: {sorted(packages - listed)}"
    assert len(listed) == sum(len(layer) for layer in LAYERS), "a package is listed twice"


def test_the_import_parser_sees_nested_and_relative_imports(tmp_path: Path) -> None:
    fit = SRC / "train" / "fit.py"
    targets = {target for _, target in imported(fit)}
    assert "imagefit.runs.checkpoint" in targets and "imagefit.train.hooks" in targets
    nested = {target for _, target in imported(SRC / "cli" / "run.py")}
    assert "imagefit.workflow" in nested  # imported inside a function


def test_imports_run_one_way() -> None:
    wrong = [
        f"{where} ({dependency} is not below {source})"
        for (source, dependency), places in sorted(package_edges().items())
        if layer_of(dependency) >= layer_of(source)
        for where in places
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_package_level_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for source, dependency in package_edges():
        graph[source].add(dependency)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"package-level import cycle: {' -> '.join(exc.args[1])}")


def test_training_imports_no_exporter_plotter_or_tracker() -> None:
    heavy = ("matplotlib", "onnx", "onnxruntime", "mlflow", "tensorboard")
    found = []
    for path in (SRC / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not found


def _strings(path: Path) -> list[str]:
    """String constants of ``path`` that are not docstrings or other bare string statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


def test_each_run_folder_name_is_spelled_in_one_module() -> None:
    spelled: dict[str, set[str]] = defaultdict(set)
    for path in MODULES:
        for text in _strings(path):
            for name in RUN_FILE_NAMES:
                if name in text:
                    spelled[name].add(path.relative_to(SRC).as_posix())
            if text in RUN_FOLDER_NAMES:
                spelled[text].add(path.relative_to(SRC).as_posix())
    wrong = [
        f"{name!r} is spelled in {sorted(spelled[name])}"
        for name in (*RUN_FILE_NAMES, *RUN_FOLDER_NAMES)
        if spelled[name] != {LAYOUT} | ALSO.get(name, set())
    ]
    assert not wrong, "\n".join(wrong)
