"""imagefit against timm's ``train.py`` on real photos: test accuracy over seeds and wall time.

The same split of ``flowers`` (train/val/test folders, written once and read by both), the same
model (resnet18 from scratch), image size, epochs, batch size, optimizer (AdamW), schedule
(cosine, no warmup) and augmentation (random-resized crop of 0.08-1 of the area, horizontal
flip; timm's colour jitter, label smoothing and random interpolation turned off to match).
Each run is a subprocess timed end to end (interpreter start, imports, data, training with
validation each epoch, checkpoints); imagefit runs ``fit`` (training and its records, without
the post-run plots and reports, which timm does not make). Both best-on-validation checkpoints
are then scored on the test folder by the same code: imagefit's evaluation path.

    python benchmarks/vs_timm_train.py [--size 96] [--epochs 3] [--seeds 0 1 2] [--amp auto]
        [--ema-decay 0.99] [--init PRETRAINED.pt]

``--init``: both start from weights pretrained with imagefit (a resnet18 ``best.pt``, e.g.
``imagefit train`` on imagenette): imagefit through ``model.init``, timm through
``--initial-checkpoint`` with the same weights and the fresh 5-class head of a new resnet18
(imagefit replaces the head the same way).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from imagefit.config import load_config
from imagefit.data.loaders import Loader, make_source
from imagefit.data.splits import SplitManifest
from imagefit.data.store import PixelSpec
from imagefit.evaluate.inference import Precision, evaluate
from imagefit.models.registry import create_model
from imagefit.models.trained import load_trained
from imagefit.runs.checkpoint import load_checkpoint

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"
FLOWERS = SHARED / "data" / "flowers"
TIMM_TRAIN = SHARED / "peers" / "timm" / "train.py"
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def write_split(source: Path, target: Path, per_class: int | None, seed: int = 42) -> None:
    """``target/{train,val,test}/<class>/`` with a seeded per-class split (copies: timm reads
    symlinks, imagefit by default only those that stay inside the dataset)."""
    rng = random.Random(seed)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        files = files[:per_class] if per_class else files
        n_val = round(len(files) * FRACTIONS["val"])
        n_test = round(len(files) * FRACTIONS["test"])
        parts = {
            "val": files[:n_val],
            "test": files[n_val : n_val + n_test],
            "train": files[n_val + n_test :],
        }
        for split, chosen in parts.items():
            (target / split / folder.name).mkdir(parents=True, exist_ok=True)
            for file in chosen:
                shutil.copyfile(file, target / split / folder.name / file.name)


def timed(command: list[str], log: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        sys.exit(f"{command[:3]} failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def imagefit_run(
    args: argparse.Namespace, data: Path, out: Path, seed: int, name: str = "imagefit"
) -> float:
    """One imagefit run as a timed subprocess; ``name`` imagefit+ema also keeps a weight
    average (train.ema_decay), scored with flip TTA."""
    tree = {
        "data": {
            "root": str(data),
            "image_size": args.size,
            "cache_dir": str(out / "cache"),  # a fresh cache: the first run pays the decoding
        },
        "augment": {"scale": [0.08, 1.0], "translate": 0.0, "hflip": 0.5},
        "model": {"name": "resnet18", "init": str(args.init) if args.init else "scratch"},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": args.weight_decay},
        "schedule": {"name": "cosine", "warmup_epochs": 0},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": seed,
            "device": "cpu",
            "amp": args.amp,
            "ema_decay": args.ema_decay if name == "imagefit+ema" else 0.0,
        },
        "output": {"dir": str(out / name), "name": f"seed{seed}"},
    }
    for item in args.imagefit_set:  # e.g. data.store_size=292
        key, value = item.split("=", 1)
        section, field = key.split(".", 1)
        tree.setdefault(section, {})[field] = yaml.safe_load(value)
    config = out / f"{name}-seed{seed}.yaml"
    config.write_text(yaml.safe_dump(tree))
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "  # the epoch lines in the log
        "from imagefit.config import load_config; from imagefit.train.fit import fit; "
        f"fit(load_config({str(config)!r}))"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src"))
    return timed([sys.executable, "-c", code], out / f"{name}-seed{seed}.log", env)


def timm_run(args: argparse.Namespace, data: Path, out: Path, seed: int) -> float:
    command = [
        sys.executable,
        str(TIMM_TRAIN),
        "--data-dir",
        str(data),
        "--train-split",
        "train",
        "--val-split",
        "val",
        "--model",
        "resnet18",
        "--num-classes",
        "5",
        "--img-size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--opt",
        "adamw",
        "--lr",
        str(args.lr),
        "--weight-decay",
        str(args.weight_decay),
        "--sched",
        "cosine",
        "--warmup-epochs",
        "0",
        "--min-lr",
        "0",
        "--scale",
        "0.08",
        "1.0",
        "--hflip",
        "0.5",
        "--color-jitter",
        "0",
        "--smoothing",
        "0",
        "--train-interpolation",
        "bilinear",
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--no-prefetcher",
        "--workers",
        str(args.workers),
        "--output",
        str(out / "timm"),
        "--experiment",
        f"seed{seed}",
        *(["--initial-checkpoint", str(out / "timm-init.pth")] if args.init else []),
        "--checkpoint-hist",
        "1",
        "--log-interval",
        "1000",
    ]
    return timed(command, out / f"timm-seed{seed}.log", dict(os.environ))


def test_accuracy(model: torch.nn.Module, run_dir: Path, tta: str = "none") -> float:
    """Accuracy on the test folder through imagefit's evaluation path (the run's own loader
    settings: decoded size, mean and std)."""
    cfg = load_config(run_dir / "config.yaml")
    manifest = SplitManifest.load(run_dir / "split.json")
    device = torch.device("cpu")
    meta = load_checkpoint(run_dir / "best.pt")["meta"]
    spec = PixelSpec.from_meta(meta)  # resize to size / crop_pct, centre crop: as timm's eval
    source, _ = make_source(cfg.data, manifest.splits["test"], spec.size, device, {}, spec=spec)
    loader = Loader(source, 64, device, mean=meta["mean"], std=meta["std"])
    targets, logits, _ = evaluate(model.eval(), loader, Precision(device), "test", tta=tta)
    return float((logits.argmax(1) == targets).mean())


def write_timm_init(init: Path, target: Path) -> None:
    """imagefit's pretrained weights as a file timm's ``--initial-checkpoint`` loads strictly:
    the trunk from ``init``, the classifier a fresh 5-class one."""
    state = load_checkpoint(init)["model"]
    fresh = create_model("resnet18", 5, "scratch").state_dict()
    merged = {key: fresh[key] if key.startswith("fc.") else value for key, value in state.items()}
    torch.save({"state_dict": merged}, target)


def timm_model(checkpoint: Path) -> torch.nn.Module:
    from timm.models import load_checkpoint as load_timm_checkpoint

    model = create_model("resnet18", 5, "scratch")  # imagefit's resnet18 is timm's
    load_timm_checkpoint(model, str(checkpoint), weights_only=False)  # timm's file holds its args
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(FLOWERS))
    parser.add_argument("--per-class", type=int, default=None, help="a subset per class")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2, help="timm's DataLoader workers")
    parser.add_argument("--amp", default="auto", help="imagefit's train.amp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--imagefit-set", nargs="*", default=[], help="more imagefit config: section.key=value"
    )
    parser.add_argument("--init", type=Path, default=None, help="pretrained imagefit best.pt")
    parser.add_argument(
        "--ema-decay", type=float, default=0.0, help="also imagefit with EMA + flip TTA"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        data = out / "data"
        write_split(Path(args.data), data, args.per_class)
        if args.init:
            write_timm_init(args.init, out / "timm-init.pth")
        load = os.getloadavg()[0]
        names = ["imagefit", "timm"] + (["imagefit+ema"] if args.ema_decay else [])
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for seed in args.seeds:
            seconds = imagefit_run(args, data, out, seed)
            run_dir = out / "imagefit" / f"seed{seed}"
            model, _, _ = load_trained(run_dir / "best.pt")
            rows["imagefit"].append((test_accuracy(model, run_dir), seconds))
            seconds = timm_run(args, data, out, seed)
            best = out / "timm" / f"seed{seed}" / "model_best.pth.tar"
            rows["timm"].append((test_accuracy(timm_model(best), run_dir), seconds))
            if args.ema_decay:
                seconds = imagefit_run(args, data, out, seed, "imagefit+ema")
                ema_dir = out / "imagefit+ema" / f"seed{seed}"
                model, _, _ = load_trained(ema_dir / "best.pt")
                rows["imagefit+ema"].append((test_accuracy(model, ema_dir, "flip"), seconds))
            print(
                f"seed {seed}: "
                + ", ".join(f"{k} {v[-1][0]:.4f} in {v[-1][1]:.1f}s" for k, v in rows.items()),
                flush=True,
            )
    print(
        f"\nflowers {len(args.seeds)} seeds, resnet18 from {args.init or 'scratch'}, "
        f"{args.size}px, "
        f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr}, cosine; "
        f"imagefit amp={args.amp} {' '.join(args.imagefit_set)}; load average at start "
        f"{load:.2f}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':14} {'test accuracy':>18} {'wall s':>16}")
    for name, values in rows.items():
        accs, secs = [a for a, _ in values], [s for _, s in values]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        sd_s = statistics.stdev(secs) if len(secs) > 1 else 0.0
        print(
            f"{name:14} {statistics.mean(accs):.4f} ± {sd:.4f} "
            f"{statistics.mean(secs):8.1f} ± {sd_s:5.1f}"
        )
    acc_ratio = statistics.mean(a for a, _ in rows["imagefit"]) / statistics.mean(
        a for a, _ in rows["timm"]
    )
    time_ratio = statistics.mean(s for _, s in rows["imagefit"]) / statistics.mean(
        s for _, s in rows["timm"]
    )
    print(f"imagefit / timm: accuracy {acc_ratio:.3f}x, wall time {time_ratio:.3f}x")


if __name__ == "__main__":
    main()
