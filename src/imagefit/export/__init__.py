"""Shipping a trained model: ONNX export with verification, INT8, and ``predict``."""

from imagefit.errors import ImagefitError


class ExportError(ImagefitError):
    """A model cannot be exported, or the export does not reproduce the PyTorch model."""
