"""Serving an exported model over HTTP: dynamic batching on ONNX Runtime, Prometheus metrics."""

from imagefit.errors import ImagefitError


class ServeError(ImagefitError):
    """The model cannot be served as asked (missing, not an imagefit ONNX file, bad settings)."""
