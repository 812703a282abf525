"""Commands that check whether results can be trusted: calibrate, explain, diff, data audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagefit.cli.common import console, metric_table
from imagefit.runs.layout import GALLERY, RunLayout


def calibrate(
    run: Annotated[Path, typer.Argument(help="Run folder (with a validation split).")],
) -> None:
    """Fit a temperature on the validation split; report ECE and NLL before and after.

    Stores the temperature in best.pt (predict and ONNX export use it), adds ece, nll,
    ece_calibrated, nll_calibrated and temperature to metrics.json, and writes
    RUN/calibration.json and RUN/plots/reliability.png.
    """
    from imagefit.evaluate.calibration import RELIABILITY_PNG, calibrate_run

    result = calibrate_run(run)
    split = "test" if "test" in result else "val"
    shown = result[split]
    rows = [
        ("temperature", result["temperature"]),
        (f"ECE ({split}, 15 bins)", f"{shown['ece']:.4f} -> {shown['ece_calibrated']:.4f}"),
        (f"NLL ({split})", f"{shown['nll']:.4f} -> {shown['nll_calibrated']:.4f}"),
    ]
    console.print(metric_table(f"calibration of {run}", rows))
    console.print(f"reliability diagram: {RunLayout(run).plots / RELIABILITY_PNG}")


def diff(
    run_a: Annotated[Path, typer.Argument(help="First run folder (A), or a sweep folder.")],
    run_b: Annotated[Path | None, typer.Argument(help="Second run folder (B).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write an HTML page here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Sweep: the variant to compare with.")
    ] = None,
) -> None:
    """Compare two runs on the same test split: intervals, McNemar's test, flipped images.

    Given a sweep folder alone: each variant against the baseline (default the first), a
    paired bootstrap over seeds and test images, written to SWEEP/vs_baseline.{json,md}.
    """
    import json

    from imagefit.errors import ImagefitError
    from imagefit.evaluate.compare import compare_runs, write_diff_page

    if run_b is None:
        if not (run_a / "all_results.json").is_file():
            raise ImagefitError(f"{run_a}: give two run folders, or one sweep folder")
        _diff_sweep(run_a, baseline, as_json)
        return
    result = compare_runs(run_a, run_b)
    if out is not None:
        write_diff_page(result, out)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    m = result["mcnemar"]

    def interval(pair: list[float]) -> str:
        return f"[{pair[0]:.4f}, {pair[1]:.4f}]"

    rows = [
        ("test images", result["images"]),
        ("accuracy A", f"{result['accuracy_a']:.4f} {interval(result['accuracy_a_interval'])}"),
        ("accuracy B", f"{result['accuracy_b']:.4f} {interval(result['accuracy_b_interval'])}"),
        ("B - A", f"{result['difference']:+.4f} {interval(result['difference_interval'])}"),
        ("only A right / only B right", f"{m['only_a_right']} / {m['only_b_right']}"),
        (f"McNemar p ({m['method']})", f"{m['p_value']:.4g}"),
    ]
    console.print(metric_table(f"{run_a} (A) vs {run_b} (B), 95% bootstrap intervals", rows))
    for c in result["per_class"]:
        if c["delta"]:
            console.print(f"  {c['class']}: {c['accuracy_a']:.3f} -> {c['accuracy_b']:.3f}")
    if out is not None:
        console.print(f"page: {out}")


def _diff_sweep(sweep: Path, baseline: str | None, as_json: bool) -> None:
    import json

    from imagefit.evaluate.compare import sweep_vs_baseline, vs_baseline_markdown
    from imagefit.fileio import atomic_write, write_json
    from imagefit.runs.layout import VS_BASELINE

    rows = sweep_vs_baseline(sweep, baseline)
    write_json(sweep / VS_BASELINE, rows)
    atomic_write(sweep / "vs_baseline.md", vs_baseline_markdown(rows))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    console.print(vs_baseline_markdown(rows), markup=False)
    console.print(f"written: {sweep / 'vs_baseline.md'}")


def explain(
    run: Annotated[Path, typer.Argument(help="Run folder or checkpoint.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders (searched recursively).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the overlays [RUN/explain].")
    ] = None,
    mistakes: Annotated[
        bool,
        typer.Option("--mistakes", help="Also write the gallery of test mistakes [RUN/gallery]."),
    ] = False,
) -> None:
    """Grad-CAM overlays: where the model looked for the class it predicted."""
    from imagefit.errors import ImagefitError
    from imagefit.evaluate.explain import explain_images, mistakes_gallery
    from imagefit.models.trained import resolve_checkpoint

    if not images and not mistakes:
        raise ImagefitError("give IMAGES to explain, or --mistakes for the test split's gallery")
    run_dir = resolve_checkpoint(run).parent
    failed = 0
    if images:
        for r in explain_images(run, images, out or run_dir / "explain"):
            if "error" in r:
                failed += 1
                console.print(f"[red]error[/red] {r['error']}")
            else:
                console.print(f"{r['file']}: {r['label']} {r['probability']:.3f} -> {r['overlay']}")
    if mistakes:
        gallery = mistakes_gallery(run, out / GALLERY if out and images else out)
        console.print(
            f"gallery of {len(gallery['mistakes'])} confident mistakes (of "
            f"{gallery['mistakes_total']}) and {len(gallery['confused_pairs'])} confused pairs"
        )
    if failed:
        raise typer.Exit(1)


def audit(
    root: Annotated[Path, typer.Argument(help="root/<class>/ or root/{train,val,test}/<class>/.")],
    out: Annotated[Path | None, typer.Option("--out", help="Report folder [./audit-ROOT].")] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds.")] = 5,
    model: Annotated[str, typer.Option("--model", help="Model name (registry or timm).")] = (
        "simple_cnn"
    ),
    image_size: Annotated[int, typer.Option("--image-size", min=8, help="Pixels.")] = 32,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs per fold.")] = 30,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Rank images whose label is probably wrong (cross-validated model + cleanlab).

    Writes OUT/suspects.csv, OUT/suspects.png, OUT/label_issues.txt (for --set
    data.skip_list=..., after a look) and OUT/audit.json.
    """
    from imagefit.errors import DataError
    from imagefit.evaluate.audit import audit_labels, write_audit

    out = out or Path(f"audit-{root.resolve().name}")
    if out.resolve().is_relative_to(root.resolve()):
        raise DataError(f"--out {out} is inside the dataset {root}: it would read as a class")
    result = audit_labels(
        root, folds=folds, model=model, image_size=image_size, epochs=epochs, seed=seed
    )
    files = write_audit(result, out)
    rows = [
        ("images", len(result.labels)),
        ("out-of-fold accuracy", result.out_of_fold_accuracy()),
        ("flagged label issues", int(result.flagged.sum())),
    ]
    console.print(metric_table(f"label audit of {root}", rows))
    for i in result.order[:10]:
        if result.flagged[i]:
            given, better = result.classes[result.labels[i]], result.classes[result.suggested[i]]
            console.print(f"[yellow]suspect[/yellow] {result.paths[i]}: {given} -> {better}?")
    for name, path in files.items():
        console.print(f"{name}: {path}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command()(calibrate)
    app.command()(diff)
    app.command()(explain)
    data_app.command("audit")(audit)
