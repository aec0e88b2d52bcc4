"""bigembed: a GPU-accelerated explorer for million-point embedding sets.

``import bigembed`` needs no GPU and no GPU package; heavy libraries load on first use.
"""

from __future__ import annotations

from . import jitcache as _jitcache

# Before any kernel module (bigembed.kernels.* sits inside this package) can compile: numba's
# cache goes to $BIGEMBED_CACHE/numba, not into the source tree (see bigembed.jitcache).
_jitcache.configure()

from ._version import __version__  # noqa: E402
from .dataset.reader import Dataset, open_dataset  # noqa: E402
from .dataset.writer import DatasetWriter  # noqa: E402
from .errors import BackendUnavailable, BigembedError, DatasetError, InputError  # noqa: E402
from .analysis import cluster, contrast, group_stats  # noqa: E402



def show(ds_or_path, layout=None, color=None, compare=None, **kw):
    """The explorer in a notebook cell, live in both directions; see
    :func:`bigembed.notebook.show` (needs ``pip install 'bigembed[notebook]'``)."""
    from .notebook import show as _show

    return _show(ds_or_path, layout=layout, color=color, compare=compare, **kw)


def use_cluster(client):
    """Run the heavy stages on the Dask cluster of ``client`` (a ``distributed.Client``), or
    in this process again with ``None``; see :mod:`bigembed.distributed`. The dataset
    directory must be visible to every worker at the same path."""
    from .distributed.api import use_cluster as _use

    return _use(client)


__all__ = ["show", "use_cluster", "Dataset", "DatasetWriter", "open_dataset", "BigembedError", "DatasetError",
           "InputError", "BackendUnavailable", "__version__", "group_stats", "contrast", "cluster"]
