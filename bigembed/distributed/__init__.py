"""Beyond one machine: the heavy stages on a Dask cluster.

``bigembed.use_cluster(client)`` (or ``--cluster ADDRESS|local:N`` on the command line) hands
extraction, ingest, the kNN graph (and so compare) and the placement of rows past
``fit_rows`` to the workers of a ``dask.distributed`` cluster; without it nothing here is
imported and Dask is never loaded.

- :mod:`~bigembed.distributed.session`: the cluster in use and the stage hooks (a leaf);
- :mod:`~bigembed.distributed.cluster`: connecting, ``use_cluster``, the shared-filesystem
  check, :func:`~bigembed.distributed.cluster.map_blocks` / ``map_reduce``;
- :mod:`~bigembed.distributed.extract`, :mod:`~bigembed.distributed.ingest`,
  :mod:`~bigembed.distributed.graph`, :mod:`~bigembed.distributed.place`: what each stage
  runs on the workers, registered by :mod:`~bigembed.distributed.stages`.

This package's ``__init__`` imports nothing: the stages import ``session`` from it.
"""
