"""Where compiled numba code lives: ``$BIGEMBED_CACHE/numba`` (default ``~/.cache/bigembed/numba``).

Set once, in one place: ``import bigembed`` calls :func:`configure`, which runs before any
kernel module (``bigembed.kernels.*`` is inside the package) or umap-learn can compile, so every
``cache=True`` function (bigembed's raster kernels, pynndescent's, umap-learn's once
:func:`cache_uncached` switches theirs on) is written there, never into the source tree or
site-packages, and a new process loads it instead of compiling again. A ``NUMBA_CACHE_DIR``
the user set wins. numba itself is not imported here: ``import bigembed`` stays light.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path

log = logging.getLogger(__name__)


def numba_cache_dir() -> Path:
    """Where compiled numba code is kept between processes."""
    base = os.environ.get("BIGEMBED_CACHE")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME",
                                                        Path.home() / ".cache")) / "bigembed"
    return root / "numba"


def configure() -> str | None:
    """Point numba's on-disk cache at :func:`numba_cache_dir` (unless ``NUMBA_CACHE_DIR`` is
    set); returns the directory in use. Cheap: no import of numba, no file system access
    (numba creates the directory when it first writes)."""
    d = os.environ.get("NUMBA_CACHE_DIR")
    if not d:
        d = os.environ["NUMBA_CACHE_DIR"] = str(numba_cache_dir())
    nb = sys.modules.get("numba")
    if nb is not None:  # numba read its config at import: update it too
        nb.config.CACHE_DIR = d
    return d


def enable_numba_cache() -> None:
    """:func:`configure`, and create the directory now (a read-only home is logged once)."""
    d = Path(configure())
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cannot create the numba cache dir %s (%s); compiled code will not be "
                    "cached", d, e)


def is_cached(pattern: str) -> bool:
    """Whether the cache holds index files matching ``pattern`` (a glob under the cache dir,
    e.g. ``"umap_*/layouts._optimize_layout_euclidean_single_epoch-*.nbi"``)."""
    d = Path(os.environ.get("NUMBA_CACHE_DIR") or numba_cache_dir())
    return d.is_dir() and next(d.glob(pattern), None) is not None


def cache_uncached(*modules) -> int:
    """Switch on-disk caching on for the module-level numba dispatchers of ``modules`` that
    were compiled without ``cache=True``; returns how many.

    Two dispatchers of one Python function (umap-learn compiles its SGD epoch serial and
    parallel) would share one cache file, and whichever was saved last would be loaded for
    both: the parallel code under the serial, reproducible name. So the second and later get
    a copy of the function with a name of their own before caching is switched on.
    """
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    n = 0
    for mod in modules:
        seen: dict = {}
        for name, obj in sorted(vars(mod).items()):
            if not (isinstance(obj, Dispatcher)
                    and isinstance(getattr(obj, "_cache", None), NullCache)):
                continue
            f = obj.py_func
            if f in seen:
                obj = _renamed(obj, name)
                setattr(mod, name, obj)
            seen.setdefault(f, name)
            try:
                obj.enable_caching()
                n += 1
            except Exception as e:  # noqa: BLE001  (source not locatable: stay uncached)
                log.debug("numba caching not enabled for %s: %s", name, e)
    return n


def _renamed(disp, name: str):
    """The dispatcher ``disp`` again, over a copy of its function named after ``name``."""
    import numba

    f = disp.py_func
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__,
                           f.__closure__)
    g.__qualname__ = f"{f.__qualname__}.{name}"
    g.__module__ = f.__module__
    g.__kwdefaults__ = f.__kwdefaults__
    opts = {k: v for k, v in disp.targetoptions.items() if k != "nopython"}
    return numba.njit(**opts)(g)
