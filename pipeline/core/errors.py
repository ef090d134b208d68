"""One exception type for every error a user can fix.

A :class:`ClipcurateError` carries a one-line message that quotes the bad value and says the fix.
The CLI prints it as a single line and exits 1; anything else is a bug (shown with ``--debug``).
"""

import importlib


class ClipcurateError(Exception):
    """A runtime error with a one-line, user-facing message (exit code 1)."""


class MissingUpstream(ClipcurateError):
    """An earlier stage's output is missing; the message names the command to run first."""

    def __init__(self, what: str, command: str):
        super().__init__(f"{what} not found: run `{command}` first")
        self.command = command


class MissingDependency(ClipcurateError):
    """An optional package is not installed."""

    def __init__(self, package: str, feature: str):
        super().__init__(f"pip install {package} to use {feature}")


def require(module: str, package: str, feature: str):
    """Import an optional module or raise "pip install X to use Y"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(package, feature) from exc
