"""Exceptions a user can cause. The CLI prints their message and exits non-zero; nothing else
catches them, so a message must name the file, key or value at fault."""


class ImagefitError(Exception):
    """Base class of every error imagefit raises for bad input or state."""


class ConfigError(ImagefitError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(ImagefitError):
    """A dataset, folder or image file cannot be used as asked."""


class ImageError(DataError):
    """One image file cannot be used; ``kind`` says why, for reports that group bad files.

    Kinds: ``missing``, ``not_image``, ``unreadable`` (truncated or corrupt), ``unsupported_mode``,
    ``too_small``, ``too_large`` (more pixels than Pillow's decompression-bomb limit).
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class CheckpointError(ImagefitError):
    """A checkpoint or run folder is missing, damaged, unsafe or does not fit."""


class UntrainedRunError(CheckpointError):
    """A run (or its checkpoint, or its export) has no finished epoch: its weights are the
    initial ones, and metrics or predictions from it would look like a model's."""


class MetadataError(CheckpointError):
    """A model file, checkpoint or run folder says something malformed or out of bounds."""


class TrainingStopped(ImagefitError):
    """Training stopped on purpose before its end (non-finite loss or gradient)."""


class Interrupted(ImagefitError):
    """A signal asked the run to stop; the state was saved and the run can be resumed."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", distinct from errors (1, 2) and kills
