"""What a refused checkpoint is, told without unpickling it.

``torch.load(weights_only=True)`` refuses a file whose pickle names classes or functions that
are not plain tensors and containers. Saying *what* the file is lets a user convert it safely:
the pickle's opcodes are read with :mod:`pickletools` (which decodes, never executes), the
``GLOBAL``/``STACK_GLOBAL`` imports it would perform and the short strings it holds (dict keys
such as ``state_dict`` or ``pytorch-lightning_version``) are collected, and the zip's entry
names are listed. Nothing in the file is imported or run.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_PICKLE_BYTES = 64 * 2**20  # the object tree of a checkpoint; tensors live in other entries
MAX_STRINGS = 5_000
# Imports a weights_only load allows anyway: they say nothing about what the file is.
PLAIN = ("torch._utils", "torch.", "collections.", "_codecs.")
PLAIN_NAMES = {  # "__builtin__" is how protocol-2 pickles spell builtins
    f"{module}.{name}"
    for module in ("builtins", "__builtin__")
    for name in ("set", "frozenset", "bytearray", "slice", "complex")
}
# Imports that run commands or code as the file loads: such a file is an attack, not a model
# to convert (a probe cannot list every way; these are the common ones).
CODE = (
    "os.",
    "posix.",
    "nt.",
    "subprocess.",
    "sys.",
    "runpy.",
    "importlib.",
    "shutil.",
    "socket.",
    "pty.",
    "ctypes.",
    "marshal.",
    "pickle.",
    "code.",
    "webbrowser.",
    "builtins.eval",
    "builtins.exec",
    "builtins.compile",
    "builtins.open",
    "builtins.getattr",
    "builtins.__import__",
    "operator.attrgetter",
    "operator.methodcaller",
)


@dataclass
class PickleContents:
    """The imports a pickle performs, its short strings and (for a zip) its entries."""

    globals: list[str] = field(default_factory=list)  # "module.name", in order, unique
    strings: set[str] = field(default_factory=set)
    entries: list[str] = field(default_factory=list)
    readable: bool = True


def _scan(data: bytes, found: PickleContents) -> None:
    """Add the imports and strings of every pickle in ``data`` (a legacy torch file holds a few
    in a row) to ``found``; stops quietly at the first byte that is not a pickle."""
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        recent: list[str] = []  # STACK_GLOBAL takes its module and name from the last 2 pushes
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    recent = [*recent[-1:], arg]
                    if len(arg) <= 80 and len(found.strings) < MAX_STRINGS:
                        found.strings.add(arg)
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    name = arg.replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(recent) == 2:
                    name = ".".join(recent)
                else:
                    continue
                if name not in found.globals:
                    found.globals.append(name)
        except Exception:  # noqa: BLE001 - past the last pickle (tensor bytes) or damaged
            return


def inspect_pickle(path: str | Path) -> PickleContents:
    """The imports, strings and zip entries of a torch checkpoint (zip or legacy format)."""
    found = PickleContents()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found.entries = archive.namelist()
                for name in found.entries:
                    info = archive.getinfo(name)
                    if name.endswith(".pkl") and info.file_size <= MAX_PICKLE_BYTES:
                        _scan(archive.read(name), found)
        else:
            with open(path, "rb") as handle:
                _scan(handle.read(MAX_PICKLE_BYTES), found)
    except (OSError, zipfile.BadZipFile):
        found.readable = False
    return found


def foreign_globals(found: PickleContents) -> list[str]:
    """The imports a weights-only load would not allow: what made it refuse."""
    return [
        name
        for name in found.globals
        if (name not in PLAIN_NAMES and not name.startswith(PLAIN))
        or name.startswith(("torch.nn.", "torch.optim."))
    ]


def describe_refused(path: str | Path) -> tuple[str, str]:
    """``(what the file is, the expression that gives its weights)`` for a refused checkpoint;
    the expression is empty when there is nothing safe to convert."""
    found = inspect_pickle(path)
    foreign = foreign_globals(found)
    strings = found.strings
    shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
    code = [g for g in foreign if g.startswith(CODE)]
    if code:
        return f"a pickle that runs {', '.join(code[:3])} when loaded: do not load it", ""
    if any("lightning" in s for s in strings) and "state_dict" in strings:
        return "a PyTorch Lightning checkpoint (its weights are under 'state_dict')", (
            'obj["state_dict"]'
        )
    modules = [g for g in foreign if ".nn." in g or g.startswith(("timm.", "torchvision."))]
    if modules:
        return f"a pickled full model object ({shown})", "obj.state_dict()"
    if "param_groups" in strings and not {"model", "state_dict"} & strings:
        return "an optimizer state only (param_groups; no model weights to load)", ""
    if foreign:
        return f"a pickle that imports {shown}", "obj.state_dict()"
    return "a pickle of objects that are not plain weights", "obj.state_dict()"
