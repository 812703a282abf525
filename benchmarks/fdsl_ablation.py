"""What makes formula-driven pretraining learn at CPU size: short pretraining runs on fractals
rendered on the fly (``data.source: fractal``), one setting changed at a time.

    python benchmarks/fdsl_ablation.py [--params DIR] [--out DIR] [--epochs 4] [--only NAME ...]

DIR holds category CSVs (``imagefit data fractal-search --categories 100 --out DIR``; without
--params that search runs into OUT/params first); the
first N of them make an N-category run. Each run is ``imagefit train`` on
configs/fdsl_cpu_pretrain.yaml plus the row's overrides; the table reports the final epoch's
training loss against chance (ln C) and its accuracy. Every epoch renders new instances, so
the training accuracy of the last epoch is measured on images the model had not seen.
Prints a markdown table and writes it to OUT/ablation.md; each run's history.csv stays in
OUT/runs/NAME/.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fdsl_transfer import search_params

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fdsl_cpu_pretrain.yaml"

# name -> (categories, overrides) on configs/fdsl_cpu_pretrain.yaml with --model (default
# simple_cnn, the model of the table in fdsl_ablation.md). Every row names its weights file,
# since the config's default moved to weights_0.4 with test_resnet: the first row is the
# earlier reference (FractalDB weights_0.1, drawn at 128 px, no crops), the others change one
# thing; the last but one is the first setting tried (weights_0.4, drawn at 32 px, crops).
W01 = "data.fractal_weights=0.1"
ROWS: dict[str, tuple[int, list[str]]] = {
    "default": (16, [W01]),
    "crops_flips": (16, [W01, "data.augment=true"]),
    "weights0.4": (16, ["data.fractal_weights=0.4"]),
    "ofdb_one_instance": (16, ["data.fractal_weights=ones", "data.fractal_flips=1"]),
    "render32": (16, [W01, "data.fractal_render_size=32"]),
    "weights0.4_render32_crops": (
        16,
        ["data.fractal_weights=0.4", "data.fractal_render_size=32", "data.augment=true"],
    ),
    "32cat": (32, [W01]),
}


def subset(params: Path, count: int, out: Path) -> Path:
    folder = out / f"params{count}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for path in sorted(params.glob("*.csv"))[:count]:
            shutil.copy(path, folder / path.name)
    return folder


def run(name: str, categories: int, sets: list[str], args: argparse.Namespace) -> dict:
    params = subset(args.params, categories, args.out)
    runs = args.out / "runs"
    command = [sys.executable, "-m", "imagefit", "train", str(CONFIG)]
    for assignment in [
        f"data.fractal_params={params}",
        f"data.fractal_instances={args.images // categories}",
        f"train.epochs={args.epochs}",
        f"model.name={args.model}",
        f"output.dir={runs}",
        f"output.name={name}",
        *sets,
    ]:
        command += ["--set", assignment]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    with open(runs / name / "history.csv", encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    last = history[-1]
    return {
        "name": name,
        "categories": categories,
        "changes": " ".join(sets) or "-",
        "loss": float(last["train_loss"]),
        "chance": math.log(categories),
        "accuracy": float(last["train_accuracy"]),
        "curve": " ".join(f"{float(row['train_loss']):.2f}" for row in history),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out/fdsl_ablation"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=1600, help="rendered per epoch")
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.params = args.params or search_params(args.out)
    lines = [
        f"model {args.model}, {args.images} new images per epoch, {args.epochs} epochs\n",
        "| run | categories | change | final loss / ln C | final acc | loss per epoch | s |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for name, (categories, sets) in ROWS.items():
        if args.only and name not in args.only:
            continue
        r = run(name, categories, sets, args)
        lines.append(
            f"| {r['name']} | {r['categories']} | {r['changes']} | {r['loss']:.2f} / "
            f"{r['chance']:.2f} | {r['accuracy']:.3f} | {r['curve']} | {r['seconds']:.0f} |"
        )
        print(lines[-1], flush=True)
        (args.out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
