"""The dataset directory: the contract between stages.

::

    <dataset>/
      manifest.json        written last, atomically: format version, rows, spaces, artifacts
      meta.parquet         one row per instance: id, key, label, prediction, ... user columns
      spaces/<space>/part-00000-of-00012.arrow   Arrow IPC, one FixedSizeList<float, d> column
      layouts/  indexes/  graphs/   derived artifacts, content-keyed, listed in the manifest
      cache/               anything else derived; always safe to delete

The manifest is the truth. A file that is not listed in it (a temp file of a killed writer, a
space being written) is invisible to readers. Every file is written to a temporary name,
fsynced and renamed, and the manifest is replaced last, so a reader sees the dataset either
as it was before a command or as the command left it, never half-way.

Each shard holds one record batch whose vector body starts on a page boundary, so the shards
of a space map into one contiguous N x d array without copying (see :mod:`bigembed.dataset._mmap`).

Modules: :mod:`.format` (names, dtypes, checksums), :mod:`.shards` (one shard file),
:mod:`.reader` (:class:`Dataset`, :class:`Space`), :mod:`.writer` (:class:`DatasetWriter`),
:mod:`.layouts` (layout artifacts), :mod:`.arrays` (``Dataset.from_arrays``, ``to_pandas``).
"""

from __future__ import annotations

from .format import DTYPES, FORMAT, FORMAT_VERSION, MANIFEST, META, file_checksum
from .layouts import Layout, find_layouts, load_layout, save_layout
from .reader import Dataset, Space, open_cached, open_dataset
from .writer import DatasetWriter

from . import arrays as _arrays  # noqa: E402

# Notebook conveniences on the class users hold; they live in .arrays because they use the
# writer and layouts, which import .reader (so .reader cannot import them).
Dataset.from_arrays = classmethod(_arrays.from_arrays_classmethod)
Dataset.to_pandas = _arrays.to_pandas

__all__ = ["Dataset", "DatasetWriter", "Space", "Layout", "open_dataset", "open_cached",
           "find_layouts", "load_layout", "save_layout", "file_checksum", "DTYPES", "FORMAT",
           "FORMAT_VERSION", "MANIFEST", "META"]
