"""Exceptions raised by the package on purpose: one family, each names what is wrong and the fix.

Every class derives from :class:`SamLoraError`; the command line's error boundary prints
any of them as one line. Classes that describe a bad *value* also derive from
``ValueError``, those that describe a failed *write* from ``OSError``.
"""

from __future__ import annotations


class SamLoraError(Exception):
    """Base class of every error this package raises on purpose."""


class StackError(SamLoraError, ValueError):
    """The image stack cannot be segmented (shape, dtype, NaN/inf, constant...)."""


class PromptError(SamLoraError, ValueError):
    """A prompt is missing, outside the image, on a bad frame or of the wrong shape."""


class ConfigError(SamLoraError, ValueError):
    """A setting or config file is unreadable, has unknown keys or bad values."""


class DataError(SamLoraError, ValueError):
    """Images, labels or a data set (``suite.json``) cannot be used (the message says why)."""


class ModelError(SamLoraError):
    """A model name, checkpoint or device cannot be used."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt or belongs to another variant."""


class DownloadError(ModelError):
    """A checkpoint could not be downloaded (offline, server error, bad checksum)."""


class WriteError(SamLoraError, OSError):
    """A file set could not be written (disk full, read-only folder...); nothing was replaced."""


class JobCancelled(SamLoraError):
    """A long-running job was cancelled by the user."""
