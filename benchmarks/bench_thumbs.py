"""Hover thumbnails: ``/api/thumb``'s work (cold and cached) vs plain Pillow, and the demo's
digit images.

    python -m benchmarks.bench_thumbs [--count 500] [--digits 20000] [--out benchmarks/results/thumbs.json]

Same run, same images: ``bigembed cold`` is :meth:`Thumbnails.png` on ids not seen before
(decode, scale to fit 96 px, PNG); ``bigembed cached`` asks for the same ids again (what a
hover over an already-seen point costs); ``pillow`` is what a user would otherwise write:
``Image.open`` + ``thumbnail((96, 96))`` + PNG. Kinds: 8 x 8 digits as PNG bytes (the demo)
and 512 x 384 photos as JPEG files on disk (a path column). Quality: the output sizes of both.
Also: :func:`bigembed.models.digits.digit_pngs` for the demo's ``--digits`` instances.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bigembed.bench.harness import measure, results_doc, write_results

log = logging.getLogger("bench_thumbs")


def make_images(kind: str, count: int, work: Path) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = np.empty(count, dtype=object)
    for i in range(count):
        if kind == "digit_png_bytes":
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buf, "PNG")
            out[i] = buf.getvalue()
        else:
            # smooth gradients plus noise: compresses like a photo, not like flat colour
            yy, xx = np.mgrid[0:384, 0:512]
            a = np.stack([(xx + i) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], -1)
            a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
            p = work / f"photo-{i}.jpg"
            Image.fromarray(a, "RGB").save(p, "JPEG", quality=85)
            out[i] = p.name
    return out


def pillow_thumb(value, base: Path) -> bytes:
    from PIL import Image

    src = io.BytesIO(value) if isinstance(value, bytes) else base / value
    img = Image.open(src)
    img.thumbnail((96, 96))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def per_item(fn, items) -> dict:
    times = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p95_s": float(np.percentile(t, 95)),
            "items": len(t)}


def main(argv=None):
    from PIL import Image

    from bigembed.server.thumbs import Thumbnails

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--digits", type=int, default=20000)
    ap.add_argument("--out", default="benchmarks/results/thumbs.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = {"kinds": {}}
    with tempfile.TemporaryDirectory(prefix="bench-thumbs-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        for kind in ("digit_png_bytes", "photo_jpeg_files_512x384"):
            col = make_images(kind, args.count, work)
            ids = list(range(args.count))
            th = Thumbnails(col, work, cache_items=args.count)
            th.png(0)  # import and first-call costs out of the timings
            th._cache.clear()
            cold = per_item(th.png, ids)
            cached = per_item(th.png, ids)
            plain = per_item(lambda i: pillow_thumb(col[i], work), ids)
            # Pillow's thumbnail() only ever shrinks: an 8 x 8 digit stays 8 x 8 there
            ours = Image.open(io.BytesIO(th.png(0))).size
            theirs = Image.open(io.BytesIO(pillow_thumb(col[0], work))).size
            res["kinds"][kind] = {"bigembed_cold": cold, "bigembed_cached": cached,
                                  "pillow_thumbnail": plain,
                                  "ratio_pillow_over_bigembed_cold":
                                      plain["median_s"] / cold["median_s"],
                                  "quality": {"bigembed_size_px": list(ours),
                                              "pillow_size_px": list(theirs)}}
            log.info("%s: bigembed cold %.3f ms, cached %.4f ms, pillow %.3f ms (sizes %s vs %s)",
                     kind, 1e3 * cold["median_s"], 1e3 * cached["median_s"],
                     1e3 * plain["median_s"], ours, theirs)
        from bigembed.models.digits import DigitsData, digit_pngs

        data = DigitsData(args.digits, seed=0)
        t = measure(lambda: digit_pngs(data, np.arange(args.digits)), repeat=1, warmup=1)
        res["demo_digit_pngs"] = {"n": args.digits, "timing": t.to_json(),
                                  "per_image_s": t.median / args.digits}
        log.info("digit_pngs of %d demo digits: %.2fs", args.digits, t.median)
    path = write_results(args.out, results_doc("thumbs", res, params=vars(args)))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
