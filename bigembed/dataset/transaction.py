"""Changing a dataset: one exclusive lock per dataset, and commits that merge.

Every change to an existing dataset is one transaction:

1. the new files are written under temporary names (``.<name>.tmp-<pid>-<random>``), outside
   the lock, so a long computation never blocks other writers;
2. under an exclusive OS file lock on ``<dataset>/.lock`` (``fcntl.flock``), the manifest is
   re-read, the temporary files are renamed to final names that no manifest has ever pointed at
   (a file the manifest lists is never replaced in place), the change is merged into what other
   writers committed meanwhile, and the manifest is replaced atomically;
3. files the new manifest no longer lists (the replaced meta, the old copy of a space) are
   removed, still under the lock.

A writer killed anywhere leaves the previous manifest pointing at complete files; what it
leaves behind (temporaries, a renamed file the manifest never listed) is an orphan that
:mod:`bigembed.dataset.gc` reports and removes, and that the next writer collects first.

A second writer waits for the lock with a logged message, and gives up after
``BIGEMBED_LOCK_TIMEOUT`` seconds (default 120) with an error naming the holder. The lock is
held only for renames and the manifest write (milliseconds), or for a collection of orphans.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from ..errors import DatasetError
from . import _atomic
from .format import FORMAT, FORMAT_VERSION, MANIFEST

log = logging.getLogger(__name__)

LOCK = ".lock"
#: OS errors that mean "this dataset cannot be written by this user / on this filesystem".
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)

_held = threading.local()


def lock_timeout() -> float:
    try:
        return float(os.environ.get("BIGEMBED_LOCK_TIMEOUT", "120"))
    except ValueError:
        return 120.0


def not_writable(path: Path, e: OSError) -> DatasetError:
    """The one-line error for a write refused by the OS (read-only dataset or filesystem)."""
    why = e.strerror or str(e)
    return DatasetError(f"dataset {path} is not writable ({why}: {e.filename or path}); "
                        f"nothing was changed. Make it writable or copy it somewhere writable")


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def dataset_lock(path, *, timeout: float | None = None):
    """Hold the exclusive writer lock of dataset ``path`` inside the block.

    Re-entrant within one thread. Waits (logging who holds it) up to ``timeout`` seconds
    (``BIGEMBED_LOCK_TIMEOUT``, default 120), then raises :class:`DatasetError`. Raises
    :class:`DatasetError` when the dataset is not writable. Yields the lock's acquisition time
    (``time.time()``).
    """
    path = Path(path)
    key = str(path.resolve())
    depth = getattr(_held, "locks", None)
    if depth is None:
        depth = _held.locks = {}
    if key in depth:
        depth[key][0] += 1
        try:
            yield depth[key][1]
        finally:
            depth[key][0] -= 1
        return
    timeout = lock_timeout() if timeout is None else float(timeout)
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in READ_ONLY_ERRNOS:
            raise not_writable(path, e) from None
        if e.errno == errno.ENOENT:
            raise DatasetError(f"dataset {path} does not exist") from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            log.warning("dataset %s is being changed by another writer (%s); waiting for it "
                        "(up to %.0fs)", path, who, timeout)
            deadline = time.monotonic() + timeout
            pause = 0.02
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DatasetError(
                            f"dataset {path} is locked by another writer ({_holder(fd)}) for "
                            f"more than {timeout:.0f}s; nothing was changed. Rerun when it "
                            f"has finished (BIGEMBED_LOCK_TIMEOUT sets the wait)") from None
                    time.sleep(pause)
                    pause = min(pause * 1.5, 0.25)
            log.info("dataset %s: lock acquired after waiting", path)
        acquired = time.time()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            cmd = " ".join(os.path.basename(a) if i == 0 else a
                           for i, a in enumerate(sys.argv[:4]))
            os.pwrite(fd, f"pid {os.getpid()} ({cmd})\n".encode(), 0)
        depth[key] = [1, acquired]
        try:
            yield acquired
        finally:
            del depth[key]
    finally:
        os.close(fd)  # releases the flock


def holds_lock(path) -> bool:
    """Whether this thread holds the writer lock of ``path``."""
    return str(Path(path).resolve()) in (getattr(_held, "locks", None) or {})


def read_manifest(path) -> dict:
    """The manifest on disk now (for a commit: call it under :func:`dataset_lock`)."""
    mpath = Path(path) / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise DatasetError(f"dataset {path} has no {MANIFEST}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{mpath} is not a bigembed manifest (no format {FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{mpath} has format version {manifest.get('format_version')}, "
                           f"this bigembed reads up to {FORMAT_VERSION}; upgrade bigembed")
    return manifest


def write_manifest(path, manifest: dict) -> None:
    """Replace the manifest atomically (call it under :func:`dataset_lock`)."""
    try:
        _atomic.write_json(Path(path) / MANIFEST, manifest)
    except OSError as e:
        if e.errno in READ_ONLY_ERRNOS:
            raise not_writable(Path(path), e) from None
        raise


def check_writable(path, *subdirs: str) -> None:
    """Raise :class:`DatasetError` unless new files can be created in ``path`` (and in each
    of ``subdirs``, created when missing). A probe file is made and removed: permission bits
    say nothing for root, nor for a read-only mount."""
    path = Path(path)
    for d in (path, *(path / s for s in subdirs)):
        try:
            d.mkdir(exist_ok=True)
            probe = _atomic.tmp_name(d / "write-probe")
            probe.touch()
            probe.unlink()
        except OSError as e:
            if e.errno in READ_ONLY_ERRNOS:
                raise not_writable(path, e) from None
            raise


def unique_name(directory: Path, stem: str, suffix: str = "") -> Path:
    """``directory/stem+suffix`` if nothing is there, else a name no file has had
    (``stem.<8 hex>+suffix``): a file the manifest lists is never replaced in place."""
    p = directory / f"{stem}{suffix}"
    while p.exists() or p.is_symlink():
        p = directory / f"{stem}.{uuid.uuid4().hex[:8]}{suffix}"
    return p


def referenced(manifest: dict) -> set[str]:
    """Paths (relative to the dataset) of every file and space directory ``manifest`` lists."""
    from .format import ARTIFACT_KINDS

    refs: set[str] = set()
    for name, sp in (manifest.get("spaces") or {}).items():
        d = sp.get("dir", f"spaces/{name}")
        refs.add(d)
        for s in sp.get("shards", []):
            refs.add(f"{d}/{s['file']}")
    if manifest.get("meta"):
        refs.add(manifest["meta"]["file"])
    for kind in ARTIFACT_KINDS:
        for rec in (manifest.get(kind) or {}).values():
            if rec.get("file"):
                refs.add(rec["file"])
    for ch in ((manifest.get("extract") or {}).get("chunks") or []):
        if ch.get("meta", {}).get("file"):
            refs.add(ch["meta"]["file"])
    return refs


def remove_unreferenced(path: Path, manifest: dict, rels) -> None:
    """Remove the files/dirs ``rels`` (relative paths) that ``manifest`` does not list."""
    import shutil

    refs = referenced(manifest)
    for rel in rels:
        if rel is None or rel in refs:
            continue
        p = Path(path) / rel
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
