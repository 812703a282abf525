"""``export_web``: a static folder that runs the model in a browser, offline.

The folder holds ``index.html``, ``model.onnx`` (the model with its preprocessing in the graph,
so the page only hands over the decoded pixels) and the vendored onnxruntime-web build from
``imagefit/resources/ort-web``. Any static file server will do: ``python -m http.server``.

The page decodes with the browser (``createImageBitmap`` with EXIF orientation and without
colour-space conversion, like Pillow), drops alpha like :func:`imagefit.data.images.to_rgb`,
and shows the top-k classes as bars. ``index.html?image=URL`` classifies that image on load and
records the result in ``<body data-status data-top1 data-result>`` for scripted checks.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from imagefit.export import ExportError
from imagefit.export.onnx import ort_session, session_metadata
from imagefit.fileio import atomic_write, make_dirs, write_errors
from imagefit.runs import layout

log = logging.getLogger(__name__)

ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MODEL = layout.ONNX  # the page loads the model under the name a run folder uses


def export_web(model: str | Path, out: str | Path, top_k: int = 5) -> Path:
    """Write the page for ``model`` (a ``*.preprocess.onnx``) into ``out``; returns index.html."""
    model, out = Path(model), Path(out)
    session = ort_session(model)
    custom = session.get_modelmeta().custom_metadata_map
    meta = session_metadata(session, model)
    input_info = session.get_inputs()[0]
    if input_info.type != "tensor(uint8)" or len(input_info.shape) != 3:
        raise ExportError(
            f"{model}: input {input_info.name} {input_info.type} {input_info.shape} is not one "
            "uint8 image (H, W, 3); export with --with-preprocessing first"
        )
    make_dirs(out, "the page's folder")
    vendored = resources.files("imagefit.resources") / "ort-web"
    with write_errors(out, "the page's files"):
        for name in (*ORT_FILES, "LICENSE"):
            with resources.as_file(vendored / name) as source:
                target = out / f"ort-web-{name}" if name == "LICENSE" else out / name
                shutil.copyfile(source, target)
        shutil.copyfile(model, out / MODEL)
    config = {
        "model": MODEL,
        "input": input_info.name,
        "classes": meta["classes"],
        "top_k": min(top_k, len(meta["classes"])),
        "arch": meta["arch"],
        "image_size": meta["image_size"],
        "preprocessing": custom.get("imagefit.preprocessing", ""),
    }
    page = out / "index.html"
    atomic_write(page, render_page(config), what="the web page")
    log.info("wrote %s (%d classes, %s)", page, len(meta["classes"]), model.name)
    return page


def render_page(config: dict[str, Any]) -> str:
    # "</" inside the JSON would end the <script> element early
    data = json.dumps(config).replace("</", "<\\/")
    title = html.escape(f"imagefit: {config['arch']}, {len(config['classes'])} classes")
    return PAGE.replace("{{TITLE}}", title).replace("{{CONFIG}}", data)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a6; background: #f3fbf6; }
  #preview { max-width: 100%; max-height: 18rem; display: block; margin: 1rem auto; }
  .row { display: grid; grid-template-columns: 10rem 1fr 4.5rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .bar { background: #2a6; height: 1rem; border-radius: 3px; }
  .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .p { text-align: right; font-variant-numeric: tabular-nums; }
  #status { color: #555; } #status.error { color: #b00; }
  small { color: #666; }
</style>
</head>
<body data-status="loading">
<h1>{{TITLE}}</h1>
<p id="status">Loading the model...</p>
<div id="drop">Drop an image here, or click to choose one<input id="file" type="file" accept="image/*" hidden></div>
<img id="preview" alt="">
<div id="result"></div>
<p><small id="about"></small></p>
<script id="config" type="application/json">{{CONFIG}}</script>
<script src="ort.wasm.min.js"></script>
<script>
"use strict";
const config = JSON.parse(document.getElementById("config").textContent);
const $ = id => document.getElementById(id);
document.getElementById("about").textContent =
  "Runs in this browser with onnxruntime-web; nothing is uploaded. Preprocessing inside the model: " +
  config.preprocessing;

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").className = state === "error" ? "error" : "";
  document.body.dataset.status = state;
}

// Single-threaded WebAssembly: a plain static server sends no cross-origin isolation headers.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("./", location.href).href;
const ready = ort.InferenceSession.create(config.model, { executionProviders: ["wasm"] });

// Decoded RGBA -> (H, W, 3) uint8 RGB; alpha dropped, not composited (as imagefit's to_rgb).
async function pixels(blob) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
  });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return new ort.Tensor("uint8", rgb, [bitmap.height, bitmap.width, 3]);
}

function softmax(logits) {
  const max = Math.max(...logits);
  const e = Array.from(logits, v => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map(v => v / sum);
}

function show(top) {
  const result = $("result");
  result.replaceChildren();
  for (const t of top) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = t.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (100 * t.probability).toFixed(1) + "%";
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = (100 * t.probability).toFixed(1) + "%";
    row.append(label, bar, p);
    result.append(row);
  }
}

async function classify(blob, name) {
  try {
    setStatus("Classifying " + name + "...", "running");
    $("preview").src = URL.createObjectURL(blob);
    const session = await ready;
    const output = await session.run({ [config.input]: await pixels(blob) });
    const probs = softmax(output[session.outputNames[0]].data);
    const top = probs.map((p, i) => ({ label: config.classes[i], index: i, probability: p }))
      .sort((a, b) => b.probability - a.probability || a.index - b.index)
      .slice(0, config.top_k);
    show(top);
    document.body.dataset.top1 = top[0].label;
    document.body.dataset.result = JSON.stringify(top);
    setStatus(name + ": " + top[0].label, "done");
  } catch (error) {
    setStatus("Cannot classify " + name + ": " + error, "error");
  }
}

ready.then(() => { if (document.body.dataset.status === "loading") setStatus("Ready: drop an image.", "ready"); })
     .catch(error => setStatus("Cannot load the model: " + error, "error"));

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
$("file").addEventListener("change", e => { const f = e.target.files[0]; if (f) classify(f, f.name); });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) classify(f, f.name);
});

const wanted = new URLSearchParams(location.search).get("image");
if (wanted) {
  fetch(wanted)
    .then(r => { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
    .then(blob => classify(blob, wanted))
    .catch(error => setStatus("Cannot fetch " + wanted + ": " + error, "error"));
}
</script>
</body>
</html>
"""
