"""Raster backends (stage ``"raster"`` in the registry): what bins a frame's points.

Each implements :class:`RasterBackend`. ``torch-cuda`` keeps the layout on the GPU and bins
with torch (``kernels/raster.py``); ``numba`` bins the view's runs of the Z-order-sorted
layout in place on the CPU; ``datashader`` runs Datashader's ``Canvas.points`` on the
gathered visible points (the reference); ``torch-cpu`` is the torch kernel on the CPU (tests).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..registry import cuda_check, declare


@runtime_checkable
class RasterBackend(Protocol):
    """``device``: the torch device the layout is held on, or None on the host;
    ``bins_runs``: bins the view's runs of the sorted layout in place (no gather);
    ``exact_budget``: the most visible points a frame bins exactly (beyond it the pyramid
    answers): numba's run kernels cost about 4-16 ns a point here, so 1M points cost 4-16 ms;
    gathering the points for Datashader or torch costs several times that, hence less."""

    device: str | None
    bins_runs: bool
    exact_budget: int


class _Raster:
    device = None
    bins_runs = False
    exact_budget = 400_000

    def __init__(self, **_):
        pass


class TorchCuda(_Raster):
    device = "cuda"


class NumbaRuns(_Raster):
    bins_runs = True
    exact_budget = 1_000_000


class DatashaderPoints(_Raster):
    pass


class TorchCpu(_Raster):
    device = "cpu"


RASTER = declare("raster", RasterBackend, description="frame binning")
RASTER.register("torch-cuda", TorchCuda, requires=("torch",), check=cuda_check, gpu=True,
                install="pip install torch (a CUDA build)",
                description="torch index_add_ binning on the GPU (kernels/raster.py)")
RASTER.register("numba", NumbaRuns, requires=("numba", "datashader"),
                install="pip install numba datashader",
                description="numba kernels binning the view's Z-order runs in place "
                            "(kernels/raster.py, Datashader's pixel mapping) on the CPU")
RASTER.register("datashader", DatashaderPoints, requires=("datashader",),
                install="pip install datashader",
                description="Datashader's Canvas.points on the gathered visible points")
RASTER.register("torch-cpu", TorchCpu, requires=("torch",), install="pip install torch",
                description="the torch binning kernel on the CPU device (tests)")
