"""The built-in demo: a real model's activations, laid out, indexed, rendered and served.

A small CNN is trained on scikit-learn's handwritten digits (shipped with scikit-learn, no
download), augmented to ``n`` instances; the activations of two layers become two spaces.
Each space gets a layout (UMAP for the penultimate layer, PCA for the convolutional one) with
its quality measured, and a FAISS index; a PNG is rendered and a misclassified instance's true
neighbours are looked up. ``fc1`` is also captured at two checkpoints of the CNN's training
(after the first epoch and at the end: spaces ``fc1@epoch1`` and ``fc1@final``, each with its
own predictions) and the two are compared, with the early layout aligned to the final one. ``bigembed demo`` then serves the explorer over it.
Every step is content-keyed or resumable, so running the demo again starts serving at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(out="demo-data", *, n: int = 20000, seed: int = 0, say=log.info) -> dict:
    """Run every stage on the digits demo under ``out``; returns what it made."""
    import numpy as np

    from .compare import compare
    from .dataset.reader import Dataset
    from .extract.run import extract
    from .models.digits import DigitsData, add_digit_images, build_digits_dataset, checkpoints
    from .reduce.run import reduce
    from .search.index import build_index
    from .search.lookup import neighbors
    from .view.render import render

    out = Path(out)
    ds_path = out / "dataset"
    r = build_digits_dataset(ds_path, n=n, seed=seed)
    how = "already extracted" if r.cached else f"{r.items_per_s:,.0f} images/s on {r.device}"
    say(f"[1/5] digits CNN activations of {r.rows} images, spaces {list(r.spaces)} "
        f"({how}) -> {ds_path}")
    if add_digit_images(ds_path):  # each digit as a small PNG: the map's hover shows it
        say("      added an image column: hovering a point shows its digit")
    ck = checkpoints(seed=seed)
    rc = extract(model="digits", data=DigitsData(n, seed=seed), out=ds_path, layers=["fc1"],
                 weights=list(ck.values()), tag=list(ck), model_seed=seed)
    say(f"      fc1 at two checkpoints of the training: spaces {list(rc.spaces)}"
        f"{' (already extracted)' if rc.cached else ''}")
    ds = Dataset.open(ds_path)
    spaces = list(r.spaces)
    made = {}
    for sp in spaces:
        method = "umap" if sp == spaces[-1] else "pca"
        lay = reduce(ds, space=sp, method=method, seed=seed)
        q = (lay.quality or {}).get("knn_preservation")
        made[sp] = lay.name
        say(f"[2/5] layout {lay.name}: {method} "
            f"({'cached' if lay.cached else f'{lay.seconds:.1f}s'}"
            f"{f', kNN preservation {q:.2f}' if q is not None else ''})")
    early, final = rc.spaces
    # Both checkpoints in the final layer's coordinates: a point moves on the map from one to
    # the other only where its neighbourhood changed (serve --compare fc1@epoch1,fc1@final).
    for sp, ref in ((final, made[spaces[-1]]), (early, None)):
        ref = ref or made[final]
        lay = reduce(ds, space=sp, method="umap", seed=seed, align_to=ref)
        made[sp] = lay.name
        say(f"[2/5] layout {lay.name}: umap aligned to {ref} "
            f"({'cached' if lay.cached else f'{lay.seconds:.1f}s'})")
    from .analysis import cluster

    cl = cluster(ds_path, layout=made[spaces[-1]])  # the map opens with its clusters named
    say(f"[2/5] {cl.n_clusters} clusters of {made[spaces[-1]]}: "
        + ", ".join(cl.table.sort_values("size", ascending=False)["name"].head(10)))
    for sp in spaces:
        ix = build_index(ds, space=sp)
        say(f"[3/5] index {ix.name}: {ix.kind}, recall@10 {ix.recall_at_10:.3f} "
            f"({'cached' if ix.cached else f'{ix.seconds:.1f}s'})")
    ds = Dataset.open(ds_path)
    png = render(ds, out=out / "view.png", layout=made[spaces[-1]], color_by="label").path
    say(f"[4/5] rendered {png} (coloured by label)")
    meta = ds.meta
    wrong = np.flatnonzero(~meta["correct"].to_numpy().astype(bool)) if "correct" in meta else []
    qid = int(wrong[0]) if len(wrong) else 0
    nb = neighbors(ds, space=spaces[-1], id=qid, k=5)
    q = nb.query
    say(f"[5/5] id {qid} (label {q.get('label')}, predicted {q.get('prediction')}): "
        f"5 nearest neighbours in {spaces[-1]!r}:")
    for item in nb.neighbors:
        say(f"      id {item['id']:>6}  distance {item['distance']:.3f}  label {item.get('label')}"
            f"  predicted {item.get('prediction')}")
    ds = Dataset.open(ds_path)
    cmp = compare(ds, a=early, b=final, k=15)
    flips = cmp.summary.get("prediction_flips", {})
    say(f"      compare {early} -> {final}: mean neighbourhood overlap {cmp.mean_overlap:.2f}; "
        + ", ".join(f"{k} {v['n']}" for k, v in flips.items())
        + f" (bigembed compare {ds_path} --a {early} --b {final}; on the map: bigembed serve "
          f"{ds_path} --compare {early},{final})")
    try:  # the first UMAP of the user's own then starts at once (serial and parallel)
        from .reduce.backends import warm_numba_cache

        warm_numba_cache()
    except ImportError as e:  # umap-learn not installed: nothing to warm
        log.info("numba cache not warmed: %s", e)
    result = {"dataset": str(ds_path), "layouts": made, "png": str(png),
              "clusters": cl.artifact,
              "neighbors": nb.to_json(), "comparison": cmp.artifact}
    return result
