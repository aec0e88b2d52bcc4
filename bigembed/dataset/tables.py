"""Per-row Arrow IPC artifacts (layouts, kNN graphs, comparisons): one reader and one writer.

A table artifact holds one row per instance of the dataset. It is written through
:meth:`~bigembed.dataset.reader.Dataset.write_artifact` (temporary name, fsync, transaction)
and read memory-mapped after its checksum is verified.
"""

from __future__ import annotations

import pyarrow as pa

from ..errors import DatasetError
from .reader import verify_artifact


def write_table_artifact(ds, kind: str, name: str, table: pa.Table, record: dict):
    """Write ``table`` (one row per instance) as the ``kind`` artifact ``name`` with
    ``record``; returns its final path."""

    def write(tmp):
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)

    return ds.write_artifact(kind, name, write, record, ".arrow")


def read_table_artifact(ds, what: str, name: str, rec: dict) -> pa.Table:
    """The table of artifact ``name`` (manifest record ``rec``), checksum verified and its row
    count checked against the dataset; ``what`` names it in errors ("layout", "graph")."""
    path = ds.path / rec["file"]
    verify_artifact(ds, what, name, rec)
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{what} {name!r}: {path} cannot be read: {e}") from None
    if table.num_rows != ds.rows:
        raise DatasetError(f"{what} {name!r}: {path} has {table.num_rows} rows, the dataset "
                           f"has {ds.rows}")
    return table
