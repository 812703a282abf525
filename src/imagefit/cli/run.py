"""Commands that train and evaluate: demo, train, eval, config show, models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import (
    UNTRAINED_BANNER,
    AllowUntrainedOption,
    LimitOption,
    SetOption,
    TtaOption,
    console,
    main_process,
    metric_table,
    print_result,
    with_limit,
)
from imagefit.errors import ConfigError, ImagefitError

config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")


def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where data and runs go.")] = Path(
        "imagefit-demo"
    ),
    overrides: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    limit_batches: LimitOption = None,
) -> None:
    """Train SimpleCNN on scikit-learn's digits (offline) and test it."""
    from imagefit.demo import run_demo

    print_result(run_demo(workdir, with_limit(overrides, limit_batches)))


def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config.")] = None,
    overrides: SetOption = [],  # noqa: B006
    limit_batches: LimitOption = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue this run folder.")
    ] = None,
) -> None:
    """Train from CONFIG into a new run folder, or --resume RUN_DIR."""
    from imagefit.config import load_config

    if resume is not None and (config is not None or overrides):
        raise ImagefitError("--resume continues a run with its own config; drop CONFIG and --set")
    if resume is None and config is None:
        raise ImagefitError("give a CONFIG file (or --resume RUN_DIR)")
    # The config is checked before torch is imported and before a run folder exists, so a
    # typo fails in a moment and the fixed rerun gets the folder's name, not NAME-2.
    cfg = None if config is None else load_config(config, with_limit(overrides, limit_batches))
    from imagefit.workflow import train as run_training

    result = run_training(resume=resume) if cfg is None else run_training(cfg)
    if main_process():
        print_result(result)


def eval_(
    target: Annotated[Path, typer.Argument(help="Run folder or checkpoint.")],
    split: Annotated[
        str | None,
        typer.Option("--split", help="test, val or train (default: the split the run reports)."),
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="Dataset root (if moved).")] = None,
    limit_batches: LimitOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print all metrics as JSON.")] = False,
    tta: TtaOption = "none",
    allow_untrained: AllowUntrainedOption = False,
) -> None:
    """Evaluate a trained model on a split of its dataset (with --tta: with and without TTA)."""
    from imagefit.evaluate.evaluator import evaluate_checkpoint
    from imagefit.evaluate.tta import TTA_METRICS

    metrics = evaluate_checkpoint(
        target, split, data, limit_batches=limit_batches, tta=tta, allow_untrained=allow_untrained
    )
    split = metrics["split"]
    if not metrics["trained"]:
        typer.echo(UNTRAINED_BANNER, err=True)
    if as_json:  # the JSON holds changed_files and test_evaluations
        typer.echo(json.dumps(metrics, indent=1))
        return
    changed = metrics.get("changed_files")
    if changed:
        typer.echo(
            f"warning: {len(changed)} files of the {split} split changed since the run "
            f"trained (e.g. {changed[0]}): these metrics are not the run's own",
            err=True,
        )
    uses = metrics.get("test_evaluations")
    if uses and uses > 1:
        typer.echo(f"note: this run's test split has now been evaluated {uses} times", err=True)
    rows = [
        (key, metrics[key])
        for key in ("accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "loss")
    ]
    if "tta" in metrics:
        with_tta = metrics["tta"]
        rows += [(f"{key} (tta {with_tta['mode']})", with_tta[key]) for key in TTA_METRICS]
    untrained = "" if metrics["trained"] else "UNTRAINED "
    title = f"{untrained}{metrics['checkpoint']} on {split} ({metrics['num_samples']} images)"
    console.print(metric_table(title, rows))
    console.print(metrics.get("classification_report", ""))


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Argument(help="YAML config (defaults if absent).")] = None,
    overrides: SetOption = [],  # noqa: B006
) -> None:
    """Print the resolved config (defaults <- file <- --set)."""
    from imagefit.config import dump_config, load_config

    typer.echo(dump_config(load_config(config, overrides)), nl=False)


def models(
    pattern: Annotated[
        str, typer.Argument(help="Shell-style filter, e.g. 'resnet*' or '*efficientnet_b[0-3]'.")
    ] = "*",
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Only timm models with hub weights (name.tag).")
    ] = False,
) -> None:
    """List the model names model.name takes: imagefit's own, then timm's."""
    import fnmatch

    import timm

    from imagefit.models.registry import list_models

    ours = [] if pretrained else [n for n in list_models() if fnmatch.fnmatch(n, pattern)]
    names = ours + timm.list_models(pattern, pretrained=pretrained)
    if not names:
        raise ConfigError(f"no model name matches {pattern!r} (try a wider pattern, e.g. '*net*')")
    for name in names:
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(train)
    app.command("eval")(eval_)
    app.command()(models)
