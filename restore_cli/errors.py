"""Errors a user can cause. Each carries one line that the CLI prints instead of a traceback."""

from __future__ import annotations


class RestoreError(Exception):
    """A failure with a one-line, user-facing message (exit code 1)."""

    exit_code = 1


class UsageError(RestoreError):
    """Bad command-line usage: unknown preset, bad flag value (exit code 2)."""

    exit_code = 2


class WeightsError(RestoreError):
    """A weights file that cannot be fetched, verified, read or matched to an architecture."""


class ImageError(RestoreError):
    """An input that cannot be decoded, or an output that cannot be written."""


class InterruptError(RestoreError):
    """The user asked to stop (Ctrl-C); raised between tiles so nothing is left half-done (exit code 130)."""

    exit_code = 130


class VideoError(RestoreError):
    """A video that cannot be probed or decoded, or an output video that cannot be written."""
