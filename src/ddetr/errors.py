"""User-facing errors: one line a user can act on, printed by the CLI without a traceback."""

from __future__ import annotations


class DdetrError(Exception):
    """Bad input or an unavailable facility. The message is one sentence naming the field and values."""


class SpecError(DdetrError, ValueError):
    """The experiment spec is invalid (unknown key, wrong type, out of range, cross-field rule)."""


class DataError(DdetrError, ValueError):
    """A dataset, image or annotation file cannot be used."""


class CheckpointError(DdetrError, ValueError):
    """A checkpoint or weights file cannot be read or does not fit the model."""


class UnavailableError(DdetrError, RuntimeError):
    """A requested facility (GPU, TensorRT, a package) is not available on this machine."""


class TrainingError(DdetrError, RuntimeError):
    """Training cannot go on as configured (e.g. the loss became NaN); the message names what to change."""


class DeviceMemoryError(DdetrError, RuntimeError):
    """The GPU ran out of memory; the message names the batch size and the field that sets it."""


class Interrupted(Exception):
    """A run stopped from outside (SIGTERM or Ctrl-C) after saving what it could; not a user error.

    Attributes:
        exit_code: the process exit status the CLI returns: 143 for SIGTERM, 130 for Ctrl-C (128 + signal).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
