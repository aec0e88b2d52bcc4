"""Fast shading of frame aggregates: Datashader's ``tf.shade`` formulas, on non-empty pixels.

``tf.shade`` works on every pixel of the canvas (640,000 at 800 x 800) and costs 50-150 ms a
frame on this class of machine, more than the aggregation itself. These functions apply the
same formulas (histogram equalisation as ``datashader.transfer_functions.eq_hist``, the same
``np.interp`` colour ramps, the same categorical mixing and alpha ramp) to the non-empty
pixels only, and to each distinct level once, so frame cost follows what is visible.
``tests/test_frames.py`` checks the images against ``tf.shade`` itself (bit for bit).

Also a PNG writer without per-row filtering (deflate level 1, by ISA-L when installed):
images here are mostly transparent runs, which deflate well unfiltered, and it is faster than
Pillow's.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

NBINS = 256 * 256


def _rgb(colors) -> np.ndarray:
    """Hex colours -> float array of shape (len, 3) (read-only; cached per colour list)."""
    return _rgb_cached(tuple(colors))


def _hex_or_name(c) -> tuple:
    """(r, g, b) 0-255 of '#rrggbb' (what colorcet's maps hold) without importing Datashader
    (seconds of a first frame); other forms (names, tuples) through Datashader's ``rgb``."""
    if isinstance(c, str) and len(c) == 7 and c[0] == "#":
        try:
            return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)
        except ValueError:
            pass
    from datashader.colors import rgb

    return rgb(c)


@functools.lru_cache(maxsize=64)
def _rgb_cached(colors: tuple) -> np.ndarray:
    out = np.array([_hex_or_name(c) for c in colors], dtype=np.float64)
    out.flags.writeable = False
    return out


def _unique_inverse(d: np.ndarray):
    """(distinct values, their counts, index of each element's value); d non-negative ints."""
    top = int(d.max()) if len(d) else 0
    if top < 4 * len(d) + 65536:
        # bincount beats a sort when the values are small (counts per pixel usually are)
        hist = np.bincount(d)
        present = hist > 0
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present), hist[present], rank[d]
    values, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    return values, counts, inverse


def eq_hist_levels(d: np.ndarray, *, as_float: bool = False):
    """``eq_hist`` of the values ``d`` (1-D) as Datashader computes it, per distinct level.

    Returns (levels, index): the equalised value of each distinct level and, per element,
    the index of its level; so ``levels[index]`` is Datashader's ``eq_hist`` of ``d``.
    Integer data with fewer than 65536 levels is counted exactly; other data goes through a
    65536-bin histogram (Datashader's rule), evaluated once per distinct value.
    ``as_float``: integers Datashader would see as floats (always the histogram).
    """
    if d.dtype.kind in "iub" and not as_float and (int(d.max()) - int(d.min())) < NBINS:
        _, counts, inverse = _unique_inverse(d.astype(np.int64) - int(d.min()))
        return np.cumsum(counts) / float(counts.sum()), inverse
    if d.dtype.kind in "iub":
        base = int(d.min())
        vals, counts, inverse = _unique_inverse(d.astype(np.int64) - base)
        uniq = (vals + base).astype(np.float64)
    else:
        uniq, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    hist, edges = np.histogram(uniq, bins=NBINS, range=(uniq.min(), uniq.max()),
                               weights=counts.astype(np.float64))
    centers = (edges[:-1] + edges[1:]) / 2
    keep = hist > 0
    cdf = hist[keep].cumsum()
    cdf = cdf / float(cdf[-1])
    return np.interp(uniq, centers[keep], cdf), inverse


def _ramp(t: np.ndarray, span, cmap) -> np.ndarray:
    """Colour of values ``t`` on ``cmap`` over ``span``; uint8 array of shape (n, 3).

    ``np.interp(t, xs, channel, left=255)`` per channel, with the interval search done once
    for the three channels (the same arithmetic, so the same bytes, at a third of the cost:
    a mean frame shades every non-empty pixel)."""
    cols = _rgb(cmap)
    xs = np.linspace(span[0], span[1], len(cmap))
    t = np.asarray(t, np.float64)
    out = np.empty((len(t), 3), np.uint8)
    if len(xs) < 2 or len(t) < 4096:  # small: the plain calls
        for ch in range(3):
            out[:, ch] = np.nan_to_num(np.interp(t, xs, cols[:, ch], left=255)).astype(np.uint8)
        return out
    j = np.clip(np.searchsorted(xs, t, side="right") - 1, 0, len(xs) - 2)
    dx = t - xs[j]
    slopes = (cols[1:] - cols[:-1]) / (xs[1:] - xs[:-1])[:, None]
    below, top = t < xs[0], t >= xs[-1]
    for ch in range(3):
        v = slopes[j, ch] * dx + cols[j, ch]
        v[top] = cols[-1, ch]
        v[below] = 255
        v[np.isnan(t)] = 0  # np.interp gives NaN there; nan_to_num made it 0
        out[:, ch] = v.astype(np.uint8)
    return out


def _fill(h, w, nz, rgb, a) -> np.ndarray:
    img = np.zeros(h * w, np.uint32)
    rgba = np.empty((len(nz), 4), np.uint8)
    rgba[:, :3] = rgb
    rgba[:, 3] = a
    img[nz] = rgba.view(np.uint32).reshape(-1)
    return img


def _pack(rgb: np.ndarray, a) -> np.ndarray:
    """RGBA uint32 (little-endian bytes r, g, b, a) of rgb (n, 3) uint8 and alpha(s) a."""
    rgb = rgb.astype(np.uint32)
    return rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16) | (np.asarray(a, np.uint32) << 24)


def shade_density(counts: np.ndarray, cmap, alpha: int = 255, *, return_nz: bool = False):
    """Counts (H, W) (unsigned, or floats holding whole counts) -> RGBA uint32 (H, W), like
    ``tf.shade(how="eq_hist")``; with ``return_nz`` also the flat indices of the pixels
    drawn."""
    from ..kernels.raster import nonzero_counts

    h, w = counts.shape
    nz, d = nonzero_counts(counts.reshape(-1))
    img = np.zeros(h * w, np.uint32)
    if len(nz):
        d = d - d.min()
        levels, index = eq_hist_levels(d)
        # Colour each distinct level once (a few thousand), then one gather per pixel.
        img[nz] = _pack(_ramp(levels, (levels.min(), levels.max()), cmap), alpha)[index]
    img = img.reshape(h, w)
    return (img, nz) if return_nz else img


def shade_mean(values: np.ndarray, cmap, span, alpha: int = 255, *, return_nz: bool = False):
    """Means (H, W) float, NaN where empty -> RGBA, like ``tf.shade(how="linear", span=)``;
    with ``return_nz`` also the flat indices of the pixels drawn."""
    h, w = values.shape
    flat = values.reshape(-1)
    lo, hi = np.array(span, dtype=flat.dtype)
    if flat.dtype == np.float64:
        # one pass of the numba kernel: the arithmetic below, without its temporaries
        from ..kernels.raster import shade_means

        cols = _rgb(cmap)
        xs = np.linspace(0, hi - lo, len(cmap))
        with np.errstate(divide="ignore", invalid="ignore"):  # lo == hi: every value is lo
            slopes = (cols[1:] - cols[:-1]) / (xs[1:] - xs[:-1])[:, None]
        img, nz = shade_means(flat, lo, hi, xs, cols, slopes, alpha)
        img = img.reshape(h, w)
        return (img, nz) if return_nz else img
    nz = np.flatnonzero(~np.isnan(flat))
    if len(nz) == 0:
        img = np.zeros((h, w), np.uint32)
    else:
        d = np.clip(flat[nz], lo, hi) - lo
        rgb = _ramp(d, (0, hi - lo), cmap)
        img = _fill(h, w, nz, rgb, alpha).reshape(h, w)
    return (img, nz) if return_nz else img


def shade_categorical(counts: np.ndarray, colors, *, min_alpha: int = 40,
                      alpha: int = 255) -> np.ndarray:
    """Counts (H, W, C) unsigned -> RGBA, like ``tf.shade(color_key=..., how="eq_hist")``.

    A pixel's colour is the count-weighted mean of its categories' colours; its opacity is
    the histogram-equalised total, from ``min_alpha`` to ``alpha``.
    """
    h, w, c = counts.shape
    rgb_cols = _rgb(colors).astype(np.float32)
    flat = counts.reshape(h * w, c)
    total = flat.sum(1)
    nz = np.flatnonzero(total)
    # Empty pixels carry the mean colour at alpha 0, as Datashader leaves them.
    empty = np.zeros(4, np.uint8)
    empty[:3] = (rgb_cols.sum(0) / c).astype(np.uint8)
    if len(nz) == 0:
        return np.full((h, w), empty.view(np.uint32)[0], np.uint32)
    data = flat[nz].astype(np.float32)
    baseline = float(counts.min())
    if baseline > 0:
        data -= baseline
    tot = data.sum(1)
    rgb = (data @ rgb_cols / tot[:, None]).astype(np.uint8)
    # Datashader equalises the totals as floats (a 65536-bin histogram); so do we.
    tv = total[nz]
    levels, index = eq_hist_levels(tv - tv.min(), as_float=True)
    span = [levels.min(), levels.max()]
    a = np.nan_to_num(np.interp(levels, span, [min_alpha, alpha], left=0, right=255)
                      ).astype(np.uint8)[index]
    img = _fill(h, w, nz, rgb, a)
    mask = np.ones(h * w, bool)
    mask[nz] = False
    img[mask] = empty.view(np.uint32)[0]
    return img.reshape(h, w)


def shade_categorical_sparse(pix, cat, weight, *, shape, colors, min_alpha: int = 40,
                             alpha: int = 255) -> np.ndarray:
    """:func:`shade_categorical` from points instead of a dense (H, W, C) aggregate.

    pix: flat pixel index of each point (or pyramid cell) in view, shape (m,); cat: its
    category code; weight: its count (None: 1 each). Work is O(m + H*W), never H*W*C.
    Colours are mixed in float64 (Datashader: float32), so a channel may differ by one level.
    """
    h, w = shape
    c = len(colors)
    rgb_cols = _rgb(colors)
    empty = np.zeros(4, np.uint8)
    empty[:3] = (rgb_cols.astype(np.float32).sum(0) / c).astype(np.uint8)
    img = np.full(h * w, empty.view(np.uint32)[0], np.uint32)
    if len(pix) == 0:
        return img.reshape(h, w)
    key = np.asarray(pix, np.int64) * c + np.asarray(cat, np.int64)
    if weight is None and len(key) > (h * w * c) // 8:
        n = np.bincount(key, minlength=h * w * c).astype(np.float64)
        key = np.flatnonzero(n)
        n = n[key]
    else:
        key, inv = np.unique(key, return_inverse=True)
        n = np.bincount(inv, weights=weight, minlength=len(key)).astype(np.float64)
    p, k = np.divmod(key, c)
    total = np.bincount(p, weights=n, minlength=h * w)
    nz = np.flatnonzero(total)
    data_n = n
    if len(key) == h * w * c and n.min() > 0:  # no zero anywhere: Datashader's baseline
        data_n = n - n.min()
    tot = np.bincount(p, weights=data_n, minlength=h * w)[nz]
    rgb = np.empty((len(nz), 3), np.uint8)
    with np.errstate(invalid="ignore", divide="ignore"):
        for ch in range(3):
            s_ch = np.bincount(p, weights=data_n * rgb_cols[k, ch], minlength=h * w)[nz]
            rgb[:, ch] = (s_ch / tot).astype(np.uint8)
    tv = np.rint(total[nz]).astype(np.int64)
    levels, index = eq_hist_levels(tv - tv.min(), as_float=True)
    span = [levels.min(), levels.max()]
    a = np.nan_to_num(np.interp(levels, span, [min_alpha, alpha], left=0, right=255)
                      ).astype(np.uint8)[index]
    rgba = np.empty((len(nz), 4), np.uint8)
    rgba[:, :3] = rgb
    rgba[:, 3] = a
    img[nz] = rgba.view(np.uint32).reshape(-1)
    return img.reshape(h, w)


def shade_categorical_mixed(acc: np.ndarray, *, shape, colors, min_alpha: int = 40,
                            alpha: int = 255, return_nz: bool = False):
    """:func:`shade_categorical` from four accumulators per pixel, shape (H*W, 4): the count
    and the count-weighted sums of r, g, b of the points' category colours.

    A pixel's colour is then the sum over its count, whatever the number of categories, so
    the work is O(points + pixels). Returns None when every pixel is non-empty: there
    Datashader first subtracts the smallest per-category count (its colour baseline), which
    these sums cannot give; use :func:`shade_categorical_sparse` then.
    """
    from ..kernels.raster import mix_pixels

    h, w = shape
    c = len(colors)
    empty = np.zeros(4, np.uint8)
    empty[:3] = (_rgb(colors).astype(np.float32).sum(0) / c).astype(np.uint8)
    img, nz, tv = mix_pixels(acc, int(empty.view(np.uint32)[0]))
    if len(nz) == h * w:
        return (None, nz) if return_nz else None
    if len(nz):
        levels, index = eq_hist_levels(tv - tv.min(), as_float=True)
        span = [levels.min(), levels.max()]
        a = np.nan_to_num(np.interp(levels, span, [min_alpha, alpha], left=0, right=255)
                          ).astype(np.uint8).astype(np.uint32)
        img[nz] |= a[index] << np.uint32(24)
    img = img.reshape(h, w)
    return (img, nz) if return_nz else img


def dynspread(img, *, threshold: float, max_px: int):
    """``datashader.transfer_functions.dynspread`` of a Datashader Image (same result): the
    density test runs in :func:`bigembed.kernels.raster.neighbour_share`, which stops at a
    pixel's first neighbour, then Datashader's own ``spread`` does the spreading."""
    import datashader.transfer_functions as tf

    px_ = spread_px(img.data, threshold=threshold, max_px=max_px)
    return tf.spread(img, px_, shape="circle") if px_ >= 1 else img


def spread_px(img: np.ndarray, *, threshold: float, max_px: int, nz=None) -> int:
    """How many pixels ``dynspread`` spreads the RGBA uint32 image (H, W) by (0: none).
    ``nz``: flat indices of exactly the pixels with alpha, when the caller has them."""
    from ..kernels.raster import neighbour_share, spreads

    px_ = 0
    for px in range(1, max_px + 1):
        px_ = px
        dense = (spreads(img, nz, px * 2, threshold) if nz is not None
                 else neighbour_share(img, px * 2) > threshold)
        if dense:
            px_ = px - 1
            break
    return px_


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_rgba(img: np.ndarray, *, flip: bool = True, level: int = 1) -> bytes:
    """PNG bytes of an RGBA uint32 image (H, W); ``flip`` puts row 0 at the bottom (y up)."""
    h, w = img.shape
    rows = img[::-1] if flip else img
    raw = np.zeros((h, w * 4 + 1), np.uint8)  # filter byte 0 (none) per row
    raw[:, 1:] = np.ascontiguousarray(rows).view(np.uint8).reshape(h, w * 4)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", _deflate(raw, level)) + _chunk(b"IEND", b""))


try:  # ISA-L's deflate (a standard zlib stream): 4.6 ms vs zlib's 15.8 ms on a full 800 x 800
    from isal import isal_zlib as _fast_zlib  # frame of 10M points, at a similar size
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _fast_zlib = None


#: images at least this big are deflated in two halves at once (pigz's way: the first half
#: ends on a sync flush, the second is compressed on its own; one valid zlib stream)
SPLIT_DEFLATE_BYTES = 1 << 20
_POOL = None


def _raw_deflate(data, level: int, last: bool) -> bytes:
    z = _fast_zlib if _fast_zlib is not None and level <= 3 else zlib
    c = z.compressobj(min(level, 3) if z is _fast_zlib else level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _deflate(raw: np.ndarray, level: int) -> bytes:
    # Unfiltered rows at level 1: measured faster than Pillow's filtered PNG (2-3x) and
    # than zlib's Z_RLE strategy on these images, at a similar size. A big image's two
    # halves are compressed on two threads (the compressors release the GIL): a frame's
    # PNG in about half the time, a few bytes larger.
    global _POOL
    data = memoryview(raw).cast("B")
    if len(data) < SPLIT_DEFLATE_BYTES:
        if _fast_zlib is not None and level <= 3:
            return _fast_zlib.compress(data, min(level, 3))
        return zlib.compress(data, level)
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(2, thread_name_prefix="bigembed-deflate")
    half = len(data) // 2
    second = _POOL.submit(_raw_deflate, data[half:], level, True)
    first = _raw_deflate(data[:half], level, False)
    # zlib header: deflate, 32 KiB window, the level's flag, a valid check (RFC 1950)
    head = bytes([0x78, 0x01 if level <= 1 else 0x5E if level <= 5 else 0x9C])
    return head + first + second.result() + struct.pack(">I", zlib.adler32(data))
