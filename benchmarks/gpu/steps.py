"""The GPU kit's benchmark steps, each in its own forked process with its own time cap.

    python -m benchmarks.gpu.steps --out DIR --device cuda            # on the device
    python -m benchmarks.gpu.steps --out DIR --device cpu --dry-run   # tiny sizes, any machine

Steps (sizes on the GPU; ``--dry-run`` runs the same code at tiny sizes):

* ``frames``: aggregation time per frame on the torch raster backend (torch-cuda), 10M and
  100M points, whole view and zoomed, exact and through the pyramid;
* ``knn``: the kNN graph of 1M x 384 with bigembed's torch kernel (bf16 matmul, fp32
  re-rank), its recall against FAISS exact search on a sample, and single-query lookups;
* ``umap``: UMAP of 1M x 384 end to end (vectors on disk -> kNN graph -> fuzzy graph -> SGD ->
  stored layout with its quality) on the torch layout backend, against the issue's 10 s
  target, and on a 10k sample torch, bigembed's CPU optimiser (``numba``) and umap-learn
  (``cpu``) side by side;
* ``vit``: extraction of a ViT-B/16-shaped model (``bigembed/models/vit.py``) in bf16, images/s;
* ``compare``: two spaces of 1M x 384 over the same rows (B = A with noise, 1% of rows moved to
  other clusters), end to end: both kNN graphs on the GPU backend, then ``compare`` (target
  20 s), with the planted movers' recovery.

Each step writes ``DIR/<step>.json`` as it goes (a step stopped at its cap keeps what it had
measured); ``DIR/summary.json`` lists every step's status (ok, failed with the error,
timeout), seconds, the machine and the versions. Heavy modules are imported once here, before
forking, so no step pays the imports; CUDA is first touched inside each step.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

STEPS = ("frames", "knn", "umap", "vit", "compare")
#: seconds each step may run on the device (the kit's whole run fits in 8 minutes)
CAPS = {"frames": 95, "knn": 75, "umap": 160, "vit": 60, "compare": 60}
DRY_CAP = 60
SIZES = {
    "gpu": {"frames": [10_000_000, 100_000_000], "frame": (800, 800), "knn": (1_000_000, 384),
            "queries": 200, "umap": (1_000_000, 384), "umap_sample": 10_000,
            "umap_epochs": None, "vit": 2048, "vit_batch": 256, "vit_image": 224,
            "vit_amp": "bf16", "compare": (1_000_000, 384)},
    # the same code at sizes a 2-core CPU runs in seconds (a smaller image: 16 patches)
    # (fp32 there: bf16 matmuls are emulated, slowly, on most CPUs)
    "dry": {"frames": [20_000, 100_000], "frame": (160, 120), "knn": (4_000, 32),
            "queries": 50, "umap": (800, 16), "umap_sample": 300, "umap_epochs": 10,
            "vit": 2, "vit_batch": 1, "vit_image": 64, "vit_amp": None, "compare": (3_000, 16)},
}


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat=3):
    """Median and all wall times of ``fn()`` after one untimed warm-up call."""
    fn()
    _sync(device)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), [round(x, 5) for x in ts]


def _clustered(n, d, *, device, seed=0, clusters=50):
    """n x d float32 points around ``clusters`` centres, made on ``device``; numpy back."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g, device=device) * 4
    lab = torch.randint(0, clusters, (n,), generator=g, device=device)
    x = centres[lab] + torch.randn(n, d, generator=g, device=device)
    return x.float().cpu().numpy(), lab.cpu().numpy()


# -- steps ------------------------------------------------------------------------------------

def step_frames(sizes, device, work, save):
    from bigembed.view.frames import FrameRenderer

    width, height = sizes["frame"]
    out = {"backend": f"torch-{device}", "width": width, "height": height, "sizes": []}
    for n in sizes["frames"]:
        rng = np.random.default_rng(0)
        k = 30
        cx, cy = rng.normal(0, 10, k), rng.normal(0, 10, k)
        lab = rng.integers(0, k, n).astype(np.int16)
        x = (cx[lab] + rng.standard_normal(n)).astype(np.float32)
        y = (cy[lab] + rng.standard_normal(n)).astype(np.float32)
        t = time.perf_counter()
        fr = FrameRenderer.from_arrays(x, y, columns={"label": lab}, backend=f"torch-{device}")
        setup = time.perf_counter() - t
        (x0, x1), (y0, y1) = fr.default_range()
        row = {"points": n, "setup_s": round(setup, 3), "frames": []}
        for zoom in (1, 16):
            hw, hh = (x1 - x0) / zoom / 2, (y1 - y0) / zoom / 2
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            for mode in ("exact", "auto"):
                for color in (None, "label"):
                    kw = dict(x_range=(mx - hw, mx + hw), y_range=(my - hh, my + hh),
                              width=width, height=height, color_by=color, mode=mode)
                    info = {}

                    def agg(kw=kw, info=info, fr=fr):
                        _, how, _, pts = fr.aggregate(**kw)
                        info.update(made_by=how, points=int(pts))

                    med, ts = _timed(agg, device)
                    row["frames"].append({"zoom": zoom, "mode": mode, "color_by": color,
                                          "aggregate_s": round(med, 5), "times": ts, **info})
        out["sizes"].append(row)
        save(out)  # 10M is kept if 100M runs past the cap
        del fr, x, y, lab
    return out


def step_knn(sizes, device, work, save):
    import faiss
    import torch

    from bigembed.kernels.knn import knn_torch
    from bigembed.search.backends import _TorchSearcher

    n, d = sizes["knn"]
    k = 15
    x, _ = _clustered(n, d, device=device)
    out = {"rows": n, "dim": d, "k": k, "device": device}
    base = torch.from_numpy(x).to(device)
    lowp_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lowp = base.to(lowp_dtype)
    sq = (base * base).sum(1)
    ind = np.empty((n, k + 1), np.int64)
    _sync(device)
    t = time.perf_counter()
    block = 65536
    for s in range(0, n, block):
        dd, ii = knn_torch(base[s:s + block], base, k + 1, metric="l2", compute_dtype=lowp_dtype,
                           base_lowp=lowp, base_sqnorm=sq)
        ind[s:s + len(ii)] = ii.cpu().numpy()
    _sync(device)
    out["graph_s"] = round(time.perf_counter() - t, 3)
    out["graph_rows_per_s"] = n / out["graph_s"]
    save(out)
    q = np.random.default_rng(1).choice(n, sizes["queries"], replace=False)
    _, truth = faiss.knn(np.ascontiguousarray(x[q]), x, k + 1)
    out["graph_recall_vs_faiss_exact"] = float(np.mean(
        [len(set(a) & set(b)) / (k + 1) for a, b in zip(ind[q], truth)]))
    save(out)
    del lowp, sq
    searcher = _TorchSearcher(x, "l2", device)
    one = [np.ascontiguousarray(x[i:i + 1]) for i in q]
    it = iter(range(10 ** 9))

    def lookup():
        searcher.search(one[next(it) % len(one)], 11)

    med, ts = _timed(lookup, device, repeat=min(100, 10 * len(one)))
    out["lookup_ms_median"] = round(med * 1e3, 3)
    out["lookup_ms_p95"] = round(float(np.percentile(ts, 95)) * 1e3, 3)
    batch = np.ascontiguousarray(x[q])
    med, _ = _timed(lambda: searcher.search(batch, 11), device)
    out["lookup_batch"] = {"queries": len(q), "seconds": round(med, 4)}
    return out


def _dataset(path, x):
    from bigembed import DatasetWriter

    with DatasetWriter(path) as dw:
        with dw.space("v", dim=x.shape[1], total_rows=len(x)) as sw:
            for s in range(0, len(x), 262144):
                sw.write(x[s:s + 262144])
    return path


def step_umap(sizes, device, work, save):
    from bigembed.reduce.run import reduce

    n, d = sizes["umap"]
    x, _ = _clustered(n, d, device=device, seed=3, clusters=30)
    t = time.perf_counter()
    ds = _dataset(work / "umap-full", x)
    out = {"rows": n, "dim": d, "write_s": round(time.perf_counter() - t, 3)}
    save(out)
    ep = sizes["umap_epochs"]
    t = time.perf_counter()
    r = reduce(ds, method="umap", backend="torch", space="v", n_epochs=ep, progress=False)
    e2e = time.perf_counter() - t
    out["torch_full"] = {"seconds": round(r.seconds, 3), "backend": r.backend,
                         "end_to_end_s": round(e2e, 3), "target_s": 10.0,
                         "meets_target": bool(e2e <= 10.0), "quality": r.quality}
    from bigembed import Dataset

    rec = Dataset.open(ds).manifest["layouts"][r.name]
    out["torch_full"]["timings"] = rec.get("timings")
    save(out)
    m = sizes["umap_sample"]
    rows = np.sort(np.random.default_rng(0).choice(n, m, replace=False))
    small = _dataset(work / "umap-sample", np.ascontiguousarray(x[rows]))
    out["sample"] = {"rows": m}
    for be in ("torch", "numba", "cpu"):  # the same rows through each, same quality measure
        t = time.perf_counter()
        r = reduce(small, method="umap", backend=be, space="v", n_epochs=ep, progress=False)
        out["sample"][be] = {"seconds": round(time.perf_counter() - t, 3),
                             "quality": r.quality}
        save(out)
    return out


def step_vit(sizes, device, work, save):
    from bigembed.extract.run import extract
    from bigembed.models.vit import RandomImages, build_vit_b16

    size = sizes["vit_image"]
    model = build_vit_b16(image_size=size)
    bs = sizes["vit_batch"]
    kw = dict(model=model, layers=["blocks.11", "norm"], pooling="cls", batch_size=bs,
              device=device, amp=sizes["vit_amp"], progress=False, overwrite=True)
    extract(data=RandomImages(bs, size=size), out=work / "vit-warm", **kw)  # cuBLAS warm-up
    n = sizes["vit"]
    r = extract(data=RandomImages(n, size=size), out=work / "vit", **kw)
    return {"images": n, "image_size": size, "batch_size": bs, "amp": sizes["vit_amp"],
            "device": r.device,
            "seconds": round(r.seconds, 3), "images_per_s": round(r.items_per_s, 1),
            "timings": r.timings,
            **({"flops_per_image": 17.6e9, "tflops": round(r.items_per_s * 17.6e9 / 1e12, 1)}
               if size == 224 else {})}


def step_compare(sizes, device, work, save):
    from bigembed import DatasetWriter
    from bigembed.compare import compare
    from bigembed.search import knn_graph

    n, d = sizes["compare"]
    a, lab = _clustered(n, d, device=device, seed=5, clusters=100)
    rng = np.random.default_rng(5)
    moved = np.sort(rng.choice(n, n // 100, replace=False))
    b = a + 0.2 * rng.standard_normal(a.shape, dtype=np.float32)
    b[moved] = b[rng.permutation(moved)]  # each moved row takes another moved row's place
    t = time.perf_counter()
    path = work / "compare"
    with DatasetWriter(path) as dw:
        for name, x in (("a", a), ("b", b)):
            with dw.space(name, dim=d, total_rows=n) as sw:
                for s in range(0, n, 262144):
                    sw.write(x[s:s + 262144])
    out = {"rows": n, "dim": d, "moved": len(moved), "write_s": round(time.perf_counter() - t, 3)}
    del a, b
    save(out)
    t = time.perf_counter()
    graphs = [knn_graph(path, space=s, k=15, progress=False) for s in ("a", "b")]
    out["graphs_s"] = round(time.perf_counter() - t, 3)
    out["graph_backend"] = [g.record.get("backend") for g in graphs]
    out["graph_method"] = [g.record.get("method") for g in graphs]
    save(out)
    t = time.perf_counter()
    r = compare(path, a="a", b="b", k=15, progress=False)
    out["compare_from_graphs_s"] = round(time.perf_counter() - t, 3)
    out["end_to_end_s"] = round(out["graphs_s"] + out["compare_from_graphs_s"], 3)
    out["target_s"] = 20
    out["mean_overlap"] = r.mean_overlap
    out["error_estimate"] = r.error_estimate
    least = np.argsort(r.overlap, kind="stable")[:len(moved)]
    out["movers_recovered"] = round(len(np.intersect1d(least, moved)) / max(1, len(moved)), 4)
    return out


FUNCS = {"frames": step_frames, "knn": step_knn, "umap": step_umap, "vit": step_vit,
         "compare": step_compare}


# -- the driver -------------------------------------------------------------------------------

def _write(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def _child(step, sizes, device, out_dir, work):
    path = out_dir / f"{step}.json"
    t0 = time.perf_counter()
    doc = {"step": step, "status": "running", "device": device}

    def save(partial):
        doc["results"] = partial
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        _write(path, doc)

    try:
        res = FUNCS[step](sizes, device, work, save)
        doc["status"] = "ok"
        save(res)
    except BaseException as e:  # noqa: BLE001  (recorded; the kit goes on to the next step)
        doc["status"] = "failed"
        doc["error"] = f"{type(e).__name__}: {e}"
        doc["traceback"] = traceback.format_exc()[-4000:]
        save(doc.get("results"))
        os._exit(1)
    os._exit(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the JSON files")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (checks the kit)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--cap", type=float, default=None, help="seconds per step (default: "
                    f"{CAPS} on the GPU, {DRY_CAP} each in a dry run)")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    # Imported before forking: each step starts with them loaded (CUDA is not touched here).
    import torch  # noqa: F401

    import bigembed.extract.run  # noqa: F401
    import bigembed.reduce.run  # noqa: F401
    import bigembed.view.frames  # noqa: F401
    from bigembed.bench.harness import machine, versions

    work = Path(tempfile.mkdtemp(prefix="bigembed-gpu-kit-"))
    ctx = mp.get_context("fork")
    summary = {"suite": "gpu-kit", "dry_run": args.dry_run, "device": args.device,
               "sizes": sizes, "steps": {}}
    try:
        for step in [s for s in args.steps.split(",") if s]:
            cap = args.cap or (DRY_CAP if args.dry_run else CAPS[step])
            t = time.perf_counter()
            p = ctx.Process(target=_child, args=(step, sizes, args.device, out_dir, work))
            p.start()
            p.join(cap)
            status = None
            if p.is_alive():
                p.kill()
                p.join()
                status = "timeout"
            secs = round(time.perf_counter() - t, 2)
            path = out_dir / f"{step}.json"
            doc = json.loads(path.read_text()) if path.is_file() else {"step": step}
            if status == "timeout":
                doc.update(status="timeout", cap_s=cap)
                _write(path, doc)
            elif doc.get("status") not in ("ok", "failed"):
                doc.update(status="failed", error=f"exit code {p.exitcode}")
                _write(path, doc)
            summary["steps"][step] = {"status": doc["status"], "seconds": secs, "cap_s": cap,
                                      **({"error": doc["error"]} if "error" in doc else {})}
            print(f"step {step}: {doc['status']} in {secs:.1f}s (cap {cap:.0f}s)"
                  + (f": {doc.get('error')}" if doc.get("error") else ""), flush=True)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
        summary["machine"], summary["versions"] = machine(), versions()
        try:
            import torch

            if args.device == "cuda":
                summary["gpu"] = torch.cuda.get_device_name(0)
        except Exception as e:  # noqa: BLE001
            summary["gpu"] = f"unknown ({e})"
        _write(out_dir / "summary.json", summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] == "ok" for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
