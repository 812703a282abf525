"""An ONNX file that takes what a client has: one RGB image as uint8 pixels (H, W, 3), any size.

``add_preprocessing`` prepends the run's evaluation preprocessing to an exported classifier:
shorter side resized to ``int(image_size / crop_pct)`` with the run's interpolation (bilinear
and bicubic antialiased, as Pillow does), a centred ``image_size`` crop, then
``(pixel - 255*mean) / (255*std)`` in float32, NCHW. All of it is parametric on the model's
metadata, so a run that evaluates with another crop or interpolation exports that one.

Resize runs on the uint8 pixels with ``antialias=1, exclude_outside=1`` (opset 18): ONNX
Runtime's antialiased kernel for uint8 is a port of Pillow's two-pass fixed-point resampler and
``exclude_outside`` renormalises the border taps as Pillow does, so the graph's pixels differ
from :func:`imagefit.data.images.resize_center_crop` by at most one level: on photos shrunk
several-fold on well under 1% of pixels, at some scale factors (about 2x) on up to a fifth of
them (float input or the default border handling differ by up to 13 levels). Bicubic is
looser (its overshoot is rounded and clipped differently: a few levels). Verification
therefore compares logits and top-1, not pixels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagefit.data.images import load_rgb, resize_center_crop
from imagefit.data.inputs import normalise
from imagefit.errors import DataError
from imagefit.export import ExportError
from imagefit.export.onnx import META_PREFIX
from imagefit.export.preprocess import split_samples
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)

PIXELS = "image"  # (H, W, 3) uint8 RGB
OPSET = 18  # the first opset whose Resize has ``antialias``
VERIFY_IMAGES = 16

# interpolation name -> (ONNX Resize attributes, Pillow filter of the reference path)
INTERPOLATIONS: dict[str, tuple[dict[str, Any], Image.Resampling]] = {
    "bilinear": ({"mode": "linear", "antialias": 1}, Image.Resampling.BILINEAR),
    # Pillow's bicubic kernel uses a = -0.5; ONNX's default is -0.75.
    "bicubic": ({"mode": "cubic", "antialias": 1, "cubic_coeff_a": -0.5}, Image.Resampling.BICUBIC),
    # nearest is left out: ONNX Runtime's nearest Resize picks other source pixels than
    # Pillow's NEAREST at the same scale, so the graph could not promise evaluation's pixels.
}


def preprocessing_params(meta: dict[str, Any]) -> dict[str, Any]:
    """image_size, crop_pct, resize_size, interpolation, mean, std from a model's metadata."""
    size = int(meta["image_size"])
    crop_pct = float(meta.get("crop_pct") or 1.0)
    interpolation = str(meta.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise ExportError(
            f"interpolation {interpolation!r} has no ONNX equivalent here; "
            f"known: {', '.join(INTERPOLATIONS)}"
        )
    if not 0.0 < crop_pct <= 1.0:
        raise ExportError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return {
        "image_size": size,
        "crop_pct": crop_pct,
        "resize_size": int(size / crop_pct),
        "interpolation": interpolation,
        "mean": [float(v) for v in meta["mean"]],
        "std": [float(v) for v in meta["std"]],
    }


def describe(params: dict[str, Any]) -> str:
    """One line for metadata and pages: what the graph does to the pixels."""
    return (
        f"uint8 RGB (H, W, 3); shorter side resized to {params['resize_size']} "
        f"({params['interpolation']}, antialiased); centre crop {params['image_size']} x "
        f"{params['image_size']}; (pixel - 255*mean) / (255*std) with mean {params['mean']}, "
        f"std {params['std']}; NCHW float32"
    )


def reference_pixels(image: Image.Image, params: dict[str, Any]) -> np.ndarray:
    """The evaluation pixels (S, S, 3) uint8 of an RGB image under ``params``.

    This is :func:`resize_center_crop`, the function the evaluation loaders, ``predict`` and
    serving use, with the run's crop_pct and interpolation.
    """
    pixels = resize_center_crop(
        image, params["image_size"], params["crop_pct"], params["interpolation"]
    )
    return np.asarray(pixels, dtype=np.uint8)


def preprocessing_graph(params: dict[str, Any], output: str) -> Any:
    """The ONNX model ``image`` (H, W, 3) uint8 -> ``output`` (1, 3, S, S) float32."""
    from onnx import TensorProto, helper, numpy_helper

    size, target = params["image_size"], params["resize_size"]
    resize_attrs = {**INTERPOLATIONS[params["interpolation"]][0], "exclude_outside": 1}

    def const(name: str, value: Any, dtype: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    mean255 = np.asarray(params["mean"], dtype=np.float32) * np.float32(
        255
    )  # as normalise() computes them
    std255 = np.asarray(params["std"], dtype=np.float32) * np.float32(255)
    inits = [
        const("pp_zero", [0], np.int64),
        const("pp_hw", [0, 1], np.int64),
        const("pp_target", float(target), np.float64),
        const("pp_target_i", [target, target], np.int64),
        const("pp_two_f", 2.0, np.float64),
        const("pp_size", [size, size], np.int64),
        const("pp_one3", [1], np.int64),
        const("pp_three", [3], np.int64),
        const("pp_axes", [1, 2], np.int64),
        const("pp_mean", mean255.reshape(1, 3, 1, 1), np.float32),
        const("pp_std", std255.reshape(1, 3, 1, 1), np.float32),
    ]
    node = helper.make_node
    nodes = [
        # (H, W) of the input, then resize_plan's (torchvision's) arithmetic in float64 like
        # Python's floats: new = int(target * side / min(H, W)), the shorter side exactly
        # target (Max guards it against a float64 result a hair below).
        node("Shape", [PIXELS], ["pp_shape"]),
        node("Gather", ["pp_shape", "pp_hw"], ["pp_hw_i"]),
        node("Cast", ["pp_hw_i"], ["pp_hw_f"], to=TensorProto.DOUBLE),
        node("ReduceMin", ["pp_hw_f"], ["pp_short"], keepdims=0),
        node("Mul", ["pp_hw_f", "pp_target"], ["pp_stretched"]),
        node("Div", ["pp_stretched", "pp_short"], ["pp_scaled"]),
        node("Floor", ["pp_scaled"], ["pp_floored"]),
        node("Cast", ["pp_floored"], ["pp_new_i"], to=TensorProto.INT64),
        node("Max", ["pp_new_i", "pp_target_i"], ["pp_new"]),
        node("Concat", ["pp_one3", "pp_new", "pp_three"], ["pp_sizes"], axis=0),
        node("Unsqueeze", [PIXELS, "pp_zero"], ["pp_nhwc"]),
        node("Resize", ["pp_nhwc", "", "", "pp_sizes"], ["pp_resized"], **resize_attrs),
        # centre crop: offset int(round((new - size) / 2)) on H and W (round half to even,
        # as Python's round and ONNX's Round)
        node("Sub", ["pp_new", "pp_size"], ["pp_excess"]),
        node("Cast", ["pp_excess"], ["pp_excess_f"], to=TensorProto.DOUBLE),
        node("Div", ["pp_excess_f", "pp_two_f"], ["pp_half"]),
        node("Round", ["pp_half"], ["pp_half_r"]),
        node("Cast", ["pp_half_r"], ["pp_start"], to=TensorProto.INT64),
        node("Add", ["pp_start", "pp_size"], ["pp_end"]),
        node("Slice", ["pp_resized", "pp_start", "pp_end", "pp_axes"], ["pp_crop"]),
        node("Cast", ["pp_crop"], ["pp_float"], to=TensorProto.FLOAT),
        node("Transpose", ["pp_float"], ["pp_nchw"], perm=[0, 3, 1, 2]),
        node("Sub", ["pp_nchw", "pp_mean"], ["pp_centred"]),
        node("Div", ["pp_centred", "pp_std"], [output]),
    ]
    graph = helper.make_graph(
        nodes,
        "imagefit_preprocessing",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["height", "width", 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 3, size, size])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def add_preprocessing(classifier: Path, meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write ``out``: the preprocessing graph feeding ``classifier``; returns its parameters.

    The classifier is brought to opset 18 if it is older (the version converter handles the
    opset 17 -> 18 changes of the ops our exporters emit); metadata_props are kept and the
    ``imagefit.input``/``preprocessing`` entries are rewritten for the new input.
    """
    import onnx
    from onnx import compose, version_converter

    params = preprocessing_params(meta)
    model = onnx.load(str(classifier))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < OPSET:
        try:
            model = version_converter.convert_version(model, OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            raise ExportError(
                f"{classifier}: cannot convert opset {opset} to {OPSET} for the preprocessing "
                f"graph ({exc}); export with --opset {OPSET}"
            ) from None
    input_name = model.graph.input[0].name
    pre = preprocessing_graph(params, "pp_" + input_name)
    pre.ir_version = model.ir_version
    merged = compose.merge_models(pre, model, io_map=[("pp_" + input_name, input_name)])
    props = {p.key: p.value for p in model.metadata_props}
    props.update(
        {
            META_PREFIX + "input": PIXELS,
            META_PREFIX + "input_layout": "HWC uint8 RGB",
            META_PREFIX + "preprocessing": describe(params),
            META_PREFIX + "preprocessing_params": json.dumps(params),
            META_PREFIX + "crop_pct": json.dumps(params["crop_pct"]),
            META_PREFIX + "interpolation": params["interpolation"],
        }
    )
    onnx.helper.set_model_props(merged, props)
    merged.doc_string = model.doc_string + "; input: one uint8 RGB image, any size"
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(merged, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"{out}: the ONNX checker rejects the model: {exc}") from None
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return params


def _verification_images(run_dir: Path, count: int) -> tuple[str, list[Image.Image]]:
    """Real RGB images of the run (val, else test, else train), decoded by ``load_rgb``; else
    seeded noise images of varied odd sizes and aspect ratios, with a warning."""
    split, samples = split_samples(run_dir, ("val", "test", "train"), count)
    images = []
    for path, _ in samples:
        try:
            images.append(load_rgb(path))
        except DataError as exc:
            log.warning("skipped: %s", exc)
    if images:
        return f"{split} split of {RunLayout(run_dir).split}", images
    log.warning("%s: no %s with readable images; verifying on random images", run_dir, layout.SPLIT)
    rng = np.random.default_rng(0)
    shapes = [(37, 53), (64, 64), (101, 47), (300, 200), (17, 29), (250, 333)]
    return f"random images (no readable {layout.SPLIT} images)", [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes
    ]


def verify_preprocessing(
    path: Path, classifier: Path, meta: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """ONNX Runtime on raw pixels through ``path`` vs the classifier on the evaluation pixels.

    Passes only when top-1 agrees on every image checked.
    """
    from imagefit.export.onnx import ort_session

    params = preprocessing_params(meta)
    source, images = _verification_images(run_dir, VERIFY_IMAGES)
    full, plain = ort_session(path), ort_session(classifier)
    plain_input = plain.get_inputs()[0].name
    diffs, agree = [], 0
    for image in images:
        raw = np.asarray(image, dtype=np.uint8)
        got = full.run(None, {PIXELS: raw})[0]
        x = normalise(
            np.array(reference_pixels(image, params))[None], params["mean"], params["std"]
        )
        ref = plain.run(None, {plain_input: x})[0]
        diffs.append(float(np.abs(got.astype(np.float64) - ref).max()))
        agree += int(got.argmax() == ref.argmax())
    agreement = agree / len(images)
    return {
        "inputs": source,
        "images": len(images),
        "max_abs_diff": max(diffs),
        "top1_agreement": agreement,
        "passed": agree == len(images),
        "summary": (
            f"max |graph - evaluation| {max(diffs):.3g}, top-1 agreement {agreement:.2%} "
            f"on {len(images)} images"
        ),
    }


def export_preprocessing(classifier: Path, meta: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``<classifier stem>.preprocess.onnx`` beside the verified classifier, and its check.

    A file whose top-1 disagrees with the evaluation path on any image checked is renamed
    ``*.rejected.onnx``; :func:`raise_if_rejected` then fails the export (after export.json
    has recorded why).
    """
    out = layout.preprocess_name(classifier)
    params = add_preprocessing(classifier, meta, out)
    check = verify_preprocessing(out, classifier, meta, run_dir)
    result = {
        "onnx": str(out),
        "input": PIXELS,
        "input_shape": ["height", "width", 3],
        "opset": OPSET,
        "size_bytes": out.stat().st_size,
        "preprocessing": params,
        "verification": check,
    }
    if check["passed"]:
        log.info("wrote %s (%s)", out, check["summary"])
    else:
        rejected = layout.rejected_name(out)
        out.replace(rejected)
        result["onnx"] = str(rejected)
    return result


def raise_if_rejected(result: dict[str, Any], report: Path) -> None:
    """ExportError when :func:`export_preprocessing`'s check failed, naming the kept file."""
    check = result["verification"]
    if not check["passed"]:
        raise ExportError(
            f"{result['onnx']}: the in-graph preprocessing does not reproduce the evaluation "
            f"path ({check['summary']}); kept for inspection, details in {report}"
        )
