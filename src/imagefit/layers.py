"""The order of imagefit's packages, bottom to top: the one place it is written down.

A module imports only from its own package and from packages in lower layers; packages in the
same layer do not import each other. ``tests/test_architecture.py`` checks every import of
every module (function-level ones included) against this list, and that no cycle exists.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "layers", "resources"),  # the version string; this list; packaged files
    ("errors",),  # typed errors a user can cause
    ("dotted", "registry"),  # dotted keys in nested dicts; named factories
    ("fileio",),  # atomic, durable file writes
    ("model_names",),  # the model names a config may use, cached per timm version
    ("config",),  # the typed config tree
    ("runs",),  # the run folder: names, checkpoint format, records, reader, writers
    ("data",),  # the input pipeline: files, splits, decoding, caches, loaders
    ("datasets",),  # getting, making and checking datasets (CIFAR, digits, fractals)
    ("models",),  # architectures, initialisation, loading trained models
    ("evaluate",),  # inference over a loader, metrics, plots, reports
    ("train",),  # fit(): the training loop, checkpoints each epoch, resume
    ("export", "baselines"),  # ONNX export and predict; HOG + SVM
    ("track", "serve"),  # MLflow and TensorBoard sinks (they log exported files); HTTP serving
    ("workflow",),  # fit, then the post-run steps: plots, export, tracking
    ("sweep",),  # many runs from one file, compared
    ("pipeline", "demo"),  # fractal pretraining end to end; the offline demo
    ("cli",),  # the `imagefit` command
    ("__main__",),
)


def layer_of(package: str) -> int:
    """Index of ``package`` (a top-level name under ``imagefit``) in :data:`LAYERS`."""
    for index, members in enumerate(LAYERS):
        if package in members:
            return index
    raise KeyError(f"imagefit.{package} has no layer in imagefit.layers.LAYERS")
