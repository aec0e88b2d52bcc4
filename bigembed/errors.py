"""Errors a user can act on.

Every error raised for bad input or a damaged dataset derives from :class:`BigembedError`,
so the CLI can print its message (no traceback) and exit non-zero, while library callers can
catch one type. Messages name the file or parameter, what was expected and what came.
"""

from __future__ import annotations


class BigembedError(Exception):
    """Base class of every error bigembed raises on purpose."""


class InputError(BigembedError, ValueError):
    """A parameter or an input file is not what was expected."""


class DatasetError(BigembedError):
    """A dataset directory is missing, damaged or inconsistent."""


class BackendUnavailable(BigembedError, ImportError):
    """An explicitly requested backend is not installed; the message says how to install it."""


def check_choice(name: str, value, allowed) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise InputError(f"{name} must be one of {sorted(allowed)!r}, got {value!r}")


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising :class:`InputError` if it is not an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__")
    ):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value}")
    return value
