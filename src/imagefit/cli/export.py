"""Commands that ship a model: export (ONNX, optional INT8) and predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imagefit.cli.common import (
    UNTRAINED_BANNER,
    AllowUntrainedOption,
    TtaOption,
    console,
    metric_table,
)
from imagefit.errors import ImagefitError
from imagefit.runs.layout import ONNX


def export(
    target: Annotated[Path, typer.Argument(help="Run folder or checkpoint.")],
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Export to ONNX (the only format so far).")
    ] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write an INT8 (static, QDQ) model.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help=f"ONNX file (default RUN/{ONNX}).")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Compare with PyTorch on real images.")
    ] = True,
    with_preprocessing: Annotated[
        bool,
        typer.Option(
            "--with-preprocessing",
            help="Also write <out>.preprocess.onnx: input one uint8 RGB image (H, W, 3), any size.",
        ),
    ] = False,
    web: Annotated[
        Path | None,
        typer.Option("--web", help="Write a static page that runs the model in a browser here."),
    ] = None,
    allow_untrained: AllowUntrainedOption = False,
) -> None:
    """Export a trained model; checks it and writes RUN/export.json."""
    from imagefit.export.onnx import export_onnx

    if not onnx and web is None:
        raise ImagefitError("choose an export format: --onnx and/or --web OUT")
    # The page feeds raw pixels: it needs the model with the preprocessing in its graph.
    pre = with_preprocessing or web is not None
    result = export_onnx(
        target,
        out,
        opset=opset,
        int8=int8,
        verify=verify,
        with_preprocessing=pre,
        allow_untrained=allow_untrained,
    )
    if not result["trained"]:
        typer.echo(UNTRAINED_BANNER + " (the file says imagefit.trained=false)", err=True)
    untrained = "" if result["trained"] else "UNTRAINED "
    console.print(metric_table(f"{untrained}export of {result['checkpoint']}", export_rows(result)))
    if web is not None:
        from imagefit.export.web import export_web

        page = export_web(result["with_preprocessing"]["onnx"], web)
        console.print(f"web page: {page} (serve with: cd {web} && python -m http.server)")


def export_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """export.json as (name, value) rows: file, checks, and INT8 next to fp32."""
    rows: list[tuple[str, Any]] = [
        ("ONNX file", result["onnx"]),
        ("opset (exporter)", f"{result['opset']} ({result['exporter']})"),
        ("size MiB", result["size_bytes"] / 2**20),
    ]
    check = result.get("verification")
    if check:
        rows.append(("verified on", f"{check['images']} images, {check['inputs']}"))
        for batch, r in check["batch_sizes"].items():
            rows.append((f"batch {batch}: max |onnx - torch|", f"{r['max_abs_diff']:.3g}"))
            rows.append((f"batch {batch}: top-1 agreement", f"{r['top1_agreement']:.2%}"))
        rows.append(("verification", "passed" if check["passed"] else "FAILED"))
    pre = result.get("with_preprocessing")
    if pre:
        rows.append(("ONNX file with preprocessing", pre["onnx"]))
        rows.append(
            ("  max |graph - evaluation| logits", f"{pre['verification']['max_abs_diff']:.3g}")
        )
        rows.append(("  top-1 agreement", f"{pre['verification']['top1_agreement']:.2%}"))
    return rows + (_int8_rows(result["int8"]) if result.get("int8") else [])


def _int8_rows(q: dict[str, Any]) -> list[tuple[str, Any]]:
    mb = 2**20
    ms = q["latency_ms_batch1"]
    spread = q.get("latency_batch1")  # absent from files of earlier versions: one timing
    latency = (
        [
            (f"{name.upper()} latency ms (batch 1), median [IQR] (min-max)", _spread(spread[name]))
            for name in ("int8", "fp32")
        ]
        if spread
        else [("INT8 / fp32 latency ms (batch 1)", _pair(ms["int8"], ms["fp32"]))]
    )
    speedup = q.get("speedup_batch1")
    span = q.get("speedup_batch1_range")
    rounds = f" over {spread['rounds']} rounds" if spread else ""
    shown = (
        "-"
        if speedup is None
        else f"{speedup:.2f}x" + (f" ({span[0]:.2f}-{span[1]:.2f}x){rounds}" if span else "")
    )
    return [
        ("INT8 file", q["onnx"]),
        ("INT8 / fp32 size MiB", f"{q['size_bytes'] / mb:.2f} / {q['fp32_size_bytes'] / mb:.2f}"),
        (
            f"INT8 / fp32 accuracy ({q['eval_split']}, {q['eval_images']} images)",
            _pair(q["int8_accuracy"], q["fp32_accuracy"]),
        ),
        ("INT8 accuracy drop", q.get("accuracy_drop")),
        *latency,
        ("INT8 speedup (batch 1), median (range)", shown),
    ]


def _spread(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} [{s['q1']:.3f}-{s['q3']:.3f}] ({s['min']:.3f}-{s['max']:.3f})"


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.4f} / {b:.4f}"


def predict(
    model: Annotated[Path, typer.Argument(help="Checkpoint, run folder or .onnx file.")],
    images: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    abstain_below: Annotated[
        float | None,
        typer.Option(
            "--abstain-below",
            min=0.0,
            max=1.0,
            help="Mark predictions whose (calibrated) probability is under P.",
        ),
    ] = None,
    tta: TtaOption = "none",
    allow_untrained: AllowUntrainedOption = False,
) -> None:
    """Predict the class of images; exits 1 if any image could not be read."""
    from imagefit.export.predict import predict as run_predict

    results = run_predict(
        model,
        images,
        top_k=top_k,
        abstain_below=abstain_below,
        tta=tta,
        allow_untrained=allow_untrained,
    )
    if any(r.get("trained") is False for r in results):
        typer.echo(UNTRAINED_BANNER, err=True)
    if as_json:
        typer.echo(json.dumps(results, indent=1))
    else:
        console.print(prediction_table(results, top_k))
        abstained = sum(bool(r.get("abstain")) for r in results)
        if abstain_below is not None:
            console.print(
                f"{abstained} of {len(results)} predictions under {abstain_below}: abstain"
            )
    failed = [r for r in results if "error" in r]
    if failed:
        typer.echo(f"{len(failed)} of {len(results)} images failed", err=True)
        raise typer.Exit(1)


def prediction_table(results: list[dict[str, Any]], top_k: int) -> Table:
    table = Table(title=f"predictions ({len(results)} images)")
    for column in ("file", "class", "probability", f"top-{top_k}"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for r in results:
        if "error" in r:
            table.add_row(r["file"], "[red]error[/red]", "-", r["error"])
        else:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"])
            label = f"{r['label']} [yellow](abstain)[/yellow]" if r.get("abstain") else r["label"]
            table.add_row(r["file"], label, f"{r['probability']:.4f}", others)
    return table


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(predict)
