"""The one exception type of mevos.

Library code raises these; only the CLI turns them into a one-line message and exit code 2.
"""

from __future__ import annotations


class MevosError(Exception):
    """Base of every error mevos raises on purpose. The message says what was wrong and the fix."""


class InputError(MevosError):
    """Bad user input: a file that cannot be read, a mask that does not fit its frame, ..."""


class CheckpointError(MevosError):
    """A checkpoint that is truncated, foreign, or does not match the model it is loaded into."""


class MissingExtraError(MevosError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the Python package '{package}' is needed{what} but is not installed; "
            f"install it with: pip install 'mevos[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str = "", package: str | None = None):  # noqa: ANN201
    """Import an optional module or raise MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package or module.split(".")[0], extra, purpose) from exc


class UsageError(MevosError, ValueError):
    """An API called with arguments that cannot work: wrong shapes, dtypes, devices, k out of range."""
