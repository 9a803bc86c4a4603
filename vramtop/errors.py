"""Errors that end a command with a one-line message and a documented exit code."""

from __future__ import annotations

# Exit codes (documented in the README).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_DRIVER = 3  # NVML library missing or the driver not loaded
EXIT_NO_GPU = 4  # driver fine, but no (selected) GPU
EXIT_NVML = 5  # NVML refused or failed (permission, hang, lost GPU)


class VramtopError(Exception):
    """An expected failure: printed as ``vramtop: <message>``, never as a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
