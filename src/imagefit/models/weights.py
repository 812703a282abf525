"""Initialising a model from scratch, a weights file, an imagefit checkpoint or the hub.

A different number of classes is the normal case of transfer learning: the head's tensors are
left out of the load and the new head keeps its fresh initialisation. Anything else that does
not fit (missing or unexpected backbone tensors, other shapes) is an error, never a partial load.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagefit.errors import CheckpointError, ConfigError
from imagefit.models.registry import build_architecture

log = logging.getLogger(__name__)

_INIT_ATTR = "imagefit_init"  # where a model records the provenance of its weights


def _record_init(model: nn.Module, provenance: dict[str, Any]) -> None:
    """Set ``model.imagefit_init`` (nn.Module's typed ``__setattr__`` only names tensors and
    modules; at runtime a plain value becomes an ordinary attribute)."""
    setattr(model, _INIT_ATTR, provenance)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, imagefit meta or {}) from an imagefit checkpoint or a plain weights file."""
    if not path.is_file():
        raise CheckpointError(f"model.init: weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    from imagefit.runs.checkpoint import load_checkpoint
    from imagefit.runs.meta import validate_meta

    raw = load_checkpoint(path)
    if "model" in raw and "meta" in raw:  # an imagefit checkpoint
        return raw["model"], validate_meta(raw["meta"], path, "checkpoint meta")
    state = raw.get("state_dict", raw.get("model", raw))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, {}


def head_names(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (``get_classifier`` is timm's interface)."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if get_classifier is not None else None
    if not isinstance(head, nn.Module):
        return set()
    ids = {id(t) for t in list(head.parameters()) + list(head.buffers())}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> bool:
    """Load ``state`` strictly, except a head of another shape. Returns True if it replaced it."""
    own = model.state_dict()
    heads = head_names(model)
    mismatched = {k for k in heads if k in state and state[k].shape != own[k].shape}
    state = {k: v for k, v in state.items() if k not in mismatched}
    missing = sorted(set(own) - set(state) - mismatched)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong),
            )
            if keys
        ]
        raise CheckpointError(f"{source} does not fit this architecture ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)
    return bool(mismatched)


def initialise(name: str, num_classes: int, init: str, drop_rate: float = 0.0) -> nn.Module:
    if init == "scratch":
        model = build_architecture(name, num_classes, drop_rate)
        _record_init(model, {"init": "scratch"})
        return model
    if init.startswith("hub:"):
        return _from_hub(name, num_classes, init.removeprefix("hub:"), drop_rate)
    path = Path(init).expanduser()
    model = build_architecture(name, num_classes, drop_rate)
    state, meta = read_state_dict(path)
    replaced = load_backbone(model, state, str(path))
    _record_init(
        model,
        {
            "init": init,
            "kind": "imagefit-checkpoint" if meta else "weights-file",
            "path": str(path.resolve()),
            "sha256": file_sha256(path),
            "head_replaced": replaced,
            "source_arch": meta.get("arch"),
            "source_classes": len(meta.get("classes", [])) or None,
            # meta.run_dir is relative to the checkpoint's folder (absolute in older files)
            "source_run": str((path.parent / meta["run_dir"]).resolve())
            if meta.get("run_dir")
            else None,
            # how pretrained weights were made (imagefit.pipeline writes it), recipe aside
            "source_provenance": {
                k: v for k, v in (meta.get("provenance") or {}).items() if k != "recipe"
            }
            or None,
        },
    )
    if meta and meta.get("arch") not in (None, name):
        raise CheckpointError(f"{path} holds a '{meta['arch']}' model, not model.name='{name}'")
    log.info("initialised %s from %s%s", name, path, " (new head)" if replaced else "")
    return model


HUB_HOST = "huggingface.co"
HUB_PROBE_SECONDS = 3.0


def hub_reachable(host: str = HUB_HOST, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Can this machine open a connection to the hub? One short try, no retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Hub downloads read only the local cache: huggingface_hub otherwise retries an
    unreachable host for about a minute before it gives up."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _from_hub(name: str, num_classes: int, hub_name: str, drop_rate: float) -> nn.Module:
    import timm

    if timm.models.split_model_name_tag(hub_name)[0] != timm.models.split_model_name_tag(name)[0]:
        raise ConfigError(f"model.init 'hub:{hub_name}' is not a '{name}' architecture")
    offline = not hub_reachable()
    if offline:
        log.warning(
            "%s is unreachable: looking for %s in the local hub cache only", HUB_HOST, hub_name
        )
    try:
        with _hub_offline() if offline else nullcontext():
            model = build_architecture(hub_name, num_classes, drop_rate, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:  # no network, unknown tag, hub error
        where = (
            f"{HUB_HOST} is unreachable and the local hub cache lacks them"
            if offline
            else (f"{type(exc).__name__}: {exc}")
        )
        raise CheckpointError(
            f"could not fetch hub weights '{hub_name}' ({where}). Offline? "
            f"Download the weights file on a connected machine and set "
            f"model.init=/path/to/{hub_name}.safetensors (or a .pth state dict) instead."
        ) from None
    _record_init(model, {"init": f"hub:{hub_name}", "kind": "hub", "head_replaced": True})
    return model
