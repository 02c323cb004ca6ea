"""User-facing errors.

Every error a user can cause (bad paths, malformed split files, unreadable videos,
mismatched weights) is a subclass of :class:`VpipeError`. The CLI prints the message
as one line and exits non-zero, so messages must say what went wrong, where, and
how to fix it. Bugs stay ordinary exceptions and keep their tracebacks.
"""


class VpipeError(Exception):
    """An error caused by user input or environment; its message is shown as-is."""


class ConfigError(VpipeError):
    """Invalid option values or combinations."""


class DatasetError(VpipeError):
    """A dataset tree or split file that does not match its documented layout."""


class DecodeError(VpipeError):
    """A video that cannot be opened or decoded (missing, empty, truncated, not a video)."""


class DecodeTimeoutError(DecodeError):
    """A decode that ran past its time limit: a hang becomes this, not a stuck job."""


class WeightsError(VpipeError):
    """A weights file that is missing, unreadable or does not match the model."""


class StageError(VpipeError):
    """A stage that cannot run at all (missing inputs, nothing to do it with)."""


class CorruptArtifactError(StageError):
    """A stored file that fails its checks (digest, HDF5 checksum, non-finite values)."""


class NonFiniteError(VpipeError):
    """A model produced NaN or infinite values; they are never stored."""
