"""Point binning (2-D histogram) for the map: a torch kernel and its numpy reference twin.

Both follow Datashader's pixel mapping exactly, so an aggregate made here equals the one
``datashader.Canvas.points`` makes for the same points and range:
``sx = width / (x1 - x0)``, ``tx = -x0 * sx``, ``i = int(x * sx + tx)`` in float64, points
outside ``[x0, x1] x [y0, y1]`` dropped, points on the upper edge put in the last pixel.

No I/O, logging or validation here: :mod:`bigembed.view.frames` owns that.
"""

from __future__ import annotations

import numpy as np


def _mapping(lo: float, hi: float, n: int):
    s = n / (hi - lo)
    return s, -lo * s


def pixel_index(x, y, *, x_range, y_range, width, height):
    """Flat pixel index (row * width + col) of the points inside the range, and which are.

    Returns (flat int64 array of shape (m,), keep bool array of shape (n,)).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    (x0, x1), (y0, y1) = x_range, y_range
    sx, tx = _mapping(x0, x1, width)
    sy, ty = _mapping(y0, y1, height)
    keep = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    xk, yk = x[keep], y[keep]
    xi = np.minimum((xk * sx + tx).astype(np.int64), width - 1)
    yi = np.minimum((yk * sy + ty).astype(np.int64), height - 1)
    xi[xk == x1] = width - 1
    yi[yk == y1] = height - 1
    return yi * width + xi, keep


def bin_points_reference(x, y, *, x_range, y_range, width, height, weights=None,
                         categories=None, n_categories=0):
    """Sum of ``weights`` (1 when None) per pixel, numpy.

    x, y: arrays of shape (n,); weights: (n,) or None; categories: (n,) ints in
    [0, n_categories) or None. Returns float64 array of shape (height, width), or
    (height, width, n_categories) with categories; row 0 is ``y_range[0]``.
    """
    flat, keep = pixel_index(x, y, x_range=x_range, y_range=y_range, width=width,
                             height=height)
    w = None if weights is None else np.asarray(weights, np.float64)[keep]
    if categories is None:
        return np.bincount(flat, weights=w, minlength=width * height).reshape(height, width)
    c = np.asarray(categories, np.int64)[keep]
    out = np.bincount(flat * n_categories + c, weights=w,
                      minlength=width * height * n_categories)
    return out.reshape(height, width, n_categories)


def bin_points_torch(x, y, *, x_range, y_range, width, height, weights=None,
                     categories=None, n_categories=0):
    """The same as :func:`bin_points_reference` with torch tensors on any device.

    x, y: tensors of shape (n,) (float32 or float64, on the device the work runs on).
    Returns a float64 tensor of shape (height, width) or (height, width, n_categories).
    """
    import torch

    xd = x.to(torch.float64)
    yd = y.to(torch.float64)
    (x0, x1), (y0, y1) = x_range, y_range
    sx, tx = _mapping(x0, x1, width)
    sy, ty = _mapping(y0, y1, height)
    keep = (xd >= x0) & (xd <= x1) & (yd >= y0) & (yd <= y1)
    xk, yk = xd[keep], yd[keep]
    xi = (xk * sx + tx).to(torch.int64).clamp_(max=width - 1)
    yi = (yk * sy + ty).to(torch.int64).clamp_(max=height - 1)
    xi = torch.where(xk == x1, torch.full_like(xi, width - 1), xi)
    yi = torch.where(yk == y1, torch.full_like(yi, height - 1), yi)
    flat = yi * width + xi
    if weights is None:
        w = torch.ones(flat.shape[0], dtype=torch.float64, device=flat.device)
    else:
        w = weights.to(torch.float64)[keep]
    if categories is None:
        out = torch.zeros(width * height, dtype=torch.float64, device=flat.device)
        out.index_add_(0, flat, w)
        return out.view(height, width)
    c = categories.to(torch.int64)[keep]
    out = torch.zeros(width * height * n_categories, dtype=torch.float64, device=flat.device)
    out.index_add_(0, flat * n_categories + c, w)
    return out.view(height, width, n_categories)


def run_positions_torch(runs):
    """Positions covered by ``runs`` (tensor (r, 2) of [start, end), int64), concatenated, as
    a tensor on the runs' device: so a view's points are gathered where the layout lives and
    only the runs cross to the device."""
    import torch

    if runs.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=runs.device)
    lens = runs[:, 1] - runs[:, 0]
    before = torch.cumsum(lens, 0) - lens
    offs = torch.repeat_interleave(runs[:, 0] - before, lens)
    return torch.arange(offs.shape[0], dtype=torch.int64, device=runs.device) + offs


# -- CPU kernels over Z-order runs (numba) ----------------------------------------------------
#
# The map keeps its points (and each pyramid level's cells) in Z-order, so a view is a few
# contiguous runs of positions. These kernels bin those runs in place: no gather of the
# visible points into new arrays, no dataframe, one pass. Same pixel mapping as above (and as
# Datashader): float64 arithmetic, truncation, the upper edge in the last pixel, points
# outside the closed range (and NaN) dropped. Compiled on first use and cached on disk.

_NUMBA = {}


def _kernels():
    """The compiled kernels (numba is imported on first use only)."""
    if _NUMBA:
        return _NUMBA
    import numba

    # The inlined helpers are module globals, not closure variables: numba keys a cached
    # function by the pickled contents of its closure, which differ in every process, so a
    # kernel that closed over a helper was compiled again by each new process.
    global _pixel, _has_neighbour, _over

    @numba.njit(inline="always")
    def _pixel(x, y, x0, x1, y0, y1, sx, tx, sy, ty, width, height):
        if not (x >= x0 and x <= x1 and y >= y0 and y <= y1):
            return -1
        if x == x1:
            xi = width - 1
        else:
            xi = min(int(x * sx + tx), width - 1)
        if y == y1:
            yi = height - 1
        else:
            yi = min(int(y * sy + ty), height - 1)
        return yi * width + xi

    @numba.njit(cache=True, nogil=True)
    def bin_runs(xs, ys, runs, kind, weights, codes, lut, mask, geom, width, height, out):
        # kind 0: out[p, 0] += 1;  1: out[p, :] += weights[i, :];  2: out[p, :] +=
        # lut[codes[i], :];  3: out[p] += (weights[i, 0], 1) for finite weights[i, 0] (mean);
        # 4: out[p, codes[i]] += 1 (count per category)
        x0, x1, y0, y1, sx, tx, sy, ty = geom[0], geom[1], geom[2], geom[3], geom[4], \
            geom[5], geom[6], geom[7]
        use_m = mask.shape[0] > 0
        c = out.shape[1]
        hits = 0
        for r in range(runs.shape[0]):
            for i in range(runs[r, 0], runs[r, 1]):
                if use_m and not mask[i]:
                    continue
                p = _pixel(np.float64(xs[i]), np.float64(ys[i]), x0, x1, y0, y1, sx, tx, sy,
                           ty, width, height)
                if p < 0:
                    continue
                hits += 1
                if kind == 0:
                    out[p, 0] += 1.0
                elif kind == 1:
                    for j in range(c):
                        out[p, j] += weights[i, j]
                elif kind == 2:
                    k = codes[i]
                    for j in range(c):
                        out[p, j] += lut[k, j]
                elif kind == 4:
                    out[p, codes[i]] += 1
                else:
                    v = weights[i, 0]
                    if np.isfinite(v):
                        out[p, 0] += v
                        out[p, 1] += 1.0
        return hits

    @numba.njit(cache=True, nogil=True)
    def bin_cells(xs, ys, runs, kind, cnt, wsum, wnum, offs, pcat, pn, lut, geom, width,
                  height, out):
        # pyramid cells at positions ``runs`` of their (memory-mapped) level arrays, weights
        # read in place: kind 0: out[p, 0] += cnt[i];  1: out[p] += (wsum[i], wnum[i]) (mean);
        # 2: out[p, :] += pn[j] * lut[pcat[j], :] over the cell's (category, count) pairs j in
        # offs[i] .. offs[i + 1]
        x0, x1, y0, y1, sx, tx, sy, ty = geom[0], geom[1], geom[2], geom[3], geom[4], \
            geom[5], geom[6], geom[7]
        c = out.shape[1]
        hits = 0
        for r in range(runs.shape[0]):
            for i in range(runs[r, 0], runs[r, 1]):
                p = _pixel(np.float64(xs[i]), np.float64(ys[i]), x0, x1, y0, y1, sx, tx, sy,
                           ty, width, height)
                if p < 0:
                    continue
                hits += 1
                if kind == 0:
                    out[p, 0] += np.float64(cnt[i])
                elif kind == 1:
                    out[p, 0] += wsum[i]
                    out[p, 1] += wnum[i]
                else:
                    for j in range(offs[i], offs[i + 1]):
                        k = pcat[j]
                        w = np.float64(pn[j])
                        for h in range(c):
                            out[p, h] += w * lut[k, h]
        return hits

    @numba.njit(inline="always")
    def _has_neighbour(img, y, x, r):
        # another pixel with alpha within the (2r+1)^2 window around (y, x)
        m, n = img.shape
        for i in range(max(0, y - r), min(y + r + 1, m)):
            for j in range(max(0, x - r), min(x + r + 1, n)):
                if (i != y or j != x) and (img[i, j] >> 24) & 255:
                    return True
        return False

    @numba.njit(cache=True, nogil=True)
    def neighbour_share(img, r):
        # Datashader's dynspread density of an RGBA uint32 image: of the pixels with alpha,
        # the share with another such pixel within the (2r+1)^2 window; stops scanning a
        # window at the first neighbour (Datashader scans all of it: same answer).
        m, n = img.shape
        cnt = 0
        has = 0
        for y in range(m):
            for x in range(n):
                if not (img[y, x] >> 24) & 255:
                    continue
                cnt += 1
                if _has_neighbour(img, y, x, r):
                    has += 1
        return has / cnt if cnt else np.inf

    @numba.njit(cache=True, nogil=True)
    def mix_pixels(acc, fill, img):
        # acc (H*W, 4): count and count-weighted r, g, b sums. Non-empty pixels get
        # r, g, b = sum / count (truncated, as astype(uint8)) and alpha 0 in img (H*W,)
        # uint32 RGBA; empty ones get ``fill``. Returns (their indices, rounded counts).
        n = acc.shape[0]
        nz = np.empty(n, np.int64)
        cnt = np.empty(n, np.int64)
        k = 0
        for p in range(n):
            t = acc[p, 0]
            if t > 0:
                r = np.uint32(int(acc[p, 1] / t) & 255)
                g = np.uint32(int(acc[p, 2] / t) & 255)
                b = np.uint32(int(acc[p, 3] / t) & 255)
                img[p] = r | (g << np.uint32(8)) | (b << np.uint32(16))
                nz[k] = p
                cnt[k] = int(np.rint(t))
                k += 1
            else:
                img[p] = fill
        return nz[:k].copy(), cnt[:k].copy()

    @numba.njit(cache=True, nogil=True)
    def mean_of_sums(acc, out):
        # acc (H*W, 2): sums and counts of finite values per pixel -> out (H*W,) their mean,
        # NaN where the count is 0
        for p in range(acc.shape[0]):
            c = acc[p, 1]
            out[p] = acc[p, 0] / c if c > 0 else np.nan

    @numba.njit(cache=True, nogil=True)
    def shade_means(flat, lo, hi, xs, cols, slopes, alpha, img):
        # flat (H*W,) means, NaN where empty -> img (H*W,) uint32 RGBA: the mean clipped to
        # [lo, hi], minus lo, coloured by np.interp over (xs, cols) (its arithmetic: slope *
        # (t - xs[j]) + cols[j], cols[-1] from the last x on), truncated to uint8; returns the
        # indices of the pixels drawn
        n = flat.shape[0]
        m = xs.shape[0]
        nz = np.empty(n, np.int64)
        k = 0
        a = np.uint32(alpha) << np.uint32(24)
        for p in range(n):
            t = flat[p]
            if t != t:
                img[p] = 0
                continue
            if t < lo:
                t = lo
            elif t > hi:
                t = hi
            t = t - lo
            px = np.uint32(0)
            if t != t:
                px = np.uint32(0)
            elif t < xs[0]:
                px = np.uint32(255) | (np.uint32(255) << np.uint32(8)) | (np.uint32(255) << np.uint32(16))
            elif t >= xs[m - 1]:
                for ch in range(3):
                    px |= np.uint32(int(cols[m - 1, ch]) & 255) << np.uint32(8 * ch)
            else:
                # xs is evenly spaced: guess the interval, then step to the one with
                # xs[j] <= t < xs[j + 1] (what a binary search finds)
                j = min(max(int(t * (m - 1) / xs[m - 1]), 0), m - 2)
                while j > 0 and xs[j] > t:
                    j -= 1
                while j < m - 2 and xs[j + 1] <= t:
                    j += 1
                dx = t - xs[j]
                for ch in range(3):
                    v = slopes[j, ch] * dx + cols[j, ch]
                    px |= np.uint32(int(v) & 255) << np.uint32(8 * ch)
            img[p] = px | a
            nz[k] = p
            k += 1
        return nz[:k].copy()

    @numba.njit(cache=True, nogil=True)
    def nonzero_counts(flat):
        # indices of the non-zero entries of a 1-D array of whole counts, and the counts
        m = 0
        for p in range(flat.shape[0]):
            if flat[p] != 0:
                m += 1
        nz = np.empty(m, np.int64)
        cnt = np.empty(m, np.int64)
        k = 0
        for p in range(flat.shape[0]):
            if flat[p] != 0:
                nz[k] = p
                cnt[k] = np.int64(flat[p])
                k += 1
        return nz, cnt

    @numba.njit(cache=True, nogil=True)
    def spreads(img, nz, r, threshold):
        # Whether neighbour_share(img, r) > threshold, visiting only the non-empty pixels
        # ``nz`` (flat indices, every pixel with alpha) and stopping once the answer is known.
        m, n = img.shape
        total = nz.shape[0]
        if total == 0:
            return True  # Datashader's density of an empty image is inf
        need = threshold * total
        has = 0
        for k in range(total):
            y = nz[k] // n
            x = nz[k] - y * n
            if _has_neighbour(img, y, x, r):
                has += 1
                if has > need:
                    return True
            elif has + (total - k - 1) <= need:
                return False
        return has > need

    @numba.njit(inline="always")
    def _over(src, dst):
        # Datashader's composite ``over`` of two RGBA uint32 pixels, same float64 steps
        sr, sg, sb, sa = (src & 255) / 255, ((src >> 8) & 255) / 255, \
            ((src >> 16) & 255) / 255, ((src >> 24) & 255) / 255
        dr, dg, db, da = (dst & 255) / 255, ((dst >> 8) & 255) / 255, \
            ((dst >> 16) & 255) / 255, ((dst >> 24) & 255) / 255
        factor = 1 - sa
        a = sa + da * factor
        if a == 0:
            return np.uint32(0)
        r = (sr * sa + dr * da * factor) / a
        g = (sg * sa + dg * da * factor) / a
        b = (sb * sa + db * da * factor) / a
        r2 = min(255, np.uint32(r * 255))
        g2 = min(255, np.uint32(g * 255))
        b2 = min(255, np.uint32(b * 255))
        a2 = min(255, np.uint32(a * 255))
        return np.uint32((a2 << 24) | (b2 << 16) | (g2 << 8) | r2)

    globals()["_over"] = _over

    @numba.njit(cache=True, nogil=True)
    def spread_over(img, mask, out):
        # Datashader's ``spread`` kernel of an Image (``over``), compiled once and cached on
        # disk (Datashader builds its kernel and compositing ufuncs in every new process,
        # seconds that a notebook kernel's first sparse frame would wait for).
        m, n = img.shape
        w = mask.shape[0]
        for y in range(m):
            for x in range(n):
                el = img[y, x]
                if (el >> 24) & 255:
                    for i in range(w):
                        for j in range(w):
                            if mask[i, j]:
                                d = out[i + y, j + x]
                                if d == 0:
                                    out[i + y, j + x] = el
                                else:
                                    out[i + y, j + x] = _over(el, d)

    _NUMBA["spread_over"] = spread_over
    _NUMBA["spreads"] = spreads
    _NUMBA["nonzero_counts"] = nonzero_counts
    _NUMBA["bin_runs"] = bin_runs
    _NUMBA["bin_cells"] = bin_cells
    _NUMBA["neighbour_share"] = neighbour_share
    _NUMBA["mix_pixels"] = mix_pixels
    _NUMBA["mean_of_sums"] = mean_of_sums
    _NUMBA["shade_means"] = shade_means
    return _NUMBA


def _geom(x_range, y_range, width, height) -> np.ndarray:
    (x0, x1), (y0, y1) = x_range, y_range
    sx, tx = _mapping(x0, x1, width)
    sy, ty = _mapping(y0, y1, height)
    return np.array([x0, x1, y0, y1, sx, tx, sy, ty], np.float64)


_NO_MASK = np.zeros(0, np.bool_)


def _int_codes(codes):
    """Category codes as they are when they are integers (a memory-mapped uint8 column of a
    billion points is not converted per frame; numba compiles one loop per dtype)."""
    c = np.asarray(codes)
    return c if c.dtype.kind in "iu" else c.astype(np.int64)


def bin_runs(xs, ys, runs, *, x_range, y_range, width, height, weights=None, codes=None,
             lut=None, n_codes=0, mean_of=None, mask=None):
    """Bin the items at positions ``runs`` (array (r, 2) of [start, end)) of ``xs, ys``.

    One of: nothing (count per pixel: out (H*W, 1)); ``weights`` (n, c) float64 (their sum
    per pixel: out (H*W, c)); ``codes`` (n,) ints with ``lut`` (C, c) float64 (sum of
    ``lut[code]``: out (H*W, c)); ``codes`` with ``n_codes`` = C and no lut (count per code:
    out (H*W, C)); ``mean_of`` (n,) float64 (out (H*W, 2): sum and count of
    the finite values). ``mask`` (n,) bool: only items where it is True. Returns (out, hits),
    hits = items that landed in the range. Row 0 of the image is ``y_range[0]``.
    """
    kernel = _kernels()["bin_runs"]
    runs = np.ascontiguousarray(runs, np.int64).reshape(-1, 2)
    geom = _geom(x_range, y_range, width, height)
    m = _NO_MASK if mask is None else mask
    none_w, none_c, none_l = np.zeros((0, 1)), np.zeros(0, np.int64), np.zeros((0, 1))
    if mean_of is not None:
        kind, ch, w = 3, 2, np.asarray(mean_of, np.float64).reshape(-1, 1)
        c, lt = none_c, none_l
    elif codes is not None and lut is None:
        kind, ch, w, c, lt = 4, int(n_codes), none_w, _int_codes(codes), none_l
    elif codes is not None:
        kind, ch, w, c, lt = 2, lut.shape[1], none_w, _int_codes(codes), lut
    elif weights is not None:
        kind, ch, w, c, lt = 1, weights.shape[1], weights, none_c, none_l
    else:
        kind, ch, w, c, lt = 0, 1, none_w, none_c, none_l
    # counts per category (kind 4) in uint32, as Datashader's count_cat: half the memory of
    # float64 for an (H*W, C) array, and no conversion afterwards
    out = np.zeros((width * height, ch), np.uint32 if kind == 4 else np.float64)
    hits = kernel(xs, ys, runs, kind, w, c, lt, m, geom, width, height, out)
    return out, int(hits)


def bin_cells(xs, ys, runs, *, x_range, y_range, width, height, cnt=None, sums=None,
              pairs=None, lut=None):
    """Bin pyramid cells at positions ``runs`` of a level's arrays (memory-mapped ones read in
    place): one of ``cnt`` (n,) (their counts: out (H*W, 1)), ``sums`` = (sum, count) (n,)
    each (a mean: out (H*W, 2)), or ``pairs`` = (offsets (n + 1,), category (p,), count
    (p,)) with ``lut`` (C, c) float64 (sum of count * lut[category] over each cell's pairs:
    out (H*W, c)). The same sums :func:`bin_runs` makes from the level's whole weight rows.
    Returns (out, hits)."""
    kernel = _kernels()["bin_cells"]
    runs = np.ascontiguousarray(runs, np.int64).reshape(-1, 2)
    geom = _geom(x_range, y_range, width, height)
    f0, i0 = np.zeros(0), np.zeros(0, np.int64)
    if cnt is not None:
        kind, ch, args = 0, 1, (cnt, f0, f0, i0, i0, f0, np.zeros((0, 1)))
    elif sums is not None:
        kind, ch, args = 1, 2, (f0, sums[0], sums[1], i0, i0, f0, np.zeros((0, 1)))
    else:
        offs, pcat, pn = pairs
        kind, ch, args = 2, lut.shape[1], (f0, f0, f0, offs, pcat, pn,
                                           np.ascontiguousarray(lut, np.float64))
    out = np.zeros((width * height, ch), np.float64)
    hits = kernel(xs, ys, runs, kind, *args, geom, width, height, out)
    return out, int(hits)


def neighbour_share(img: np.ndarray, radius: int) -> float:
    """Of the pixels of an RGBA uint32 image (H, W) with non-zero alpha, the share that have
    another one within ``radius`` pixels (a square window); inf for an empty image. This is
    the density Datashader's ``dynspread`` tests against its threshold."""
    return float(_kernels()["neighbour_share"](np.ascontiguousarray(img, np.uint32), int(radius)))


def mean_of_sums(acc: np.ndarray) -> np.ndarray:
    """Per-pixel means of (H*W, 2) accumulators (sum, count): float64 (H*W,), NaN where the
    count is 0 (``sum / count`` as numpy divides)."""
    out = np.empty(acc.shape[0], np.float64)
    _kernels()["mean_of_sums"](np.ascontiguousarray(acc, np.float64), out)
    return out


def shade_means(flat: np.ndarray, lo: float, hi: float, xs, cols, slopes, alpha: int):
    """RGBA uint32 (H*W,) of per-pixel means ``flat`` (NaN where empty), each clipped to
    [lo, hi], less ``lo``, coloured as ``np.interp(t, xs, cols[:, ch])`` per channel (with
    ``slopes`` (m - 1, 3) of the colour map) and truncated to uint8, with ``alpha``; and the
    flat indices of the pixels drawn. Byte for byte :func:`bigembed.view.shade.shade_mean`'s
    numpy arithmetic, in one pass."""
    img = np.empty(flat.shape[0], np.uint32)
    nz = _kernels()["shade_means"](np.ascontiguousarray(flat, np.float64), float(lo), float(hi),
                                   np.ascontiguousarray(xs, np.float64),
                                   np.ascontiguousarray(cols, np.float64),
                                   np.ascontiguousarray(slopes, np.float64), int(alpha), img)
    return img, nz


def mix_pixels(acc: np.ndarray, fill: int):
    """Colours of a categorical frame from (H*W, 4) accumulators (count, count-weighted r, g,
    b sums): returns (img (H*W,) uint32 RGBA with alpha 0 where non-empty and ``fill`` where
    empty, indices of the non-empty pixels, their counts rounded to int64)."""
    img = np.empty(acc.shape[0], np.uint32)
    nz, cnt = _kernels()["mix_pixels"](np.ascontiguousarray(acc, np.float64), np.uint32(fill),
                                       img)
    return img, nz, cnt


def nonzero_counts(flat: np.ndarray):
    """(indices (m,) int64, values (m,) int64) of the non-zero entries of a 1-D array of whole
    counts (any integer or float dtype)."""
    return _kernels()["nonzero_counts"](np.ascontiguousarray(flat))


def spreads(img: np.ndarray, nz: np.ndarray, radius: int, threshold: float) -> bool:
    """``neighbour_share(img, radius) > threshold``, from the flat indices ``nz`` of exactly
    the pixels with alpha, visiting those only and stopping once the answer is known."""
    return bool(_kernels()["spreads"](np.ascontiguousarray(img, np.uint32),
                                      np.ascontiguousarray(nz, np.int64), int(radius),
                                      float(threshold)))


def circle_mask(px: int) -> np.ndarray:
    """Datashader's circular spread mask: bool (2 px + 1, 2 px + 1)."""
    x = np.arange(-px, px + 1, dtype="i4")
    return np.sqrt(x ** 2 + x[:, None] ** 2) <= px + 0.5


def spread_image(img: np.ndarray, px: int) -> np.ndarray:
    """Datashader's ``tf.spread(img, px, shape="circle")`` of an RGBA uint32 image (H, W):
    every pixel with alpha is composited ``over`` its circle of radius ``px``."""
    img = np.ascontiguousarray(img, np.uint32)
    if px <= 0:
        return img
    mask = circle_mask(int(px))
    m, n = img.shape
    buf = np.zeros((m + 2 * px, n + 2 * px), np.uint32)
    _kernels()["spread_over"](img, mask, buf)
    return buf[px:-px, px:-px].copy()
