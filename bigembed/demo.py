"""The built-in demo: build a dataset, lay it out, render it, look up neighbours."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(out="demo-data", *, n: int = 20000, dim: int = 64, seed: int = 0,
             say=print) -> dict:
    """Run every stage on a small synthetic dataset under ``out``; returns what it made."""
    from .dataset import Dataset
    from .neighbors import neighbors
    from .reduce import reduce
    from .render import render
    from .synth import synth

    out = Path(out)
    ds_path = out / "dataset"
    if (ds_path / "manifest.json").exists():
        say(f"[1/4] dataset {ds_path} exists; reusing it")
    else:
        r = synth(ds_path, n=n, dim=dim, clusters=12, error_rate=0.08, seed=seed)
        say(f"[1/4] synthesised {r.rows} x {r.dim} vectors in {r.seconds:.1f}s -> {ds_path}")
    ds = Dataset.open(ds_path)
    lay = reduce(ds, method="pca", seed=seed)
    say(f"[2/4] layout {lay.name} ({'cached' if lay.cached else f'{lay.seconds:.1f}s'})")
    png = render(ds, out=out / "view.png", color_by="label")
    say(f"[3/4] rendered {png}")
    nb = neighbors(ds, id=0, k=5)
    say(f"[4/4] 5 nearest neighbours of id 0 (label {nb.query.get('label')}):")
    for item in nb.neighbors:
        say(f"      id {item['id']:>6}  distance {item['distance']:.3f}  label {item.get('label')}")
    return {"dataset": str(ds_path), "layout": lay.name, "png": str(png),
            "neighbors": nb.to_json()}
