"""Raster backends (stage ``"raster"`` in the registry): what bins a frame's points.

Each implements :class:`RasterBackend`. ``torch-cuda`` keeps the layout on the GPU and bins
with torch (``kernels/raster.py``); ``numba`` bins the view's runs of the Z-order-sorted
layout in place on the CPU; ``datashader`` runs Datashader's ``Canvas.points`` on the
gathered visible points (the reference); ``torch-cpu`` is the torch kernel on the CPU (tests,
and the CPU twin of ``torch-cuda``).

:class:`~bigembed.view.frames.FrameRenderer` plans a :class:`View` (what a frame aggregates:
the runs of visible points, or of pyramid cells at a level) and hands it to the backend; the
backend bins it where it holds the layout and returns host arrays, which the renderer shades.
All follow Datashader's pixel mapping, so every backend makes the same aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..registry import cuda_check, declare

if TYPE_CHECKING:
    from .pyramid import Pyramid
    from .spatial import SpatialIndex


@dataclass(frozen=True, eq=False)  # (arrays: compared by identity, not element-wise)
class View:
    """One frame's plan: the validated view and what it aggregates.

    ``colouring``: a :class:`~bigembed.view.frames.Colouring`; ``mode``: "exact" (``runs``
    are (r, 2) [start, end) runs of point positions in spatial order, ``level`` None) or
    "pyramid" (``runs`` are runs of cell numbers at ``level``); ``mask``: bool array of
    shape (n,) in spatial order (a filter of an exact frame: only matching points), or None;
    ``keep``: the filter of a pyramid frame, or None: (colouring, codes), a categorical
    colouring (the filter column's: ``colouring`` itself, or any when ``colouring`` is
    density) and the sorted codes of its allowed categories; each cell then counts only its
    points of those categories (:meth:`~bigembed.view.pyramid.Pyramid.kept_weights`).
    """

    x_range: tuple
    y_range: tuple
    width: int
    height: int
    colouring: Any
    mode: str
    level: int | None
    runs: np.ndarray
    mask: np.ndarray | None = None
    keep: tuple | None = None

    @property
    def grid(self) -> dict:
        """The pixel grid as the kernels take it (``x_range, y_range, width, height``)."""
        return dict(x_range=self.x_range, y_range=self.y_range, width=self.width,
                    height=self.height)

    @property
    def visited(self) -> int:
        """Items the runs cover (points or cells), before any range or filter test."""
        return int((self.runs[:, 1] - self.runs[:, 0]).sum()) if len(self.runs) else 0


@runtime_checkable
class RasterBackend(Protocol):
    """Bins the points of an exact frame, or the cells of a pyramid frame, per pixel.

    ``exact_budget``: the most visible points a frame bins exactly (beyond it the pyramid
    answers): numba's run kernels cost about 4-16 ns a point here, so 1M points cost 4-16 ms;
    gathering the points for Datashader or torch costs several times that, hence less.

    ``hold(index, pyramid)``: keep the Z-ordered layout (a
    :class:`~bigembed.view.spatial.SpatialIndex`) and its :class:`~bigembed.view.pyramid.
    Pyramid` where this backend bins them (the GPU's memory, say); called once.

    Binning (``view``: a :class:`View`; exact frames bin the view's points, pyramid frames its
    cells, each cell one point at its centroid weighted by its count); each returns
    ``(array, items)``, items being the points (or cells, or (cell, category) pairs) binned
    or considered; arrays are numpy, row 0 at ``y_range[0]``:

    - ``counts(view)``: points per pixel, shape (height, width), whole numbers;
    - ``category_counts(view)``: points per pixel and category, (height, width, C);
    - ``means(view)``: mean of the finite values per pixel, (height, width), NaN where none;
    - ``colour_sums(view)``: accumulators (height * width, 4): count and the count-weighted
      r, g, b of the points' category colours (a categorical image in O(points + pixels)), or
      None where the backend does not bin them;
    - ``category_pixels(view)``: (pixel, category, weight, items): the flat pixel, category
      code and weight (None: 1 each) of every point or (cell, category) pair in range, for a
      sparse categorical image, or None where the backend does not gather them to the host.

    The renderer shades a categorical frame from the first of ``colour_sums``,
    ``category_pixels`` and ``category_counts`` that the backend offers.
    """

    exact_budget: int

    def hold(self, index: SpatialIndex, pyramid: Pyramid) -> None: ...

    def counts(self, view: View) -> tuple: ...

    def category_counts(self, view: View) -> tuple: ...

    def means(self, view: View) -> tuple: ...

    def colour_sums(self, view: View) -> tuple | None: ...

    def category_pixels(self, view: View) -> tuple | None: ...


def _mean(tot, num):
    """Per-pixel mean of sums ``tot`` over counts ``num`` (numpy), NaN where ``num`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num > 0, tot / np.where(num > 0, num, 1), np.nan)


class _Host:
    """Shared by the backends that read the layout in host memory."""

    exact_budget = 400_000

    def hold(self, index, pyramid) -> None:
        self.index = index
        self.pyramid = pyramid

    def _points(self, view):
        """Positions of the view's points (the filter applied), shape (m,)."""
        from .spatial import SpatialIndex

        pos = SpatialIndex.positions(view.runs)
        if view.mask is not None:
            pos = pos[view.mask[pos]]
        return pos

    def colour_sums(self, view):
        return None  # (numba's run kernels bin them; Datashader's reference does not)

    def category_pixels(self, view):
        """Gathered on the host: the points (or (cell, category) pairs) in view and their
        pixels."""
        from ..kernels.raster import pixel_index

        if view.mode == "exact":
            pos = self._points(view)
            x, y = self.index.xs[pos], self.index.ys[pos]
            cat, weight = view.colouring.values[pos], None
        else:
            x, y, _, (cat, weight) = self.pyramid.gather(view)
        pix, keep = pixel_index(x, y, **view.grid)
        return pix, cat[keep], None if weight is None else weight[keep], int(len(x))


class NumbaRuns(_Host):
    """The numba kernels of ``kernels/raster.py`` over the view's runs of the sorted layout
    (and of each pyramid level's cells), in place: nothing is gathered."""

    exact_budget = 1_000_000

    def _bin(self, view, *, mix: bool = False, **exact):
        """Accumulators (height * width, ch) of the view and the items counted: the items
        visited, or with a filter the matching points in range. ``exact``: what
        :func:`~bigembed.kernels.raster.bin_runs` adds per point; a pyramid frame adds each
        cell's weight row (:meth:`Pyramid.weights`, with the colour lut when ``mix``)."""
        from ..kernels.raster import bin_runs

        if view.mode == "pyramid":
            acc, hits = self.pyramid.bin_view(view, mix=mix)
        else:
            acc, hits = bin_runs(self.index.xs, self.index.ys, view.runs, mask=view.mask,
                                 **exact, **view.grid)
        return acc, (hits if view.mask is not None else view.visited)

    def counts(self, view):
        acc, n = self._bin(view)
        return acc[:, 0].reshape(view.height, view.width), n

    def category_counts(self, view):
        c = view.colouring
        acc, n = self._bin(view, codes=c.values, n_codes=len(c.categories))
        return acc.reshape(view.height, view.width, -1), n

    def means(self, view):
        from ..kernels.raster import mean_of_sums

        acc, n = self._bin(view, mean_of=view.colouring.values)
        return mean_of_sums(acc).reshape(view.height, view.width), n

    def colour_sums(self, view):
        from .pyramid import category_lut

        c = view.colouring
        return self._bin(view, mix=True, codes=c.values, lut=category_lut(c, mix=True))


class DatashaderPoints(_Host):
    """Datashader's ``Canvas.points`` on the gathered visible points (exact frames: the
    reference); pyramid cells are weighted points, summed by numpy's bincount (the kernels'
    reference twin, same pixel mapping), faster than a dataframe."""

    def _canvas(self, view, agg, column=None):
        """Datashader's aggregate of the view's points; ``column``: the colouring's values
        of the given positions, as column ``"c"``."""
        import datashader as dsh
        import pandas as pd

        pos = self._points(view)
        df = {"x": self.index.xs[pos], "y": self.index.ys[pos]}
        if column is not None:
            df["c"] = column(pos)
        cv = dsh.Canvas(plot_width=view.width, plot_height=view.height,
                        x_range=view.x_range, y_range=view.y_range)
        return np.asarray(cv.points(pd.DataFrame(df), "x", "y", agg=agg).data), int(len(pos))

    def counts(self, view):
        import datashader as dsh

        from ..kernels.raster import bin_points_reference

        if view.mode == "exact":
            return self._canvas(view, dsh.count())
        x, y, w, _ = self.pyramid.gather(view)
        return bin_points_reference(x, y, weights=w, **view.grid), int(len(x))

    def category_counts(self, view):
        import datashader as dsh
        import pandas as pd

        from ..kernels.raster import bin_points_reference

        c = view.colouring
        if view.mode == "exact":
            cats = list(c.categories)
            return self._canvas(view, dsh.count_cat("c"), lambda pos: pd.Categorical.from_codes(
                c.values[pos], categories=cats))
        x, y, _, (cat, w) = self.pyramid.gather(view)
        return bin_points_reference(x, y, weights=w, categories=cat,
                                    n_categories=len(c.categories), **view.grid), int(len(x))

    def means(self, view):
        import datashader as dsh

        from ..kernels.raster import bin_points_reference

        if view.mode == "exact":
            return self._canvas(view, dsh.mean("c"), lambda pos: view.colouring.values[pos])
        x, y, _, (s, m) = self.pyramid.gather(view)
        tot = bin_points_reference(x, y, weights=s, **view.grid)
        num = bin_points_reference(x, y, weights=m, **view.grid)
        return _mean(tot, num), int(len(x))


class TorchRaster:
    """The torch kernel of ``kernels/raster.py`` on a torch device. The layout is copied
    there once (:meth:`hold`); an exact frame sends only its runs there and brings back only
    the aggregate. Pyramid cells are gathered on the host and binned on the device."""

    exact_budget = 400_000

    def __init__(self, device: str = "cuda"):
        self.device = device
        self._cache: dict = {}

    def hold(self, index, pyramid) -> None:
        import torch

        self.index = index
        self.pyramid = pyramid
        self._xs = torch.as_tensor(index.xs, device=self.device)
        self._ys = torch.as_tensor(index.ys, device=self.device)

    def _on_device(self, key, array):
        """``array`` as a tensor on the device, kept per ``key`` (colourings, masks)."""
        import torch

        got = self._cache.get(key)
        if got is None or got[0] is not array:
            if len(self._cache) > 16:
                self._cache.clear()
            got = (array, torch.as_tensor(np.ascontiguousarray(array), device=self.device))
            self._cache[key] = got
        return got[1]

    def _tensor(self, a):
        import torch

        return torch.as_tensor(np.ascontiguousarray(a), device=self.device)

    def _items(self, view):
        """(x, y, weight, values, items) as tensors on the device: the view's points (exact,
        values their colouring's values) or cells (pyramid, values as in
        :meth:`Pyramid.gather`)."""
        import torch

        from ..kernels.raster import run_positions_torch

        c = view.colouring
        if view.mode == "exact":
            pos = run_positions_torch(torch.as_tensor(view.runs, device=self.device))
            if view.mask is not None:
                pos = pos[self._on_device(("mask", id(view.mask)), view.mask)[pos]]
            vals = None if c.values is None else self._on_device(("values", c.name),
                                                                  c.values)[pos]
            return self._xs[pos], self._ys[pos], None, vals, int(pos.shape[0])
        x, y, w, vals = self.pyramid.gather(view)
        if vals is not None:
            vals = tuple(self._tensor(v) for v in vals)
        return self._tensor(x), self._tensor(y), self._tensor(w), vals, int(len(x))

    def counts(self, view):
        from ..kernels.raster import bin_points_torch

        x, y, w, _, n = self._items(view)
        return bin_points_torch(x, y, weights=w, **view.grid).cpu().numpy(), n

    def category_counts(self, view):
        from ..kernels.raster import bin_points_torch

        x, y, _, vals, n = self._items(view)
        cat, w = vals if view.mode == "pyramid" else (vals, None)
        return bin_points_torch(x, y, categories=cat, weights=w,
                                n_categories=len(view.colouring.categories),
                                **view.grid).cpu().numpy(), n

    def means(self, view):
        import torch

        from ..kernels.raster import bin_points_torch

        x, y, _, vals, n = self._items(view)
        if view.mode == "pyramid":
            s, m = vals
        else:
            fin = torch.isfinite(vals)
            s, m = torch.where(fin, vals, torch.zeros_like(vals)), fin.to(torch.float64)
        tot = bin_points_torch(x, y, weights=s, **view.grid)
        num = bin_points_torch(x, y, weights=m, **view.grid)
        arr = torch.where(num > 0, tot / num.clamp(min=1e-300), torch.full_like(tot, float("nan")))
        return arr.cpu().numpy(), n

    def colour_sums(self, view):
        return None

    def category_pixels(self, view):
        return None


def _torch_cpu():
    return TorchRaster(device="cpu")


RASTER = declare("raster", RasterBackend, description="frame binning")
RASTER.register("torch-cuda", TorchRaster, requires=("torch",), check=cuda_check, gpu=True,
                install="pip install torch (a CUDA build)",
                description="torch index_add_ binning on the GPU (kernels/raster.py)")
RASTER.register("numba", NumbaRuns, requires=("numba", "datashader"),
                install="pip install numba datashader",
                description="numba kernels binning the view's Z-order runs in place "
                            "(kernels/raster.py, Datashader's pixel mapping) on the CPU")
RASTER.register("datashader", DatashaderPoints, requires=("datashader",),
                install="pip install datashader",
                description="Datashader's Canvas.points on the gathered visible points")
RASTER.register("torch-cpu", _torch_cpu, requires=("torch",), install="pip install torch",
                description="the torch binning kernel on the CPU device (tests)")
