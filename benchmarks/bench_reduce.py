"""Benchmark the reduce stage against the plain libraries a user would otherwise call.

    .venv/bin/python -m benchmarks.bench_reduce [--n 100000] [--dim 64] [--tsne-n 20000]
        [--tsne-alone-n 100000] [--scale-n 1000000 --scale-dim 50] [--torch-n 20000]

In one run, on the same synthetic data (``bigembed.ingest.synth``):

- UMAP: ``bigembed.reduce(method="umap")`` end to end (kNN graph from the neighbour
  stage (tuned IVF past 2.5e11 MACs) + PCA init + umap-learn SGD, quality included) against ``umap.UMAP()`` with its
  defaults (NNDescent + spectral init), both after a JIT warm-up on small data; quality of both
  by the same measures (kNN preservation k=15 over all points, trustworthiness/continuity on a
  2,000-row sample).
- t-SNE: ``reduce(method="tsne")`` against ``openTSNE.TSNE()`` defaults.
- scale (``--tsne-alone-n``, ``--scale-n``): bigembed alone where the plain library would take
  far longer than the issue's absolute targets (t-SNE 100k in 4 min, UMAP 1M x 50 in 20 min).
- numba cache: ``bigembed reduce --method umap`` in a fresh process with an empty cache dir,
  then again in a second process (the JIT loaded from disk).

Writes ``benchmarks/results/reduce.json`` (via :mod:`bigembed.bench.harness`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bigembed.bench.harness import measure, results_doc, write_results

RESULTS = Path(__file__).parent / "results" / "reduce.json"


def _quality(ds, space, xy):
    from bigembed.reduce.quality import layout_quality
    from bigembed.search.graph import knn_graph

    sp = ds.space(space)
    g = knn_graph(ds, space=space, k=15)
    _, q = layout_quality(g.indices, xy, sp.vectors, k=15, sample=2000, seed=0)
    return q


def _record(ds, name):
    from bigembed.dataset.reader import Dataset

    return Dataset.open(ds.path).manifest["layouts"][name]


def _ours(ds, *, note, **kw):
    """``bigembed.reduce(ds, force=True, **kw)`` timed once: seconds, stage timings, fit, the
    stored quality and the quality measured here the same way as for the plain libraries."""
    from bigembed.dataset.layouts import load_layout
    from bigembed.reduce.run import reduce

    res = {}

    def run():
        res["r"] = reduce(ds.path, force=True, **kw)

    t = measure(run, repeat=1, warmup=0)
    rec = _record(ds, res["r"].name)
    xy = load_layout(ds.__class__.open(ds.path), name=res["r"].name).xy
    out = {"seconds": t.median, "timing": t, "backend": res["r"].backend,
           "stage_seconds": rec["timings"], "fit": rec.get("fit"),
           "stored_quality": rec.get("quality"), "quality": _quality(ds, ds.space().name, xy)}
    print(f"[{note}] bigembed {kw}: {t.median:.1f}s {rec['timings']} {out['quality']}",
          flush=True)
    return out


def _plain(ds, *, note, name, fit):
    """The plain library's ``fit()`` (-> (N, 2)) timed once, its quality measured as ours."""
    res = {}

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["xy"] = np.asarray(fit())

    t = measure(run, repeat=1, warmup=0)
    out = {"seconds": t.median, "timing": t,
           "quality": _quality(ds, ds.space().name, res["xy"])}
    print(f"[{note}] {name}: {t.median:.1f}s {out['quality']}", flush=True)
    return out


def bench_umap(ds, *, note):
    import umap

    x = np.asarray(ds.space().vectors, dtype=np.float32)
    out = {"bigembed": _ours(ds, note=note, method="umap"),
           "umap_learn_defaults": _plain(ds, note=note, name="umap-learn defaults",
                                         fit=lambda: umap.UMAP().fit_transform(x))}
    a, b = out["bigembed"], out["umap_learn_defaults"]
    out["speedup"] = round(b["seconds"] / a["seconds"], 3)
    out["quality_delta"] = {m: (None if a["quality"][m] is None or b["quality"][m] is None
                                else round(a["quality"][m] - b["quality"][m], 5))
                            for m in ("knn_preservation", "trustworthiness", "continuity")}
    return out


def bench_tsne(ds, *, note):
    import openTSNE

    x = np.asarray(ds.space().vectors, dtype=np.float32)
    out = {"bigembed": _ours(ds, note=note, method="tsne"),
           "opentsne_defaults": _plain(ds, note=note, name="openTSNE defaults",
                                       fit=lambda: openTSNE.TSNE(n_jobs=-1,
                                                                 random_state=0).fit(x))}
    out["speedup"] = round(out["opentsne_defaults"]["seconds"] / out["bigembed"]["seconds"], 3)
    return out


def bench_scale(ds, *, method, note):
    """bigembed alone at a size the plain libraries take too long for (the issue's absolute
    targets: UMAP of 1M x 50 within 20 minutes, t-SNE of 100k within 4 minutes)."""
    return _ours(ds, note=note, method=method)


def bench_torch(ds, *, note):
    """UMAP by the torch backend (CUDA when present, else the CPU device) against the cpu
    backend (umap-learn's SGD) on the same kNN graph: time and quality side by side."""
    from bigembed.registry import cuda_check

    out = {"device": "cpu" if cuda_check() else "cuda"}
    for be in ("torch", "cpu"):
        out[be] = _ours(ds, note=note, method="umap", backend=be)
    out["fit_speedup_torch_over_cpu"] = round(out["cpu"]["stage_seconds"]["fit"]
                                              / out["torch"]["stage_seconds"]["fit"], 3)
    out["quality_delta_torch_minus_cpu"] = {
        m: round(out["torch"]["quality"][m] - out["cpu"]["quality"][m], 5)
        for m in ("knn_preservation", "trustworthiness", "continuity")}
    return out


def _layout_inputs(ds, k=15, keep=None):
    """(x, indices, distances, init) the reduce stage hands a layout backend: the neighbour
    stage's kNN graph (self excluded) and the PCA initial layout. ``keep``: an .npz file
    where they are kept and read back by a later run of the same data (the kNN graph of 1M
    rows is minutes; it is not what is timed)."""
    from bigembed.reduce.run import _knn_full, initial_layout

    sp = ds.space()
    x = np.asarray(sp.vectors, dtype=np.float32)
    if keep is not None and Path(keep).is_file():
        d = np.load(keep)
        if d["x"].shape == x.shape and np.array_equal(d["x"][:1000], x[:1000]):
            print(f"kNN graph and init read from {keep}", flush=True)
            return x, d["ind"], d["dist"], d["init"]
    ind, dist = _knn_full(ds, sp, k - 1, "l2", False)
    init = initial_layout(x, seed=0)
    if keep is not None:
        np.savez(keep, x=x, ind=ind, dist=dist, init=init)
    return x, ind, dist, init


def _layout_quality(ind, xy, x):
    from bigembed.reduce.quality import layout_quality

    _, q = layout_quality(ind, xy, x, k=ind.shape[1], sample=2000, seed=0)
    return q


def bench_optimiser(ds, *, rounds=2, note="", keep=None):
    """The layout stage alone (fuzzy graph + SGD) on the same kNN graph and initial layout:
    bigembed's optimiser (backend ``numba``) against umap-learn's (backend ``cpu``: umap-learn
    with the graph precomputed), interleaved (ours, theirs, ours, theirs) so load on a shared
    machine hits both alike; both warm (compiled code loaded before timing)."""
    from bigembed.reduce.backends import CpuLayouts, NumbaLayouts, warm_numba_cache

    warm_numba_cache()
    x, ind, dist, init = _layout_inputs(ds, keep=keep)
    backends = {"bigembed": NumbaLayouts(), "umap_learn": CpuLayouts()}
    times = {k: [] for k in backends}
    xy = {}
    for r in range(rounds):
        for name, be in backends.items():
            t = time.perf_counter()
            xy[name] = be.umap(indices=ind, distances=dist, x=x, init=init, n_neighbors=15,
                               min_dist=0.1, n_epochs=None, seed=0, progress=False)
            times[name].append(round(time.perf_counter() - t, 3))
            print(f"[{note}] round {r}: {name} {times[name][-1]:.1f}s", flush=True)
    ratios = [round(b / a, 3) for a, b in zip(times["bigembed"], times["umap_learn"])]
    q = {name: _layout_quality(ind, v, x) for name, v in xy.items()}
    out = {"rows": len(x), "dim": x.shape[1], "seconds": times, "ratios": ratios,
           "speedup_median": float(np.median(ratios)), "quality": q,
           "quality_delta": {m: round(q["bigembed"][m] - q["umap_learn"][m], 5)
                             for m in ("knn_preservation", "trustworthiness", "continuity")
                             if q["bigembed"].get(m) is not None}}
    print(f"[{note}] speedup {ratios} quality delta {out['quality_delta']}", flush=True)
    return out


_COLD = """
import sys, time, numpy as np
t0 = time.perf_counter()
from bigembed.reduce.backends import CpuLayouts, NumbaLayouts
d = np.load(sys.argv[2])
be = NumbaLayouts() if sys.argv[1] == "bigembed" else CpuLayouts()
t = time.perf_counter()
be.umap(indices=d["ind"], distances=d["dist"], x=d["x"], init=d["init"], n_neighbors=15,
        min_dist=0.1, n_epochs=None, seed=0, progress=False)
print(time.perf_counter() - t, time.perf_counter() - t0)
"""


def bench_optimiser_cold(ds, work, *, rounds=1, note=""):
    """The same layout stage in a fresh process with an empty numba cache (compilation
    included), ours and umap-learn's interleaved: seconds of the layout call and of the whole
    process after start-up (imports included)."""
    x, ind, dist, init = _layout_inputs(ds)
    inputs = Path(work) / "layout-inputs.npz"
    np.savez(inputs, x=x, ind=ind, dist=dist, init=init)
    times = {"bigembed": [], "umap_learn": []}
    for r in range(rounds):
        for name in times:
            cache = Path(tempfile.mkdtemp(prefix="bigembed-cold-"))
            env = dict(os.environ, BIGEMBED_CACHE=str(cache), BIGEMBED_NO_PROGRESS="1")
            env.pop("NUMBA_CACHE_DIR", None)
            p = subprocess.run([sys.executable, "-c", _COLD, name, str(inputs)], check=True,
                               env=env, capture_output=True, text=True)
            call, whole = map(float, p.stdout.split()[-2:])
            times[name].append({"layout_s": round(call, 3), "process_s": round(whole, 3)})
            shutil.rmtree(cache, ignore_errors=True)
            print(f"[{note}] cold round {r}: {name} {call:.1f}s (process {whole:.1f}s)",
                  flush=True)
    ratios = [round(b["layout_s"] / a["layout_s"], 3)
              for a, b in zip(times["bigembed"], times["umap_learn"])]
    print(f"[{note}] cold speedup {ratios}", flush=True)
    return {"rows": len(x), "seconds": times, "ratios": ratios,
            "speedup_median": float(np.median(ratios))}


_ATLAS = """
import sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
from embedding_atlas.projection import compute_projection
v = np.load(sys.argv[1])
df = pd.DataFrame({"vec": list(v)})
t1 = time.perf_counter()
out = compute_projection(df, inputs="vec", modality="vector", x="x", y="y", neighbors=None,
                         cache_root=sys.argv[3])
t2 = time.perf_counter()
np.save(sys.argv[2], np.c_[out["x"].to_numpy(), out["y"].to_numpy()].astype(np.float32))
print(t2 - t1, t2 - t0)
"""

_OURS_E2E = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from bigembed.ingest.run import ingest
from bigembed.reduce.run import reduce
from bigembed.dataset.layouts import load_layout
from bigembed.dataset.reader import Dataset
from bigembed.view.frames import FrameRenderer
ingest(sys.argv[1], out=sys.argv[3], progress=False)
r = reduce(sys.argv[3], method="umap", progress=False)
xy = load_layout(Dataset.open(sys.argv[3]), name=r.name).xy
fr = FrameRenderer.from_arrays(xy[:, 0].copy(), xy[:, 1].copy())
(x0, x1), (y0, y1) = fr.default_range()
fr.aggregate(x_range=(x0, x1), y_range=(y0, y1), width=800, height=600)
t2 = time.perf_counter()
np.save(sys.argv[2], xy)
print(t2 - t0, t2 - t0, r.backend)
"""


def bench_atlas_e2e(work, *, n, dim, clusters=50, rounds=1, atlas_python, note=""):
    """Vectors on disk to a first frame: bigembed (ingest the .npy, kNN graph, PCA init, UMAP
    by the default backend, quality, a first 800x600 frame aggregated on the server) against
    Embedding Atlas's ``--vector`` path (``compute_projection(modality="vector")``: NNDescent
    kNN + umap-learn, its defaults; the browser's drawing is not counted for it), each in a
    fresh process with warm compiled caches, interleaved; layout quality of both by the same
    measure (the exact l2 kNN graph, k = 15)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    x = (centres[rng.integers(0, clusters, n)]
         + rng.standard_normal((n, dim)).astype(np.float32))
    vec = Path(work) / "vectors.npy"
    np.save(vec, x)
    times = {"bigembed": [], "embedding_atlas": []}
    xy = {}
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
    for r in range(rounds):
        for name in times:
            out = Path(work) / f"{name}-xy.npy"
            if name == "bigembed":
                ds = Path(work) / f"ds-{r}"
                cmd = [sys.executable, "-c", _OURS_E2E, str(vec), str(out), str(ds)]
            else:
                cmd = [atlas_python, "-c", _ATLAS, str(vec), str(out),
                       tempfile.mkdtemp(prefix="atlas-cache-")]
            t = time.perf_counter()
            p = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
            fields = p.stdout.split()[-3:] if name == "bigembed" else p.stdout.split()[-2:]
            times[name].append({"wall_s": round(wall, 3), "work_s": round(float(fields[0]), 3)})
            xy[name] = np.load(out)
            if name == "bigembed":
                times[name][-1]["backend"] = fields[2]
                shutil.rmtree(ds, ignore_errors=True)
            print(f"[{note}] e2e round {r}: {name} {wall:.1f}s", flush=True)
    from bigembed.search.exact import exact_knn

    sample = np.random.default_rng(1).choice(n, min(n, 5000), replace=False)
    _, ind = exact_knn(x[sample], x, 16, "l2")
    ind = np.stack([row[row != s][:15] for row, s in zip(ind, sample)])
    from bigembed.reduce.quality import low_knn, trustworthiness_continuity

    q = {}
    for name, v in xy.items():
        low = low_knn(v, 15)[sample]
        pres = float(np.mean([len(set(a) & set(b)) / 15 for a, b in zip(ind, low)]))
        tc = trustworthiness_continuity(x, v, k=15, sample=2000, seed=0)
        q[name] = {"knn_preservation_sample": round(pres, 5),
                   "trustworthiness": tc["trustworthiness"], "continuity": tc["continuity"]}
    ratios = [round(b["wall_s"] / a["wall_s"], 3)
              for a, b in zip(times["bigembed"], times["embedding_atlas"])]
    print(f"[{note}] e2e speedup {ratios} quality {q}", flush=True)
    return {"rows": n, "dim": dim, "clusters": clusters, "seconds": times, "ratios": ratios,
            "speedup_median": float(np.median(ratios)), "quality": q}


def bench_numba_cache(ds_path, *, n):
    """Wall time of `bigembed reduce --method umap` in a first and a second process."""
    cache = Path(tempfile.mkdtemp(prefix="bigembed-numba-"))
    env = dict(os.environ, BIGEMBED_CACHE=str(cache), BIGEMBED_NO_PROGRESS="1")
    env.pop("NUMBA_CACHE_DIR", None)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bigembed", "-q", "reduce", str(ds_path),
                        "--method", "umap", "--force"], check=True, env=env,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    files = sum(1 for _ in cache.rglob("*.nbi"))
    shutil.rmtree(cache, ignore_errors=True)
    print(f"numba cache: first process {times[0]:.1f}s, second {times[1]:.1f}s", flush=True)
    return {"rows": n, "first_process_s": round(times[0], 3),
            "second_process_s": round(times[1], 3),
            "saved_s": round(times[0] - times[1], 3), "cached_functions": files}


def main(argv=None):
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000, help="UMAP vs umap-learn (0: skip)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--tsne-n", type=int, default=20_000, help="0: skip t-SNE")
    p.add_argument("--cache-n", type=int, default=5_000, help="0: skip the numba cache run")
    p.add_argument("--scale-n", type=int, default=0,
                   help="also UMAP of this many rows by bigembed alone (0: skip)")
    p.add_argument("--scale-dim", type=int, default=50)
    p.add_argument("--tsne-alone-n", type=int, default=0,
                   help="also t-SNE of this many rows by bigembed alone (0: skip)")
    p.add_argument("--torch-n", type=int, default=0,
                   help="also UMAP by the torch backend vs the cpu backend at this size")
    p.add_argument("--opt-n", default="",
                   help="comma-separated sizes: the layout stage alone, bigembed's optimiser "
                        "vs umap-learn's on the same graph and init, warm and interleaved")
    p.add_argument("--opt-rounds", type=int, default=2)
    p.add_argument("--cold-n", type=int, default=0,
                   help="the same in fresh processes with empty numba caches (0: skip)")
    p.add_argument("--atlas-n", type=int, default=0,
                   help="vectors -> first frame vs Embedding Atlas's --vector path (0: skip)")
    p.add_argument("--atlas-python", default="/work/atlas-venv/bin/python",
                   help="the python of a venv with `pip install embedding-atlas torch==2.13.0`")
    p.add_argument("--keep-inputs", default="",
                   help="a directory where the layout stage's inputs (kNN graph, init) of "
                        "--opt-n are kept between runs (the same synthetic data each time)")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of --out this run does not measure")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-reduce-"))
    results = {}
    command = "python -m benchmarks.bench_reduce " + " ".join(argv or sys.argv[1:])
    if a.merge and Path(a.out).exists():
        # Keep the sections this run does not measure (each records its own command).
        import json

        old = json.loads(Path(a.out).read_text())
        results = old["results"]
        for sec in results.values():
            if isinstance(sec, dict):
                sec.setdefault("command", old.get("params", {}).get("command"))
    params = {"opt_n": a.opt_n, "cold_n": a.cold_n, "n": a.n, "dim": a.dim, "tsne_n": a.tsne_n, "cache_n": a.cache_n,
              "scale_n": a.scale_n, "torch_n": a.torch_n, "scale_dim": a.scale_dim, "tsne_alone_n": a.tsne_alone_n,
              "data": "bigembed.ingest.synth clusters=10 error_rate=0.05 seed=0",
              "command": command}
    try:
        for n_opt in [int(v) for v in a.opt_n.split(",") if v]:
            synth(work / "opt", n=n_opt, dim=a.dim, clusters=10, seed=0)
            keep = (Path(a.keep_inputs) / f"opt-inputs-{n_opt}x{a.dim}.npz"
                    if a.keep_inputs else None)
            results[f"optimiser_{n_opt}"] = dict(command=command, **bench_optimiser(
                Dataset.open(work / "opt"), rounds=a.opt_rounds, note=f"optimiser {n_opt}",
                keep=keep))
            write_results(a.out, results_doc("reduce", results, params=params))
            shutil.rmtree(work / "opt", ignore_errors=True)
        if a.atlas_n:
            (work / "atlas").mkdir()
            results["end_to_end_vs_atlas"] = dict(command=command, **bench_atlas_e2e(
                work / "atlas", n=a.atlas_n, dim=a.dim, rounds=a.opt_rounds,
                atlas_python=a.atlas_python, note=f"atlas {a.atlas_n}"))
            write_results(a.out, results_doc("reduce", results, params=params))
        if a.cold_n:
            synth(work / "cold", n=a.cold_n, dim=a.dim, clusters=10, seed=0)
            results["optimiser_cold"] = dict(command=command, **bench_optimiser_cold(
                Dataset.open(work / "cold"), work, rounds=a.opt_rounds,
                note=f"cold {a.cold_n}"))
            write_results(a.out, results_doc("reduce", results, params=params))
            shutil.rmtree(work / "cold", ignore_errors=True)
        if a.cache_n:
            synth(work / "cache", n=a.cache_n, dim=a.dim, clusters=10, seed=1)
            results["numba_cache"] = bench_numba_cache(work / "cache", n=a.cache_n)
        # Warm-up: compile numba for both paths on small data, so the timed runs compare
        # algorithms, not JIT (the cache result above measures the JIT itself).
        synth(work / "warm", n=3000, dim=a.dim, clusters=10, seed=2)
        bench_umap(Dataset.open(work / "warm"), note="warm-up")
        if a.n:
            synth(work / "umap", n=a.n, dim=a.dim, clusters=10, seed=0)
            results["umap"] = dict(rows=a.n, dim=a.dim, command=command, **bench_umap(
                Dataset.open(work / "umap"), note=f"{a.n}x{a.dim}"))
            write_results(a.out, results_doc("reduce", results, params=params))
        if a.tsne_n:
            synth(work / "tsne", n=a.tsne_n, dim=a.dim, clusters=10, seed=0)
            results["tsne"] = dict(rows=a.tsne_n, dim=a.dim, command=command, **bench_tsne(
                Dataset.open(work / "tsne"), note=f"{a.tsne_n}x{a.dim}"))
        write_results(a.out, results_doc("reduce", results, params=params))
        if a.tsne_alone_n:
            synth(work / "tsne-alone", n=a.tsne_alone_n, dim=a.dim, clusters=10, seed=0)
            results["tsne_alone"] = dict(rows=a.tsne_alone_n, dim=a.dim, command=command,
                                         **bench_scale(
                Dataset.open(work / "tsne-alone"), method="tsne", note=f"{a.tsne_alone_n}"))
            write_results(a.out, results_doc("reduce", results, params=params))
            shutil.rmtree(work / "tsne-alone", ignore_errors=True)
        if a.torch_n:
            synth(work / "torch", n=a.torch_n, dim=a.dim, clusters=10, seed=0)
            results["umap_torch"] = dict(rows=a.torch_n, dim=a.dim, command=command,
                                         **bench_torch(
                Dataset.open(work / "torch"), note=f"{a.torch_n}x{a.dim}"))
            write_results(a.out, results_doc("reduce", results, params=params))
            shutil.rmtree(work / "torch", ignore_errors=True)
        if a.scale_n:
            synth(work / "scale", n=a.scale_n, dim=a.scale_dim, clusters=10, seed=0)
            results["umap_scale"] = dict(rows=a.scale_n, dim=a.scale_dim, command=command,
                                         **bench_scale(
                Dataset.open(work / "scale"), method="umap", note=f"{a.scale_n}x{a.scale_dim}"))
        path = write_results(a.out, results_doc("reduce", results, params=params))
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
