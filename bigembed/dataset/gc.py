"""Orphans of a dataset: files and directories no manifest lists, left by killed writers.

:func:`find_orphans` lists them (``bigembed info`` reports them); :func:`collect_garbage`
removes them under the dataset's writer lock (``bigembed gc``, and every writer first).

What counts, and why it is safe to remove:

* a temporary (``.<name>.tmp-<pid>-<random>``, anywhere in the dataset, or a sibling
  ``.<dataset>.tmp-...`` left by a killed create) whose writing process ``<pid>`` is gone: a
  live writer's temporaries are never touched, whatever their age (they are reported as being
  written, not as orphans);
* a space directory, a shard inside a complete space's directory, a layout / index / graph
  file, or a ``meta*.parquet`` that the manifest does not list. Writers rename files to these
  names only under the lock, immediately before the manifest that lists them, so seen under the
  lock, an unlisted one belongs to a writer that died in between (or to a replaced copy whose
  removal was interrupted). Partial spaces (an extraction in progress or to resume) are not
  looked into: their shards are written before being listed, and a resume rewrites them.

* a temporary directory of a map build (``cache/map/``, :mod:`bigembed.view.store`), or a
  temporary of one of its colourings or kept frames (``frames/``), whose process is gone.
  Nothing else under ``cache/`` is touched, nor files bigembed does not name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import _atomic
from .format import ARTIFACT_KINDS, MANIFEST
from .transaction import LOCK, dataset_lock, read_manifest, referenced

log = logging.getLogger(__name__)

_META_FILE = re.compile(r"meta(\.[^/]+)?\.parquet")


@dataclass(frozen=True)
class Orphan:
    """One orphan: ``path`` (absolute), its size in ``bytes``, ``reason``; ``pid`` of the
    process writing it when it is a live temporary (not an orphan yet, never removed)."""

    path: str
    bytes: int
    reason: str
    pid: int | None = None

    @property
    def live(self) -> bool:
        return self.pid is not None


@dataclass
class GcResult:
    """What :func:`collect_garbage` removed (or would remove, ``dry_run``), and what it kept
    because a live process is still writing it."""

    path: Path
    removed: list = field(default_factory=list)
    live: list = field(default_factory=list)
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.removed)

    def to_json(self) -> dict:
        return {"path": str(self.path), "dry_run": self.dry_run, "bytes": self.bytes,
                "removed": [asdict(o) for o in self.removed],
                "live": [asdict(o) for o in self.live]}


def _size(p: Path) -> int:
    try:
        if p.is_dir() and not p.is_symlink():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.lstat().st_size
    except OSError:
        return 0


def _temp_pid(name: str) -> int | None:
    """The writer pid in a temporary's name, or None when ``name`` is not a temporary."""
    if not name.startswith(".") or _atomic.TMP_MARK not in name:
        return None
    rest = name.rpartition(_atomic.TMP_MARK)[2]
    try:
        return int(rest.split("-", 1)[0])
    except ValueError:
        return None


def _temp(p: Path, what: str) -> Orphan | None:
    pid = _temp_pid(p.name)
    if pid is None:
        return None
    live = pid == os.getpid() or _atomic._pid_alive(pid)
    if live:
        return Orphan(str(p), _size(p), f"{what} being written by process {pid}", pid)
    return Orphan(str(p), _size(p), f"{what} left by a killed writer (process {pid})")


def find_orphans(path, manifest: dict | None = None) -> list[Orphan]:
    """Every orphan of dataset ``path`` (see the module docstring), live temporaries included
    (``Orphan.live``). ``manifest``: the one to judge against (default: read it now)."""
    path = Path(path)
    if manifest is None:
        manifest = read_manifest(path)
    refs = referenced(manifest)
    extracting = (manifest.get("extract") or {}).get("status") == "partial"
    partial_dirs = {sp.get("dir", f"spaces/{n}") for n, sp in (manifest.get("spaces") or {}).items()
                    if sp.get("status", "complete") != "complete"}
    out: list[Orphan] = []

    def add(o):
        if o is not None:
            out.append(o)

    # Siblings: the work directory of a killed `create` (or the old copy of a replaced one).
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if p.name.startswith(f".{path.name}{_atomic.TMP_MARK}"):
                add(_temp(p, "temporary dataset copy"))
    for p in sorted(path.iterdir()):
        if p.name in (MANIFEST, LOCK):
            continue
        if _temp_pid(p.name) is not None:
            add(_temp(p, "temporary file"))
        elif p.is_file() and _META_FILE.fullmatch(p.name) and p.name not in refs \
                and not extracting:
            out.append(Orphan(str(p), _size(p), "metadata file the manifest does not list"))
    spaces = path / "spaces"
    if spaces.is_dir():
        for d in sorted(spaces.iterdir()):
            rel = f"spaces/{d.name}"
            if _temp_pid(d.name) is not None:
                add(_temp(d, "temporary space"))
            elif rel not in refs:
                out.append(Orphan(str(d), _size(d), "space directory the manifest does not "
                                                    "list"))
            elif d.is_dir():
                for f in sorted(d.iterdir()):
                    if _temp_pid(f.name) is not None:
                        add(_temp(f, "temporary shard"))
                    elif rel not in partial_dirs and f"{rel}/{f.name}" not in refs:
                        out.append(Orphan(str(f), _size(f), "shard the manifest does not list"))
    for kind in ARTIFACT_KINDS:
        d = path / kind
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if _temp_pid(f.name) is not None:
                add(_temp(f, f"temporary {kind[:-1]}"))
            elif f"{kind}/{f.name}" not in refs:
                out.append(Orphan(str(f), _size(f), f"{kind[:-1]} file the manifest does not "
                                                    f"list"))
    # The map's on-disk artifacts (bigembed.view.store): a killed build's temporary directory
    # (or a colouring's, inside a map), never a complete map.
    maps = path / "cache" / "map"
    if maps.is_dir():
        for d in sorted(maps.iterdir()):
            if _temp_pid(d.name) is not None:
                add(_temp(d, "temporary map"))
            elif d.is_dir():
                with contextlib.suppress(OSError):
                    for f in sorted(d.iterdir()):
                        if _temp_pid(f.name) is not None:
                            add(_temp(f, "temporary map colouring"))
                    kept = d / "frames"  # whole-layout frames the renderer keeps
                    for f in sorted(kept.iterdir()) if kept.is_dir() else ():
                        if _temp_pid(f.name) is not None:
                            add(_temp(f, "temporary kept frame"))
    return out


def _remove(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def collect_garbage(path, *, dry_run: bool = False) -> GcResult:
    """Remove the orphans of dataset ``path`` under its writer lock; return what went.

    Temporaries of live processes are kept (``GcResult.live``). ``dry_run``: only list.
    Raises :class:`~bigembed.errors.DatasetError` when the dataset cannot be read or written.
    """
    from .transaction import READ_ONLY_ERRNOS, not_writable

    path = Path(path)
    res = GcResult(path, dry_run=dry_run)
    with dataset_lock(path):
        for o in find_orphans(path):
            if o.live:
                res.live.append(o)
                continue
            if not dry_run:
                try:
                    _remove(Path(o.path))
                except OSError as e:
                    if e.errno in READ_ONLY_ERRNOS:
                        raise not_writable(path, e) from None
                    raise
            res.removed.append(o)
    if res.removed and not dry_run:
        log.info("gc %s: removed %d orphans (%d bytes)", path, len(res.removed), res.bytes)
    return res
