"""Rasterize a layout to an image with Datashader (server-side; no points leave the machine)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .errors import InputError
from .layouts import load_layout

log = logging.getLogger(__name__)


def layout_frame(ds: Dataset, layout, color_by: str | None = None):
    """A pandas DataFrame with x, y and (optionally) the colouring column of each point."""
    import pandas as pd

    df = pd.DataFrame({"x": layout.x, "y": layout.y})
    if color_by is None:
        return df
    if color_by in layout.columns:
        df[color_by] = layout.columns[color_by]
        return df
    meta = ds.meta
    if color_by not in meta.columns:
        cols = sorted(set(meta.columns) | set(layout.columns))
        raise InputError(f"--color-by: no column {color_by!r}; available: {cols}")
    df[color_by] = meta[color_by].to_numpy()
    return df


def render_image(ds: Dataset, layout, *, color_by: str | None = None, width: int = 800,
                 height: int = 800, x_range=None, y_range=None, background: str = "white"):
    """Aggregate and shade the layout; returns a PIL image of ``width`` x ``height``."""
    import colorcet as cc
    import datashader as dsh
    import datashader.transfer_functions as tf
    import pandas as pd

    df = layout_frame(ds, layout, color_by)
    if x_range is None:
        x_range = _padded(df["x"].to_numpy())
    if y_range is None:
        y_range = _padded(df["y"].to_numpy())
    canvas = dsh.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    if color_by is None:
        agg = canvas.points(df, "x", "y", agg=dsh.count())
        img = tf.shade(agg, cmap=cc.fire[40:], how="eq_hist")
    else:
        col = df[color_by]
        categorical = (col.dtype.kind in "iubO" and col.nunique() <= 64) or \
            isinstance(col.dtype, pd.CategoricalDtype)
        if categorical:
            df[color_by] = col.astype(str).astype("category")
            agg = canvas.points(df, "x", "y", agg=dsh.count_cat(color_by))
            keys = list(df[color_by].cat.categories)
            colors = {k: cc.b_glasbey_category10[i % len(cc.b_glasbey_category10)]
                      for i, k in enumerate(keys)}
            img = tf.shade(agg, color_key=colors, how="eq_hist")
        else:
            df[color_by] = col.astype("float64")
            agg = canvas.points(df, "x", "y", agg=dsh.mean(color_by))
            img = tf.shade(agg, cmap=cc.bmy, how="linear")
    img = tf.spread(img, px=1, how="over")
    img = tf.set_background(img, background)
    return img.to_pil()


def _padded(v: np.ndarray, frac: float = 0.02):
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = (hi - lo) * frac or 1.0
    return (lo - pad, hi + pad)


def render(ds, *, out, layout: str | None = None, space: str | None = None,
           method: str | None = None, color_by: str | None = None, width: int = 800,
           height: int = 800) -> Path:
    """Render a stored layout of ``ds`` to the PNG file ``out``; returns its path."""
    from . import _atomic

    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    for name, v in (("--width", width), ("--height", height)):
        if not isinstance(v, int) or not 1 <= v <= 8192:
            raise InputError(f"{name} must be an integer in 1..8192, got {v!r}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must name a .png file, got {out}")
    if out.is_dir():
        raise InputError(f"--out: {out} is a directory, expected a .png file path")
    lay = load_layout(ds, name=layout, space=space, method=method)
    img = render_image(ds, lay, color_by=color_by, width=width, height=height)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out
