"""Crash-safe file writes: temporary name, fsync, rename, fsync the directory.

A reader never sees a half-written file under its final name: either the old file or the
complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    """A unique temporary sibling of ``path`` (same directory, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path to write; on success fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        fd = os.open(str(tmp), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: Path, name: str | None = None) -> int:
    """Delete temporary files/dirs left in ``directory`` by killed writers; return how many.

    Only temporaries of ``name`` (all names when None) whose writing process is gone are
    removed, so a concurrent writer's work in progress is never touched.
    """
    import shutil

    n = 0
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    for p in directory.iterdir():
        if not p.name.startswith(".") or TMP_MARK not in p.name:
            continue
        base, _, rest = p.name[1:].rpartition(TMP_MARK)
        if name is not None and base != name:
            continue
        try:
            pid = int(rest.split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            n += 1
    return n


_RENAME_EXCHANGE = 2
_renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); returns
    False where the OS or filesystem cannot, and the caller falls back to two renames."""
    global _renameat2
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            f = libc.renameat2
            f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
            f.restype = ctypes.c_int
            _renameat2 = f
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    at_fdcwd = -100
    rc = _renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)),
                    _RENAME_EXCHANGE)
    return rc == 0
