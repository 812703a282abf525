#!/bin/sh
# Refresh the vendored onnxruntime-web (the page of `imagefit export --web` works offline with it).
# Only the smallest build that runs our models is kept: the WebAssembly-only script build
# (ort.wasm.min.js), the module it loads and its SIMD .wasm binary. Usage:
#   sh src/imagefit/resources/ort-web/refresh.sh [VERSION]     (default: the latest release)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-$(npm view onnxruntime-web version)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar xzf onnxruntime-web-*.tgz)
for f in ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
  cp "$work/package/dist/$f" "$here/$f"
done
echo "$version" > "$here/VERSION"
echo "onnxruntime-web $version vendored into $here"
