"""The map's spatial order and pyramid on disk: built out of core in windows, memory-mapped.

A layout's Z-order (:class:`~bigembed.view.spatial.SpatialIndex`), its aggregate pyramid
(:mod:`bigembed.view.pyramid`) and its colourings are derived artifacts of the dataset, kept
under ``cache/map/<layout>.<key>/`` where ``key`` hashes the layout file's checksum, the
number of levels and this format. Built once, they are memory-mapped by every renderer that
opens the layout (``bigembed serve``, ``bigembed.show``, a restart): nothing of size N is
computed or read on start, so a billion-point map opens in about a second, and frames read
only the runs and cells in view.

The build never holds the layout in memory. It reads the coordinates in chunks of rows and
makes three kinds of passes over them:

1. bounds (the grid's origin and cell size, as the in-memory index takes them);
2. a histogram of the points per cell of level ``PLAN_LEVEL`` (65,536 cells), from which the
   Z-order is cut into windows of whole cells holding at most ``memory`` bytes of points;
3. per window, the points whose cell falls in it, in input order, stably sorted by code (a
   radix sort: the order of ``np.argsort(kind="stable")``) and appended to the sorted arrays,
   with the pyramid levels down to ``PLAN_LEVEL`` made from them by the same calls as the
   in-memory pyramid (:func:`~bigembed.view.pyramid.build_tree`); the coarser levels come from
   the concatenated ``PLAN_LEVEL`` cells at the end.

Then the inverse permutation (the sorted position of every id, for taps and linked
selections) is written in blocks of ids. Everything is written into a temporary directory
that is renamed into place after its ``map.json`` (written last, fsynced): a build killed at
any point leaves only a temporary that nothing trusts (``bigembed gc`` removes it). Peak
memory follows ``memory`` (a window), not N.

A colouring of a column (categorical codes or a mean) is built the same way on first use
(its values gathered into Z-order in chunks, its per-level cells counted at the finest level
and merged up) and kept in its own subdirectory keyed by the column's source checksum.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset import _atomic
from ..errors import DatasetError, InputError
from ..progress import progress_bar
from .pyramid import Level, Pyramid, build_tree, category_lut, centroids_of, kept_lut
from .spatial import LEVELS, MAX_LEVELS, SpatialIndex

log = logging.getLogger(__name__)

FORMAT = 1
MAP_DIR = "cache/map"
#: the level whose cells the windows are cut along (4**8 = 65,536 cells)
PLAN_LEVEL = 8
#: rows read per chunk of the layout
CHUNK_ROWS = 1 << 22
#: bytes a window's points take while being sorted: 16 read, 8 of sort positions, 12 sorted,
#: ~20 of pyramid cells
DEFAULT_MEMORY = 2 << 30
BYTES_PER_POINT = 56
#: layouts with at least this many points get the on-disk map when a renderer opens them
#: (smaller ones sort in memory in well under a second)
MIN_ROWS = 1_000_000
#: levels with at most this many cells keep their weight rows in memory once used (the
#: coarse levels of zoomed-out frames; a few tens of MB)
CACHED_LEVEL_CELLS = 1 << 20
#: layouts with more points than this get one more grid level than LEVELS
BIG_ROWS = 200_000_000


def default_levels(n: int) -> int:
    """Levels of the Z-order grid for ``n`` points: :data:`LEVELS`, one more past
    :data:`BIG_ROWS` (so zoomed-in views of a billion points still have pyramid cells)."""
    return LEVELS + 1 if n > BIG_ROWS else LEVELS


# ---------------------------------------------------------------------------------------------
# .npy files written by appending (no memory map while writing) and read by slices
# ---------------------------------------------------------------------------------------------

class _Appender:
    """A .npy file of a known length, written by appending chunks (``np.save``'s format)."""

    def __init__(self, path: Path, dtype, n: int):
        self.path, self.dtype, self.n, self.done = path, np.dtype(dtype), int(n), 0
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (self.n,)})

    def write(self, a) -> None:
        a = np.ascontiguousarray(a, self.dtype)
        self.f.write(memoryview(a).cast("B"))
        self.done += len(a)

    def close(self) -> None:
        if self.done != self.n:
            raise RuntimeError(f"{self.path}: wrote {self.done} of {self.n} items")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


#: bytes of the .npy header of a file of unknown length (room for any shape (n,))
_HEADER = 128


def _npy_header(dtype, n: int) -> bytes:
    """A version 1.0 .npy header for a 1-D array of ``n`` items, exactly :data:`_HEADER`
    bytes (spaces before the newline, which the format allows), so it can be written first
    and rewritten in place once ``n`` is known."""
    d = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (int(n),)})
    body = d.encode("latin1")
    pad = _HEADER - 10 - len(body) - 1
    return b"\x93NUMPY\x01\x00" + (_HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


class _Growing:
    """A .npy file of an unknown length: a header of fixed size first, chunks appended, the
    header rewritten in place with the final length at the end."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.f = open(path, "wb")
        self.f.write(_npy_header(self.dtype, 0))

    def write(self, a) -> None:
        a = np.ascontiguousarray(a, self.dtype)
        self.f.write(memoryview(a).cast("B"))
        self.n += len(a)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, self.n))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _read(path: Path, start: int, stop: int) -> np.ndarray:
    """Items [start, stop) of a 1-D .npy file, read (not mapped: the memory is the slice's)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)  # written by _Appender / _Growing: version 1.0
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        f.seek(f.tell() + start * dtype.itemsize)
        return np.fromfile(f, dtype=dtype, count=max(0, min(stop, shape[0]) - start))


def _load(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only, as a plain ndarray view (numba takes it as is)."""
    return np.asarray(np.load(path, mmap_mode="r"))


# ---------------------------------------------------------------------------------------------
# Reading a layout in chunks
# ---------------------------------------------------------------------------------------------

class _LayoutChunks:
    """The x, y of a layout artifact (Arrow IPC) in chunks of rows, copied out of a short-lived
    memory map so the process holds one chunk at a time."""

    def __init__(self, path: Path, rows: int, chunk_rows: int = CHUNK_ROWS):
        self.path, self.rows, self.chunk_rows = Path(path), int(rows), int(chunk_rows)

    def __iter__(self):
        import pyarrow as pa

        start = 0
        with pa.memory_map(str(self.path), "r") as mm:
            reader = pa.ipc.open_file(mm)
            nb = reader.num_record_batches
        for b in range(nb):
            with pa.memory_map(str(self.path), "r") as mm:
                batch = pa.ipc.open_file(mm).get_batch(b)
                n = batch.num_rows
                xs, ys = batch.column("x"), batch.column("y")
                for a in range(0, n, self.chunk_rows):
                    m = min(self.chunk_rows, n - a)
                    x = np.array(xs.slice(a, m).to_numpy(zero_copy_only=False), np.float32)
                    y = np.array(ys.slice(a, m).to_numpy(zero_copy_only=False), np.float32)
                    yield start, x, y
                    start += m
                del batch, xs, ys
        if start != self.rows:
            raise DatasetError(f"{self.path} has {start} rows, the dataset has {self.rows}")


# ---------------------------------------------------------------------------------------------
# Where a layout's map lives
# ---------------------------------------------------------------------------------------------

def _layout_record(ds, layout: str | None):
    from ..dataset.layouts import find_layouts

    layouts = ds.manifest.get("layouts", {})
    if layout is None:
        names = find_layouts(ds)
        if not names:
            raise InputError(f"dataset {ds.path} has no layout; make one with `bigembed "
                             f"reduce {ds.path}` or `bigembed ingest --layout`")
        layout = names[0]
    rec = layouts.get(layout)
    if rec is None:
        raise InputError(f"dataset {ds.path} has no layout {layout!r}; it has "
                         f"{sorted(layouts)}")
    return layout, rec


def map_key(rec: dict, levels: int) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    h.update(json.dumps({"layout": rec.get("xxh3_64") or rec.get("file"), "file": rec.get("file"),
                         "rows": rec.get("rows"), "levels": levels, "format": FORMAT},
                        sort_keys=True).encode())
    return h.hexdigest()[:12]


def map_path(ds, layout: str | None = None, *, levels: int | None = None) -> Path:
    """The directory of a layout's map (whether built or not)."""
    name, rec = _layout_record(ds, layout)
    levels = default_levels(int(rec.get("rows", ds.rows))) if levels is None else levels
    return ds.path / MAP_DIR / f"{name}.{map_key(rec, levels)}"


@dataclass(frozen=True)
class MapBuild:
    """What :func:`build_map` did: ``built`` False when the map was already there."""

    path: Path
    rows: int
    levels: int
    built: bool
    seconds: float = 0.0
    windows: int = 0
    memory: int = 0
    bytes_on_disk: int = 0
    timings: dict | None = None


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def build_map(ds, layout: str | None = None, *, levels: int | None = None,
              memory: int = DEFAULT_MEMORY, chunk_rows: int = CHUNK_ROWS, force: bool = False,
              progress: bool | None = None) -> MapBuild:
    """Build the on-disk Z-order and pyramid of a layout (see the module docstring).

    ``memory``: bytes a window of points may take (peak memory follows it, not the layout's
    size); ``chunk_rows``: rows of the layout read at a time; ``levels``: of the Z-order
    grid (default :func:`default_levels`); ``force``: build again even when the map is there.
    Returns a :class:`MapBuild`.
    """
    from ..dataset.reader import Dataset, verify_artifact

    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    name, rec = _layout_record(ds, layout)
    n = int(ds.rows)
    levels = default_levels(n) if levels is None else int(levels)
    if not PLAN_LEVEL <= levels <= MAX_LEVELS:
        raise InputError(f"levels must be in {PLAN_LEVEL}..{MAX_LEVELS}, got {levels}")
    for what, v, least in (("memory", memory, 4096), ("chunk_rows", chunk_rows, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise InputError(f"{what} must be an integer >= {least}, got {v!r}")
    final = ds.path / MAP_DIR / f"{name}.{map_key(rec, levels)}"
    if (final / "map.json").is_file() and not force:
        return MapBuild(final, n, levels, built=False)
    ds.prepare_write("cache")
    verify_artifact(ds, "layout", name, rec)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic.tmp_name(final)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        info = _build(tmp, ds.path / rec["file"], n, levels, int(memory), int(chunk_rows),
                      progress)
        info.update(format=FORMAT, layout=name, layout_xxh3=rec.get("xxh3_64"),
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    seconds=round(time.perf_counter() - t0, 3))
        _atomic.write_bytes(tmp / "map.json", json.dumps(info, indent=1).encode())
        _atomic.fsync_dir(tmp)
        if force and final.exists():
            old = _atomic.tmp_name(final)
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "map.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built it first
        _atomic.fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    secs = time.perf_counter() - t0
    log.info("map of layout %r: %d points, %d levels, %d windows in %.1fs (%s)", name, n,
             levels, info["windows"], secs, final)
    return MapBuild(final, n, levels, True, secs, info["windows"], int(memory),
                    _disk_bytes(final), info["timings"])


def _plan_windows(hist: np.ndarray, cap: int) -> list[tuple[int, int, int]]:
    """Cut the plan-level cells into windows [c0, c1) of at most ``cap`` points each (a single
    cell with more is a window of its own): list of (c0, c1, points)."""
    out, c0, acc = [], 0, 0
    for c in np.flatnonzero(hist):
        h = int(hist[c])
        if acc and acc + h > cap:
            out.append((c0, int(c), acc))
            c0, acc = int(c), 0
        acc += h
    if acc:
        out.append((c0, len(hist), acc))
    return out


def _build(d: Path, layout_file: Path, n: int, levels: int, memory: int, chunk_rows: int,
           progress) -> dict:
    from ..kernels import zorder as zk

    timings = {}
    t = time.perf_counter()
    chunks = _LayoutChunks(layout_file, n, chunk_rows)
    bar = progress_bar(total=3 * n, desc="map: bounds, cells", unit="pts", enabled=progress)
    acc = np.array([np.inf, -np.inf, np.inf, -np.inf])
    for _, x, y in chunks:
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise InputError(f"layout {layout_file.name}: coordinates must be finite")
        zk.bounds(x, y, acc)
        bar.update(len(x))
    g = 1 << levels
    if n:
        # as SpatialIndex: float32 extremes as float64, a hair of padding on the span
        lo = np.array([acc[0], acc[2]], np.float64)
        hi = np.array([acc[1], acc[3]], np.float64)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    span = hi - lo
    span[span <= 0] = 1.0
    span = span * (1 + 1e-6)
    scale = g / span
    timings["bounds_s"] = time.perf_counter() - t

    t = time.perf_counter()
    shift = 2 * (levels - PLAN_LEVEL)
    hist = np.zeros(1 << (2 * PLAN_LEVEL), np.int64)
    for _, x, y in chunks:
        zk.histogram(zk.cell_codes(x, y, lo, scale, levels), shift, hist)
        bar.update(len(x))
    cap = max(1, memory // BYTES_PER_POINT)
    windows = _plan_windows(hist, cap)
    timings["histogram_s"] = time.perf_counter() - t

    t = time.perf_counter()
    id_dtype = np.uint32 if n < (1 << 32) else np.int64
    out = {k: _Appender(d / f"{k}.npy", dt, n) for k, dt in
           (("xs", np.float32), ("ys", np.float32), ("ids", id_dtype), ("codes", np.uint32))}
    lv_files = {}

    def level_out(level):
        if level not in lv_files:
            lv_files[level] = {k: _Growing(d / f"L{level}.{k}.npy", dt) for k, dt in
                               (("starts", np.int64), ("first", np.int64), ("cx", np.float32),
                                ("cy", np.float32), ("cnt", np.float32))
                               if k != "first" or level < levels}  # the finest has no children
        return lv_files[level]

    # per level: cells written so far (the offset of a window's "first" entries one level up)
    cells_done = {lv: 0 for lv in range(levels + 1)}
    plan_parts = []  # the PLAN_LEVEL cells of each window (codes, starts, sums), global
    p0 = 0
    big = max((w[2] for w in windows), default=0)
    bufs = (np.empty(big, np.float32), np.empty(big, np.float32), np.empty(big, id_dtype),
            np.empty(big, np.uint32))
    scratch = np.empty(2 * big, np.int32 if big < (1 << 31) else np.int64)
    for c0, c1, count in windows:
        k = 0
        for start, x, y in chunks:
            k = zk.take_window(zk.cell_codes(x, y, lo, scale, levels), c0 << shift, c1 << shift,
                               start, x, y, bufs, k)
        if k != count:
            raise DatasetError(f"{layout_file}: changed while the map was built "
                               f"({k} points in a window planned for {count})")
        bx, by, bid, bcode = (b[:k] for b in bufs)
        perm = zk.split_argsort(bcode, shift, c0, c1 - c0, scratch)
        for a in range(0, k, chunk_rows):  # the ids straight to disk, a chunk at a time
            out["ids"].write(bid[perm[a:a + chunk_rows]])
        codes, xs, ys = bcode[perm], bx[perm], by[perm]
        out["xs"].write(xs)
        out["ys"].write(ys)
        out["codes"].write(codes)
        del perm
        tree = build_tree(codes, xs, ys, levels, stop=PLAN_LEVEL)
        for level in range(levels, PLAN_LEVEL - 1, -1):
            lv = tree[level]
            f = level_out(level)
            f["starts"].write(lv.starts[:-1] + p0)
            if level < levels:
                f["first"].write(lv.first[:-1] + cells_done[level + 1])
            cx, cy, cnt = centroids_of(lv)
            f["cx"].write(cx)
            f["cy"].write(cy)
            f["cnt"].write(cnt)
        for level in range(levels, PLAN_LEVEL - 1, -1):
            cells_done[level] += len(tree[level].cell)
        top = tree[PLAN_LEVEL]
        plan_parts.append((top.cell, top.starts[:-1] + p0, top.sums))
        p0 += k
        bar.update(k)
        del tree, codes, xs, ys
    bar.close()
    del bufs
    timings["windows_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # the coarser levels from the PLAN_LEVEL cells of all windows, by the same calls
    if plan_parts:
        top = Level(np.concatenate([p[0] for p in plan_parts]),
                    np.r_[np.concatenate([p[1] for p in plan_parts]), n].astype(np.int64),
                    np.concatenate([p[2] for p in plan_parts]), None)
    else:
        top = Level(np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros((0, 2)), None)
    tree = build_tree(None, None, None, PLAN_LEVEL, stop=0, top=top)
    for level in range(PLAN_LEVEL, -1, -1):
        f = level_out(level)
        lv = tree[level]
        if level < PLAN_LEVEL:
            f["starts"].write(lv.starts[:-1])
            cx, cy, cnt = centroids_of(lv)
            f["cx"].write(cx)
            f["cy"].write(cy)
            f["cnt"].write(cnt)
        if level < levels:
            first = lv.first if level < PLAN_LEVEL else None
            if first is not None:
                f["first"].write(first[:-1])
    for level in range(levels + 1):
        f = level_out(level)
        f["starts"].write(np.array([n], np.int64))
        if level < levels:
            f["first"].write(np.array([cells_done[level + 1] if level >= PLAN_LEVEL else
                                       len(tree[level + 1].cell)], np.int64))
        for w in f.values():
            w.close()
    for w in out.values():
        w.close()
    timings["coarse_levels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # the sorted position of every id, in blocks of ids that fit the memory given
    pos = _Appender(d / "pos.npy", id_dtype, n)
    block = max(1, memory // (2 * np.dtype(id_dtype).itemsize))
    for a in range(0, n, block):
        buf = np.empty(min(block, n - a), id_dtype)
        for s in range(0, n, chunk_rows):
            zk.invert_block(_read(d / "ids.npy", s, s + chunk_rows), s, a, buf)
        pos.write(buf)
    pos.close()
    timings["inverse_s"] = time.perf_counter() - t
    _atomic.fsync_dir(d)
    return {"rows": n, "levels": levels, "lo": lo.tolist(), "span": span.tolist(),
            "windows": len(windows), "memory": memory, "ids_dtype": np.dtype(id_dtype).str,
            "timings": {k: round(v, 3) for k, v in timings.items()}}


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------

class MapStore:
    """A built map, memory-mapped: ``index`` (a :class:`SpatialIndex` over the files),
    ``pyramid`` (a :class:`StoredPyramid`), ``pos`` (sorted position of every id)."""

    def __init__(self, path: Path, ds=None, layout: str | None = None):
        self.path = Path(path)
        self.ds, self.layout = ds, layout
        try:
            self.info = json.loads((self.path / "map.json").read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.path / 'map.json'} cannot be read ({e}); remove "
                               f"{self.path} and open the layout again") from None
        if self.info.get("format") != FORMAT:
            raise DatasetError(f"{self.path}: map format {self.info.get('format')}, this "
                               f"bigembed reads {FORMAT}; remove it to rebuild")
        self.n = int(self.info["rows"])
        self.levels = int(self.info["levels"])
        arr = {k: _load(self.path / f"{k}.npy") for k in ("xs", "ys", "ids", "codes")}
        for k, a in arr.items():
            if a.shape != (self.n,):
                raise DatasetError(f"{self.path / (k + '.npy')}: shape {a.shape}, the map "
                                   f"has {self.n} points; remove {self.path} to rebuild")
        self._pos = None
        self._levels: dict[int, dict] = {}
        self.index = SpatialIndex.stored(xs=arr["xs"], ys=arr["ys"], ids=arr["ids"],
                                         codes=arr["codes"], lo=self.info["lo"],
                                         span=self.info["span"], levels=self.levels,
                                         level_starts=lambda lv: self.level(lv)["starts"])
        self.pyramid = StoredPyramid(self)
        self._colourings: dict[str, object] = {}

    @property
    def pos(self) -> np.ndarray:
        if self._pos is None:
            self._pos = _load(self.path / "pos.npy")
        return self._pos

    def level(self, level: int) -> dict:
        got = self._levels.get(level)
        if got is None:
            if not 0 <= level <= self.levels:
                raise InputError(f"level must be in 0..{self.levels}, got {level}")
            keys = ("starts", "cx", "cy", "cnt") + (("first",) if level < self.levels else ())
            got = self._levels[level] = {k: _load(self.path / f"L{level}.{k}.npy") for k in keys}
        return got

    # -- colourings ----------------------------------------------------------------------
    def colouring(self, name: str, renderer):
        """The colouring ``name`` over the map's points, from its stored directory (built on
        first use where the dataset is writable); None when it cannot be stored (the
        renderer then makes it in memory)."""
        got = self._colourings.get(name)
        if got is None:
            got = self._colourings[name] = colour_store(self, name, renderer)
        return got

    def bytes_on_disk(self) -> int:
        return _disk_bytes(self.path)


def open_map(ds, layout: str | None = None, *, levels: int | None = None) -> MapStore | None:
    """The built map of a layout, memory-mapped; None when it has not been built."""
    p = map_path(ds, layout, levels=levels)
    if not (p / "map.json").is_file():
        return None
    name, _ = _layout_record(ds, layout)
    return MapStore(p, ds, name)


class StoredPyramid(Pyramid):
    """The pyramid of a :class:`MapStore`: every level's cells read from the map's files;
    a frame gathers the cells in view (never a whole level in memory)."""

    def __init__(self, store: MapStore):
        super().__init__(store.index)
        self.store = store

    def tree(self) -> dict:
        """The levels' starts and child groups, memory-mapped (what a colouring made in
        memory needs to be counted per cell; the cells' codes and sums stay on disk)."""
        if self._tree is None:
            self._tree = {lv: Level(None, self.store.level(lv)["starts"], None,
                                    self.store.level(lv).get("first"))
                          for lv in range(self.store.levels + 1)}
        return self._tree

    def centroids(self, level: int):
        lv = self.store.level(level)
        return lv["cx"], lv["cy"], lv["cnt"]

    def cells(self, level: int, colouring):
        if not isinstance(colouring, StoredColouring):  # one the renderer made in memory
            return super().cells(level, colouring)
        mx, my, cnt = self.centroids(level)
        t = colouring.tree(level)
        if colouring.kind == "categorical":
            return mx, my, cnt, t
        return mx, my, cnt, (t["sum"], t["num"])

    def weights(self, level: int, colouring, *, mix: bool = False):
        """Whole-level weight rows, as :meth:`Pyramid.weights` (cached): for the coarse
        levels frames of the whole map use, and for backends that hold a level (torch)."""
        key = (level, colouring.name, "w", mix)
        got = self._cache.get(key)
        if got is not None and got[0] is colouring:
            return got[1]
        mx, my, cnt, extra = self.cells(level, colouring)
        if colouring.kind == "density":
            w = np.asarray(cnt, np.float64)[:, None]
        elif colouring.kind == "mean":
            w = np.stack([np.asarray(extra[0]), np.asarray(extra[1])], 1)
        else:
            pc, pcat, pn, offs = extra
            lut = category_lut(colouring, mix)
            w = np.zeros((len(cnt), lut.shape[1]))
            cat = np.asarray(pcat, np.int64)
            for j in range(lut.shape[1]):
                w[:, j] = np.bincount(pc, weights=np.asarray(pn, np.float64) * lut[cat, j],
                                      minlength=len(cnt))
        got = (np.asarray(mx), np.asarray(my), np.ascontiguousarray(w))
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = (colouring, got)
        return got

    def bin_view(self, view, *, mix: bool = False):
        """The run kernel's accumulators of a pyramid ``view``: the cells in view binned in
        place from the level's memory-mapped arrays (the same sums as the in-memory
        pyramid's weight rows; nothing gathered). A filtered view (``view.keep``) bins the
        filter colouring's pairs with the allowed categories' lut rows only."""
        from ..kernels.raster import bin_cells

        c = view.colouring
        if view.keep is not None:  # a filter: the filter colouring's pairs, allowed ones
            fc, lut = kept_lut(c, view.keep, mix)
            mx, my, cnt, (pc, pcat, pn, offs) = self.cells(view.level, fc)
            if len(cnt) <= CACHED_LEVEL_CELLS:
                return super().bin_view(view, mix=mix)
            return bin_cells(mx, my, view.runs, pairs=(offs, pcat, pn), lut=lut, **view.grid)
        mx, my, cnt, extra = self.cells(view.level, c)
        if len(cnt) <= CACHED_LEVEL_CELLS:  # a coarse level: its weight rows, kept
            return super().bin_view(view, mix=mix)
        if c.kind == "density":
            return bin_cells(mx, my, view.runs, cnt=cnt, **view.grid)
        if c.kind == "mean":
            return bin_cells(mx, my, view.runs, sums=extra, **view.grid)
        pc, pcat, pn, offs = extra
        return bin_cells(mx, my, view.runs, pairs=(offs, pcat, pn),
                         lut=category_lut(c, mix), **view.grid)


# ---------------------------------------------------------------------------------------------
# Colourings on disk
# ---------------------------------------------------------------------------------------------

class StoredColouring:
    """A colouring whose values (in Z-order) and per-level cells live in a map's directory.

    Has the fields of :class:`~bigembed.view.frames.Colouring` (``name``, ``kind``,
    ``values``, ``categories``, ``colors``, ``span``, ``cmap``) and ``tree(level)``."""

    def __init__(self, path: Path, info: dict):
        self.path = Path(path)
        self.name = info["name"]
        self.kind = info["kind"]
        self.categories = tuple(info.get("categories") or ())
        self.colors = tuple(info.get("colors") or ())
        self.span = tuple(info["span"]) if info.get("span") is not None else None
        self.cmap = info.get("cmap")
        self.values = _load(self.path / "values.npy")
        self._levels: dict[int, object] = {}

    def tree(self, level: int):
        got = self._levels.get(level)
        if got is None:
            p = self.path
            if self.kind == "categorical":
                got = tuple(_load(p / f"L{level}.{k}.npy") for k in ("pc", "pcat", "pn", "offs"))
            else:
                got = {k: _load(p / f"L{level}.{k}.npy") for k in ("sum", "num")}
            self._levels[level] = got
        return got


def _source(store: MapStore, name: str, renderer):
    """(checksum of where column ``name`` comes from, a loader of its values in id order), or
    None when the column is one only the renderer holds (added, set in memory)."""
    ds = store.ds
    if name in renderer._added or name in renderer._set_columns:
        return None
    if name in renderer.layout_column_names():
        rec = ds.manifest["layouts"][store.layout]
        return f"layout:{rec.get('xxh3_64')}", lambda: renderer.column(name)
    meta = ds.manifest.get("meta") or {}
    if name in renderer.meta_column_names():
        return f"meta:{meta.get('xxh3_64')}", lambda: ds.meta_column(name)
    return None


def colour_store(store: MapStore, name: str, renderer):
    """The stored colouring ``name`` of ``store``: opened, or built now (see the module
    docstring); None when the column cannot be stored (only in memory, or the dataset is
    read-only)."""
    import xxhash

    src = _source(store, name, renderer)
    if src is None:
        return None
    key = xxhash.xxh3_64(json.dumps([name, src[0], FORMAT]).encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    final = store.path / f"col.{safe}.{key}"
    if not (final / "colouring.json").is_file():
        try:
            _build_colouring(store, name, src[1], final)
        except OSError as e:
            log.warning("colouring %r of %s not stored (%s); made in memory", name,
                        store.path, e)
            return None
    info = json.loads((final / "colouring.json").read_text())
    return StoredColouring(final, info)


def _build_colouring(store: MapStore, name: str, load, final: Path) -> None:
    from ..kernels import zorder as zk
    from .colouring import colouring_of

    t0 = time.perf_counter()
    c = colouring_of(name, load(), compact=True)
    vals = c.values  # id order
    tmp = _atomic.tmp_name(final)
    tmp.mkdir()
    try:
        n, levels = store.n, store.levels
        out = _Appender(tmp / "values.npy", vals.dtype, n)
        ids = store.index.ids
        for a in range(0, n, CHUNK_ROWS):
            idx = np.asarray(ids[a:a + CHUNK_ROWS])
            got = np.empty(len(idx), vals.dtype)
            zk.gather(vals, idx, got)
            out.write(got)
        out.close()
        del vals
        sorted_vals = _load(tmp / "values.npy")
        ncat = len(c.categories)
        # cells and counts as unsigned 32-bit where they fit (exact: converted on use)
        cell_dt = np.uint32 if n < (1 << 32) else np.int64
        count_dt = np.uint32 if n < (1 << 32) else np.float64
        # finest level from the points, in chunks of cells; coarser ones merged up
        fine = store.level(levels)["starts"]
        m = len(fine) - 1
        step = max(1, CHUNK_ROWS)
        if c.kind == "categorical":
            out = _Pairs(tmp, levels, cell_dt, np.uint8 if ncat <= 256 else np.int64, count_dt)
            for a in range(0, m, step):
                b = min(m, a + step)
                st = np.asarray(fine[a:b + 1])
                out.add(a, b, *zk.category_pairs(st - st[0], sorted_vals[st[0]:st[-1]], ncat))
            out.close()
            for level in range(levels - 1, -1, -1):
                _merge_level(tmp, store, level, ncat)
        else:
            for_sum = _Growing(tmp / f"L{levels}.sum.npy", np.float64)
            for_num = _Growing(tmp / f"L{levels}.num.npy", np.float64)
            for a in range(0, m, step):
                b = min(m, a + step)
                st = np.asarray(fine[a:b + 1])
                s = zk.finite_sums(st - st[0], sorted_vals[st[0]:st[-1]])
                for_sum.write(s[:, 0])
                for_num.write(s[:, 1])
            for_sum.close()
            for_num.close()
            for level in range(levels - 1, -1, -1):
                _sum_level(tmp, store, level)
        info = {"name": c.name, "kind": c.kind, "categories": list(c.categories),
                "colors": list(c.colors), "span": None if c.span is None else list(c.span),
                "cmap": c.cmap, "seconds": round(time.perf_counter() - t0, 3)}
        _atomic.write_bytes(tmp / "colouring.json", json.dumps(info).encode())
        _atomic.fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "colouring.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("colouring %r of %d points stored in %.1fs", name, store.n, time.perf_counter() - t0)


class _Pairs:
    """The (cell, category, count) pairs of one level of a categorical colouring, written as
    they come in chunks of cells, with each cell's first pair (``offs``) and the end."""

    def __init__(self, d: Path, level: int, cell_dt, cat_dt, count_dt):
        self.w = {k: _Growing(d / f"L{level}.{k}.npy", dt) for k, dt in
                  (("pc", cell_dt), ("pcat", cat_dt), ("pn", count_dt), ("offs", np.int64))}
        self.done = 0

    def add(self, a: int, b: int, pc, pcat, pn) -> None:
        """The pairs of cells a .. b - 1 (``pc`` counted from a)."""
        self.w["offs"].write(np.searchsorted(pc, np.arange(b - a)) + self.done)
        self.w["pc"].write(pc + a)
        self.w["pcat"].write(pcat)
        self.w["pn"].write(pn)
        self.done += len(pc)

    def close(self) -> None:
        self.w["offs"].write(np.array([self.done], np.int64))
        for f in self.w.values():
            f.close()


def _groups(store: MapStore, level: int, step: int):
    """Chunks of a level's cells: (first cell a, last b, their children's first indices)."""
    first = store.level(level)["first"]
    m = len(first) - 1
    for a in range(0, m, step):
        b = min(m, a + step)
        yield a, b, np.asarray(first[a:b + 1])


def _merge_level(tmp: Path, store: MapStore, level: int, ncat: int) -> None:
    from ..kernels import zorder as zk

    child = {k: _load(tmp / f"L{level + 1}.{k}.npy") for k in ("pc", "pcat", "pn", "offs")}
    out = _Pairs(tmp, level, child["pc"].dtype, child["pcat"].dtype, child["pn"].dtype)
    for a, b, fst in _groups(store, level, CHUNK_ROWS):
        o = np.asarray(child["offs"][fst[0]:fst[-1] + 1])
        out.add(a, b, *zk.merge_pairs(fst - fst[0], o - o[0],
                                      np.asarray(child["pcat"][o[0]:o[-1]]),
                                      np.asarray(child["pn"][o[0]:o[-1]]), ncat))
    out.close()


def _sum_level(tmp: Path, store: MapStore, level: int) -> None:
    from ..kernels import zorder as zk

    child = {k: _load(tmp / f"L{level + 1}.{k}.npy") for k in ("sum", "num")}
    w = {k: _Growing(tmp / f"L{level}.{k}.npy", np.float64) for k in ("sum", "num")}
    for a, b, fst in _groups(store, level, CHUNK_ROWS):
        s = zk.sum_groups(fst - fst[0], np.column_stack([child["sum"][fst[0]:fst[-1]],
                                                         child["num"][fst[0]:fst[-1]]]))
        w["sum"].write(s[:, 0])
        w["num"].write(s[:, 1])
    for f in w.values():
        f.close()


