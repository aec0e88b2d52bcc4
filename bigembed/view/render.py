"""Render a layout to a PNG file: one frame of the explorer's map, on a background.

There is one shading path in bigembed: :class:`bigembed.view.frames.FrameRenderer`, the
map's render function (aggregation through the spatial index, the map's colour maps, its
spreading). ``bigembed render`` asks it for the frame of the whole layout (the view the map
opens on) and lays it on an opaque background, so the CLI image is the map's frame.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from ..dataset.reader import Dataset
from ..errors import InputError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` wrote: the PNG, the view it shows and what its colours mean.

    ``x_range``/``y_range``: (lo, hi) in layout coordinates; ``legend``: as
    :meth:`FrameRenderer.legend` (categories and colours, or a span and colour map).
    """

    path: Path
    layout: str
    color_by: str
    width: int
    height: int
    x_range: tuple
    y_range: tuple
    legend: dict
    seconds: float


def _layout_name(ds: Dataset, layout, space, method) -> str:
    from ..dataset.layouts import find_layouts, load_layout

    if layout is not None:
        return getattr(layout, "name", layout)
    names = find_layouts(ds, space=space, method=method)
    if not names:
        load_layout(ds, space=space, method=method)  # raises the stage's own clear error
    return names[0]


def frame_renderer(ds: Dataset, layout=None, *, space=None, method=None,
                   spatial: bool = True):
    """The map's :class:`~bigembed.view.frames.FrameRenderer` for a stored layout (a name
    or a :class:`~bigembed.dataset.layouts.Layout`; the newest for ``space``/``method`` when None).
    ``spatial=False``: no Z-order sort, for a single exact frame of all points."""
    from .frames import FrameRenderer

    return FrameRenderer(ds, _layout_name(ds, layout, space, method), spatial=spatial)


def _background_rgb(background: str) -> tuple:
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(background)[:3]
    except (ValueError, AttributeError, TypeError):
        raise InputError(f"background must be a colour name or #rrggbb, got {background!r}") from None


def composite(png: bytes, background: str | None = "white"):
    """A frame's RGBA PNG bytes laid over an opaque ``background`` (a colour name or
    ``#rrggbb``); returns a PIL image (RGB, or the frame's RGBA when ``background`` is None)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGBA")
    if background is None:
        return img
    base = Image.new("RGBA", img.size, (*_background_rgb(background), 255))
    return Image.alpha_composite(base, img).convert("RGB")


def render_image(ds: Dataset, layout, *, color_by: str | None = None, width: int = 800,
                 height: int = 800, x_range=None, y_range=None, background: str | None = "white"):
    """One map frame of ``layout`` (name or Layout) as a PIL image of ``width`` x ``height``.

    ``None`` ranges mean the map's opening view (the whole layout, padded by 2%).
    """
    r = frame_renderer(ds, layout)
    frame = r.render(x_range=x_range, y_range=y_range, width=width, height=height,
                     color_by=_color_key(r, color_by))
    return composite(frame.png, background)


def _color_key(r, color_by):
    if color_by is None or color_by == "density":
        return None
    if color_by not in r.columns():
        raise InputError(f"color_by: no column {color_by!r}; available: {r.columns()}")
    return color_by


def render(ds, *, out, layout: str | None = None, space: str | None = None,
           method: str | None = None, color_by: str | None = None, width: int = 800,
           height: int = 800, background: str | None = "white",
           mode: str = "exact") -> RenderResult:
    """Render a stored layout of ``ds`` to the PNG file ``out`` (written atomically).

    The image is the map's frame of the whole layout (``FrameRenderer.render`` with the
    map's opening view), laid over ``background`` (None keeps the frame's transparency).
    ``mode="exact"`` aggregates every point, as the map does for any view of at most
    the raster backend's ``exact_budget`` points; a one-off image need not pay for the aggregate pyramid the map
    answers larger zoomed-out views from. ``mode="auto"`` draws the map's own frame in that
    case too (pyramid cells at their centroids: points within a pixel of their place).
    """
    import time

    from ..dataset import _atomic
    from .frames import MAX_SIDE  # the map's own limit

    t0 = time.perf_counter()
    if not isinstance(ds, Dataset):
        ds = Dataset.open(ds)
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
            raise InputError(f"{name} must be an integer in 1..{MAX_SIDE}, got {v!r}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"out must name a .png file, got {out}")
    if out.is_dir():
        raise InputError(f"out: {out} is a directory, expected a .png file path")
    if mode not in ("exact", "auto"):
        raise InputError(f"mode must be 'exact' or 'auto', got {mode!r}")
    if background is not None:
        _background_rgb(background)  # a bad colour fails before any work
    # One exact frame of everything needs no spatial order (sorting 4M points costs more
    # than binning them); the map's own zoomed-out frame (mode auto) needs the pyramid.
    r = frame_renderer(ds, layout, space=space, method=method, spatial=mode != "exact")
    key = _color_key(r, color_by)
    x_range, y_range = r.default_range()
    frame = r.render(x_range=x_range, y_range=y_range, width=width, height=height,
                     color_by=key, mode=mode)
    img = composite(frame.png, background)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    log.info("render: %s (%s, %dx%d, %s frame of %d points) -> %s", r.layout.name,
             key or "density", width, height, frame.mode, frame.points, out)
    return RenderResult(out, r.layout.name, key or "density", width, height,
                        tuple(map(float, x_range)), tuple(map(float, y_range)),
                        r.legend(key), time.perf_counter() - t0)
