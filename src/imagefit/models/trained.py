"""Loading a trained model back from a run folder or a checkpoint file, with its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagefit.errors import CheckpointError
from imagefit.models.registry import create_model
from imagefit.runs.checkpoint import load_checkpoint
from imagefit.runs.layout import RunLayout
from imagefit.runs.meta import validate_meta
from imagefit.runs.reader import checkpoint_epochs, require_trained


def resolve_checkpoint(target: str | Path) -> Path:
    """A run folder means its ``best.pt`` (else ``last.pt``); a file is itself."""
    path = Path(target)
    if path.is_dir():
        run = RunLayout(path)
        for checkpoint in (run.best, run.last):
            if checkpoint.is_file():
                return checkpoint
        raise CheckpointError(f"{path}: run folder has no {run.best.name} or {run.last.name}")
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    return path


def _kind(state: dict[str, Any]) -> str:
    """What a plain dict that is not an imagefit checkpoint probably is, from its keys."""
    keys = [str(k) for k in state]
    if "param_groups" in keys:
        return "it is an optimizer state (param_groups): it holds no model weights"
    if "state_dict" in keys and any("lightning" in k for k in keys):
        return (
            "it is a PyTorch Lightning checkpoint: use it as model.init to train from its weights"
        )
    if keys and all(isinstance(v, torch.Tensor) for v in state.values()):
        return "it is a bare state dict: use it as model.init to train from it"
    return f"its keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"


def load_trained(
    target: str | Path, device: str | torch.device = "cpu", allow_untrained: bool = False
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, meta, config dict) from a run folder or an imagefit checkpoint.

    A checkpoint with no finished epoch is refused (UntrainedRunError) unless
    ``allow_untrained``; ``meta["trained"]`` says which it was, for the output's label.
    """
    path = resolve_checkpoint(target)
    state = load_checkpoint(path, map_location=device)
    if "meta" not in state or "model" not in state:
        raise CheckpointError(
            f"{path}: not an imagefit checkpoint (no 'meta'/'model' entries); {_kind(state)}"
        )
    # Checked before it sizes the model or labels a prediction: the file may come from anywhere.
    meta = validate_meta(state["meta"], path, "checkpoint meta")
    meta["trained"] = require_trained(path, checkpoint_epochs(state), allow_untrained)
    model = create_model(meta["arch"], meta["num_classes"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {meta['arch']}: {str(exc).splitlines()[0]}"
        ) from None
    model.to(device).eval()
    return model, meta, state.get("config", {})
