"""Exceptions raised by the engine; each names what is wrong and how to fix it."""

from __future__ import annotations


class SamLoraError(Exception):
    """Base class of every error this package raises on purpose."""


class StackError(SamLoraError, ValueError):
    """The image stack cannot be segmented (shape, dtype, NaN/inf, constant...)."""


class PromptError(SamLoraError, ValueError):
    """A prompt is missing, outside the image, on a bad frame or of the wrong shape."""


class ModelError(SamLoraError):
    """A model name, checkpoint or device cannot be used."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt or belongs to another variant."""


class DownloadError(ModelError):
    """A checkpoint could not be downloaded (offline, server error, bad checksum)."""


class JobCancelled(SamLoraError):
    """A long-running job was cancelled by the user."""
