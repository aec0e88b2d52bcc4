"""The map's pixel spreading (a cached numba kernel) against Datashader's ``tf.spread``.

Datashader builds its spread kernel and compositing ufuncs in every new process (seconds a
notebook kernel's first sparse frame would wait for), so the view spreads with its own
kernel; it must give Datashader's image bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("px", [1, 2, 3])
def test_spread_matches_datashader(px):
    import datashader.transfer_functions as tf

    from bigembed.kernels.raster import spread_image

    rng = np.random.default_rng(px)
    h, w = 61, 83
    img = np.zeros((h, w), np.uint32)
    # sparse pixels of random colours and alphas, some touching (overlaps composite), edges,
    # a fully transparent coloured pixel (skipped) and opaque ones
    idx = rng.choice(h * w, 300, replace=False)
    col = rng.integers(0, 2**24, 300, dtype=np.uint32)
    alpha = rng.integers(0, 256, 300, dtype=np.uint32)
    alpha[:20] = 255
    alpha[20:25] = 0
    img.flat[idx] = col | (alpha << 24)
    img[0, 0] = img[-1, -1] = img[0, -1] = np.uint32(0xFF00FF00)
    img[10, 10:13] = [0x80FF0000, 0x800000FF, 0x8000FF00]
    ref = tf.spread(tf.Image(img, coords={"y": np.arange(h), "x": np.arange(w)},
                             dims=("y", "x")), px, shape="circle")
    got = spread_image(img, px)
    assert got.dtype == np.uint32 and got.shape == img.shape
    np.testing.assert_array_equal(got, np.asarray(ref.data))


def test_spread_of_nothing_is_nothing():
    from bigembed.kernels.raster import spread_image

    img = np.zeros((5, 7), np.uint32)
    assert not spread_image(img, 2).any()
    one = img.copy()
    one[2, 3] = 0xFF0000FF
    assert (spread_image(one, 0) == one).all()
    assert (spread_image(one, 1) != 0).sum() == 9  # the radius-1 circle is a 3 x 3 square
