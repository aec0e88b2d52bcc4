"""Compiling the map's kernels ahead of the first user (``make install`` calls this)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def warm_map_cache() -> None:
    """Compile the map's kernels into numba's on-disk cache (``make install`` calls this):
    a tiny layout-only dataset, its map built in two windows, frames of it by density, label
    and a mean, exact and from the pyramid, over the memory-mapped arrays (the signatures a
    server opening a billion-point map uses), so no first frame waits on the compiler."""
    import tempfile

    from ..ingest.synth import synth_layout
    from .frames import FrameRenderer
    from .store import BYTES_PER_POINT, build_map

    with tempfile.TemporaryDirectory(prefix="bigembed-warm-") as tmp:
        path = Path(tmp) / "warm"
        synth_layout(path, n=4000, clusters=4, progress=False)
        build_map(path, "synth", memory=4000 * BYTES_PER_POINT // 2, chunk_rows=1500,
                  progress=False)
        r = FrameRenderer(path, "synth")
        r.set_column("warm:mean", np.linspace(0, 1, r.n))
        for color in (None, "label", "warm:mean"):
            for mode in ("exact", "pyramid"):
                r.render(width=64, height=64, color_by=color, mode=mode)
        r.render(width=64, height=64, color_by="label", mode="exact", where={"label": ["1"]})
        r.pick(0.0, 0.0, 1.0)
        r.neighbors_2d(0, 5)
