"""Does small formula-driven pretraining transfer? Scratch vs pretrained on real photos, paired
over seeds, for several pretraining settings: the study that chose configs/fdsl_cpu_*.yaml.

    python benchmarks/fdsl_transfer.py [--params DIR] [--out DIR] [--data ROOT ...]
        [--seeds 0 1 2] [--only NAME ...]

DIR holds category CSVs (``imagefit data fractal-search --categories 100 --out DIR``; without
--params that search runs into OUT/params first); a row
of N categories uses the first N. Each row pretrains once (``imagefit train`` on
configs/fdsl_cpu_pretrain.yaml plus its overrides, images rendered on the fly), then fine-tunes
configs/fdsl_cpu_finetune.yaml on every ROOT from scratch (the baseline, run in the same
invocation) and from the row's weights, with the same recipe and seeds. It prints, per row and
dataset, test accuracy of both and the per-seed paired difference. Use tuning data here
(photos kept apart from those a result is reported on; the default is daisy, dandelion and
roses from ../shared/data/flowers, copied to OUT/flowers_tune); runs stay in OUT/runs/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers"
TUNING_CLASSES = ("daisy", "dandelion", "roses")  # the report sets use the other two
PRETRAIN = ROOT / "configs" / "fdsl_cpu_pretrain.yaml"
FINETUNE = ROOT / "configs" / "fdsl_cpu_finetune.yaml"

# name -> (categories, model, pretraining overrides, fine-tuning overrides); every fine-tune
# row pretrains 10 epochs of 100 new instances per category unless it says otherwise
W01, W04 = "data.fractal_weights=0.1", "data.fractal_weights=0.4"
ROWS: dict[str, tuple[int, str, list[str], list[str]]] = {
    "lenet_16cat_w0.1": (16, "simple_cnn", [W01, "train.epochs=6"], []),
    "bn_16cat_w0.1": (16, "test_resnet", [W01], []),
    "bn_100cat_w0.1": (100, "test_resnet", [W01], []),
    "bn_100cat_w0.4": (100, "test_resnet", [W04], []),  # configs/fdsl_cpu_pretrain.yaml
    "bn_100cat_w0.4_long": (100, "test_resnet", [W04, "data.fractal_instances=300"], []),
    "bn_100cat_w0.4_64px": (
        100,
        "test_resnet",
        [W04, "data.image_size=64", "data.fractal_render_size=256"],
        ["data.image_size=64"],
    ),
}


def train(config: Path, overrides: list[str], log: Path) -> dict:
    """``imagefit train CONFIG --set ...`` (skipped when its run finished before)."""
    sets = dict(item.split("=", 1) for item in overrides)
    run = Path(sets["output.dir"]) / sets["output.name"]
    if not (run / "summary.json").is_file():
        command = [sys.executable, "-m", "imagefit", "train", str(config)]
        for item in overrides:
            command += ["--set", item]
        with log.open("w") as handle:
            subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return json.loads((run / "summary.json").read_text())


def search_params(out: Path, categories: int = 100) -> Path:
    """``imagefit data fractal-search`` into OUT/params (once)."""
    folder = out / "params"
    if len(list(folder.glob("*.csv"))) < categories:
        command = [sys.executable, "-m", "imagefit", "data", "fractal-search"]
        command += ["--categories", str(categories), "--out", str(folder)]
        subprocess.run(command, check=True)
    return folder


def flowers_tune(out: Path) -> Path:
    """The tuning classes of the flower photos, copied into OUT/flowers_tune (once)."""
    target = out / "flowers_tune"
    for name in TUNING_CLASSES:
        if not (target / name).is_dir():
            (target / name).mkdir(parents=True)
            for file in sorted((FLOWERS / name).iterdir()):
                (target / name / file.name).write_bytes(file.read_bytes())
    return target


def subset(params: Path, count: int, out: Path) -> Path:
    folder = out / f"params{count}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for path in sorted(params.glob("*.csv"))[:count]:
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out/fdsl_transfer"))
    parser.add_argument("--data", type=Path, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    args.params = args.params or search_params(args.out)
    args.data = args.data or [flowers_tune(args.out)]
    for name, (categories, model, overrides, tuning) in ROWS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        params = subset(args.params, categories, args.out)
        common = [f"model.name={model}", f"output.dir={runs}", "export.onnx=false"]
        train(
            PRETRAIN,
            [f"data.fractal_params={params}", *common, f"output.name=pre_{name}", *overrides],
            args.out / f"pre_{name}.log",
        )
        history = json.loads((runs / f"pre_{name}" / "history.json").read_text())
        print(
            f"{name}: pretraining {time.perf_counter() - start:.0f} s, final loss "
            f"{history[-1]['train_loss']:.2f}, accuracy on unseen instances "
            f"{history[-1]['train_accuracy']:.3f}",
            flush=True,
        )
        for data in args.data:
            accuracy: dict[str, list[float]] = {"scratch": [], "pretrained": []}
            for seed in args.seeds:
                for variant in accuracy:
                    init = "scratch" if variant == "scratch" else runs / f"pre_{name}" / "best.pt"
                    run = f"ft_{name}_{data.name}_{variant}_{seed}"
                    summary = train(
                        FINETUNE,
                        [
                            f"data.root={data}",
                            f"model.init={init}",
                            f"train.seed={seed}",
                            *common,
                            f"output.name={run}",
                            *tuning,
                        ],
                        args.out / f"{run}.log",
                    )
                    accuracy[variant].append(summary["test_accuracy"])
            paired = [
                p - s for p, s in zip(accuracy["pretrained"], accuracy["scratch"], strict=True)
            ]
            print(
                f"  {data.name}: scratch {statistics.mean(accuracy['scratch']):.3f}, pretrained "
                f"{statistics.mean(accuracy['pretrained']):.3f}, pretrained - scratch "
                f"{statistics.mean(paired):+.3f} (per seed "
                + ", ".join(f"{d:+.3f}" for d in paired)
                + ")",
                flush=True,
            )


if __name__ == "__main__":
    main()
