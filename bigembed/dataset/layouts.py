"""Layout artifacts: id-ordered 2-D coordinates (x, y float32) plus per-point columns.

Stored as ``layouts/<space>.<method>.<hash>.arrow`` (Arrow IPC, memory-mappable) and listed
in the manifest under ``layouts`` with the parameters that made them, so repeating a command
reuses the file and changing a parameter makes a new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import xxhash

from ..errors import InputError
from .tables import read_table_artifact, write_table_artifact

LAYOUT_FORMAT = 1


@dataclass
class Layout:
    """A 2-D layout of every instance of a dataset.

    ``xy`` is an array of shape (N, 2) float32; ``columns`` holds other per-point arrays
    (e.g. ``knn_preservation``); ``record`` is the manifest entry (space, method, params...).
    """

    name: str
    xy: np.ndarray
    record: dict
    columns: dict = field(default_factory=dict)

    @property
    def x(self) -> np.ndarray:
        return self.xy[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.xy[:, 1]

    @property
    def space(self) -> str:
        return self.record.get("space")

    @property
    def method(self) -> str:
        return self.record.get("method")


def layout_key(space, method: str, params: dict) -> str:
    """Content key of a layout: the space's content hash, the method and its parameters."""
    h = xxhash.xxh3_64()
    h.update(json.dumps({"space": space.fingerprint, "method": method, "params": params,
                         "format": LAYOUT_FORMAT}, sort_keys=True, default=str).encode())
    return f"{space.name}.{method}.{h.hexdigest()[:12]}"


def save_layout(ds, name: str, xy: np.ndarray, record: dict, columns: dict | None = None) -> str:
    """Write a layout artifact atomically and register it in the manifest; returns its name."""
    xy = np.asarray(xy, dtype=np.float32)
    if xy.ndim != 2 or xy.shape != (ds.rows, 2):
        raise InputError(f"layout must have shape ({ds.rows}, 2), got {xy.shape}")
    if not np.isfinite(xy).all():
        raise InputError(f"layout {name!r} has {int((~np.isfinite(xy)).any(1).sum())} "
                         f"non-finite coordinates; refusing to store it")
    cols = {"x": xy[:, 0], "y": xy[:, 1]}
    for k, v in (columns or {}).items():
        v = np.asarray(v)
        if v.shape[0] != ds.rows:
            raise InputError(f"layout column {k!r} has {v.shape[0]} rows, expected {ds.rows}")
        cols[k] = v
    write_table_artifact(ds, "layouts", name, pa.table(cols),
                         dict(record, rows=ds.rows, columns=list(cols)))
    return name


def write_layout_batches(ds, name: str, batches, record: dict) -> str:
    """Write a layout from batches of (x, y) float32 arrays (their lengths summing to the
    dataset's rows) as one Arrow IPC artifact, streamed: a layout larger than memory. Refuses
    non-finite coordinates and a wrong row count, leaving nothing behind."""
    schema = pa.schema([("x", pa.float32()), ("y", pa.float32())])

    def write(tmp):
        rows = 0
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for x, y in batches:
                x = np.asarray(x, np.float32)
                y = np.asarray(y, np.float32)
                if not (np.isfinite(x).all() and np.isfinite(y).all()):
                    raise InputError(f"layout {name!r} has non-finite coordinates in rows "
                                     f"{rows}..{rows + len(x)}; refusing to store it")
                w.write_batch(pa.record_batch([x, y], schema=schema))
                rows += len(x)
        if rows != ds.rows:
            raise InputError(f"layout must have {ds.rows} rows, got {rows}")

    ds.write_artifact("layouts", name, write, dict(record, rows=ds.rows, columns=["x", "y"]),
                      ".arrow")
    return name


def add_layout_columns(ds, name: str, columns: dict) -> None:
    """Add or replace per-point columns of an existing layout (e.g. quality), atomically."""
    lay = load_layout(ds, name=name)
    cols = dict(lay.columns)
    cols.update(columns)
    save_layout(ds, name, lay.xy, {k: v for k, v in lay.record.items()
                                   if k not in ("file", "bytes", "xxh3_64", "created",
                                                "columns", "rows")}, cols)


def find_layouts(ds, *, space: str | None = None, method: str | None = None) -> list[str]:
    """Names of the layouts matching ``space`` and ``method``, newest first."""
    out = []
    for name, rec in ds.manifest.get("layouts", {}).items():
        if space is not None and rec.get("space") != space:
            continue
        if method is not None and rec.get("method") != method:
            continue
        out.append((rec.get("created", ""), name))
    return [n for _, n in sorted(out, reverse=True)]


def load_layout(ds, *, name: str | None = None, space: str | None = None,
                method: str | None = None) -> Layout:
    """Load a layout by name, or the newest one for ``space`` / ``method``."""
    if name is None:
        names = find_layouts(ds, space=space, method=method)
        if not names:
            what = " ".join(x for x in (f"space {space!r}" if space else "",
                                        f"method {method!r}" if method else "") if x)
            raise InputError(f"dataset {ds.path} has no layout{' for ' + what if what else ''}; "
                             f"make one with `bigembed reduce {ds.path}`")
        name = names[0]
    rec = ds.manifest.get("layouts", {}).get(name)
    if rec is None:
        raise InputError(f"dataset {ds.path} has no layout {name!r}; it has "
                         f"{sorted(ds.manifest.get('layouts', {}))}")
    table = read_table_artifact(ds, "layout", name, rec)
    xy = np.empty((ds.rows, 2), np.float32)
    xy[:, 0] = table.column("x").to_numpy()
    xy[:, 1] = table.column("y").to_numpy()
    cols = {c: table.column(c).to_numpy() for c in table.column_names if c not in ("x", "y")}
    return Layout(name, xy, rec, cols)
