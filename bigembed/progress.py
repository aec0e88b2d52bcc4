"""Progress bars for anything a person waits for: on in a terminal, off otherwise or on request."""

from __future__ import annotations

import os
import sys

_forced: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on (True), off (False), or back to automatic (None)."""
    global _forced
    _forced = enabled


def progress_enabled(enabled: bool | None = None) -> bool:
    if enabled is not None:
        return enabled
    if _forced is not None:
        return _forced
    if os.environ.get("BIGEMBED_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, total=None, desc=None, unit="it", enabled=None, **kw):
    """A tqdm bar on stderr when enabled, else a silent pass-through with the same API."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled),
                dynamic_ncols=True, leave=False, **kw)
