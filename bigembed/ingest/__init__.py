"""Files -> spaces: :func:`ingest` streams ``.npy``/``.npz``/Parquet/Arrow/CSV vectors
(:mod:`.readers`) into a dataset space; :func:`synth` writes a synthetic clustered dataset."""

from __future__ import annotations

from .run import IngestResult, ingest
from .synth import synth

__all__ = ["ingest", "IngestResult", "synth"]
