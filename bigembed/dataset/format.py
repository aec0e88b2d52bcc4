"""The dataset format: names, versions, dtypes and checksums shared by readers and writers.

The directory layout itself is described in :mod:`bigembed.dataset`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from ..errors import InputError
from . import _mmap

log = logging.getLogger(__name__)

FORMAT = "bigembed.dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META = "meta.parquet"
VECTOR_FIELD = "vector"
DTYPES = {"float32": np.float32, "float16": np.float16}
_ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
#: Target bytes per shard; a space of 1M x 768 float32 becomes 12 shards. The environment
#: variable BIGEMBED_SHARD_BYTES overrides it (smaller shards: finer resume points).
SHARD_BYTES = int(os.environ.get("BIGEMBED_SHARD_BYTES", 256 * 1024 * 1024))
_PAD_KEY = b"bigembed.pad"
ARTIFACT_KINDS = ("layouts", "indexes", "graphs", "comparisons", "clusters")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from .._version import __version__

    return __version__


def file_checksum(path: Path, chunk: int = 1024 * 1024) -> str:
    """xxh3-64 of a file's bytes as 16 hex digits (about 10 GB/s, so verifying is cheap).

    Read into one reused buffer: a fresh 16 MB ``bytes`` per read (mmap'd by malloc, then
    page-faulted in) made this ~10x slower than the hash itself."""
    h = xxhash.xxh3_64()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


_VERIFIED: dict = {}


def checksum_matches(path: Path, expected: str) -> tuple[bool, str]:
    """``(ok, found)``: whether ``path`` hashes to ``expected``, computed once per process per
    file version (path, inode, size, mtime): a reader verifies what it uses without paying for
    it on every open. Raises OSError when the file cannot be read."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    got = _VERIFIED.get(key)
    if got is None:
        got = file_checksum(path)
        if len(_VERIFIED) > 4096:
            _VERIFIED.clear()
        _VERIFIED[key] = got
    return got == expected, got


def shard_rows_for(dim: int, dtype: str, shard_bytes: int | None = None) -> int:
    """Rows per shard: about ``shard_bytes`` and a multiple that keeps bodies page-sized."""
    shard_bytes = shard_bytes or SHARD_BYTES
    row_bytes = dim * np.dtype(DTYPES[dtype]).itemsize
    step = int(_mmap.PAGE // np.gcd(_mmap.PAGE, row_bytes))
    rows = max(1, shard_bytes // row_bytes)
    return int(max(step, rows // step * step))


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or any(
        c in name for c in "/\\\0"
    ) or name != name.strip():
        raise InputError(
            f"{kind} name must be a non-empty string without '/', '\\' or a leading '.', "
            f"got {name!r}"
        )
    return name
