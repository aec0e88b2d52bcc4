"""Map the vector bodies of several shard files into one contiguous, read-only N x d array.

Each shard is an Arrow IPC file holding one record batch whose vector body starts on a page
boundary and (except in the last shard) spans a whole number of pages. Reserving one region
of address space and mapping each file's body into it with ``MAP_FIXED`` gives a single numpy
array over all shards without copying a byte: reopening a 3 GB space costs a few system calls.

Linux/macOS only; :func:`map_contiguous` returns ``None`` where it cannot do this (another OS,
unaligned shards), and the caller falls back to a concatenating copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import weakref

import numpy as np

PAGE = mmap.PAGESIZE

_libc = None
if sys.platform.startswith("linux") or sys.platform == "darwin":
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]
        _libc.munmap.restype = ctypes.c_int
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _libc = None

_PROT_NONE, _PROT_READ = 0, 1
_MAP_SHARED, _MAP_PRIVATE = 0x01, 0x02
_MAP_FIXED = 0x10
_MAP_ANON = 0x20 if sys.platform.startswith("linux") else 0x1000
_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Region:
    """Owns one reserved address range; unmaps it when the last array over it is gone."""

    def __init__(self, addr: int, length: int):
        self.addr, self.length = addr, length

    def close(self) -> None:
        if self.addr:
            _libc.munmap(self.addr, self.length)
            self.addr = 0


def map_contiguous(pieces, nbytes: int):
    """Map ``pieces`` = [(path, file_offset, length), ...] back to back, read-only.

    Every ``file_offset`` must be page-aligned and every ``length`` but the last a multiple of
    the page size. Returns a uint8 numpy array of ``nbytes`` bytes, or ``None`` if mapping is
    not possible here.
    """
    if _libc is None or not pieces:
        return None
    for i, (_, off, length) in enumerate(pieces):
        if off % PAGE or (i < len(pieces) - 1 and length % PAGE):
            return None
    total = sum(length for _, _, length in pieces)
    if total != nbytes:
        return None
    span = max(PAGE, -(-total // PAGE) * PAGE)
    base = _libc.mmap(None, span, _PROT_NONE, _MAP_PRIVATE | _MAP_ANON | _MAP_NORESERVE, -1, 0)
    if base in (None, _MAP_FAILED):
        return None
    region = _Region(base, span)
    pos = 0
    try:
        for path, off, length in pieces:
            if length == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                maplen = -(-length // PAGE) * PAGE
                got = _libc.mmap(base + pos, maplen, _PROT_READ, _MAP_SHARED | _MAP_FIXED, fd, off)
            finally:
                os.close(fd)  # the mapping keeps the file open
            if got in (None, _MAP_FAILED) or got != base + pos:
                region.close()
                return None
            pos += length
    except OSError:
        region.close()
        return None
    buf = (ctypes.c_uint8 * total).from_address(base) if total else (ctypes.c_uint8 * 0)()
    arr = np.frombuffer(buf, dtype=np.uint8, count=total)
    arr.flags.writeable = False
    # The ctypes buffer is arr.base; unmap when it is collected.
    weakref.finalize(buf, region.close)
    return arr
