"""The one error family for problems a user can fix.

Library code raises a subclass of :class:`LdmctlError` with a message that names the offending
value (and the allowed choices) plus an optional ``hint``. The CLI boundary in
``ldmctl.cli.main`` turns it into one ``error:`` line and exit code 1. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class LdmctlError(Exception):
    """A problem the user can fix: bad value, missing file, wrong kind of checkpoint."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(LdmctlError):
    """An invalid configuration value, unknown key or unknown preset."""


class CheckpointError(LdmctlError):
    """A checkpoint that is missing, unreadable, tampered with or of the wrong kind."""


class PluginError(LdmctlError):
    """A conditioner plugin that is missing or breaks the contract."""


class DataError(LdmctlError):
    """A data set that cannot be used: missing folder, no usable image, missing package."""


class WeightsError(LdmctlError):
    """Pretrained weights (LPIPS backbone, Inception, ...) that are not on this machine."""


class PackageError(LdmctlError):
    """An optional package a feature needs is not installed; the hint names the extra to install."""


class TrainingError(LdmctlError):
    """A run that cannot go on: e.g. the loss stayed non-finite for too many steps in a row."""


class InputError(ConfigError):
    """A sample-time input (``--input KEY=VALUE``, ``--prompt``, ``--label``) that the model's
    conditioners do not read, or a value the conditioner reading it cannot parse."""
