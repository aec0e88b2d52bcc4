"""A synthetic labelled mixture, streamed to shards: for demos, tests and benchmarks.

Clusters are Gaussian blobs around random centres, some split into sub-clusters so a layout has
structure at two scales. Each instance gets a ``label`` (its cluster), a ``prediction`` that is
wrong at rate ``error_rate`` (wrong predictions go to a nearby cluster, as a real model's
confusions do), a ``confidence`` (lower on errors) and the cross-entropy ``loss``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..dataset.writer import DatasetWriter
from ..errors import InputError, check_positive_int
from ..progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthResult:
    path: Path
    rows: int
    dim: int
    clusters: int
    error_rate: float
    seconds: float


def synth(out, *, n: int, dim: int, clusters: int = 10, error_rate: float = 0.05,
          seed: int = 0, space: str = "default", dtype: str = "float32",
          overwrite: bool = False, batch_rows: int = 131072,
          progress: bool | None = None) -> SynthResult:
    """Write a synthetic dataset of ``n`` vectors of dimension ``dim`` to ``out``."""
    t0 = time.perf_counter()
    n = check_positive_int("n", n)
    dim = check_positive_int("dim", dim)
    clusters = check_positive_int("clusters", clusters)
    try:
        error_rate = float(error_rate)
    except (TypeError, ValueError):
        raise InputError(f"error_rate must be a number in [0, 1], got {error_rate!r}") from None
    if not 0.0 <= error_rate <= 1.0:
        raise InputError(f"error_rate must be in [0, 1], got {error_rate}")
    rng = np.random.default_rng(seed)
    # Centres spread so clusters are separable but not trivially: distance ~ 4-8 sigma.
    centres = rng.normal(0.0, 3.0, (clusters, dim))
    scales = rng.uniform(0.5, 1.5, clusters)
    n_sub = 3
    sub_offsets = rng.normal(0.0, 1.2, (clusters, n_sub, dim))
    weights = rng.dirichlet(np.full(clusters, 5.0))
    # Confusions go to the nearest other centre.
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nearest = d2.argmin(1)

    provenance = {"source": "synth", "n": n, "dim": dim, "clusters": clusters,
                  "error_rate": error_rate, "seed": seed}
    with DatasetWriter(out, mode="create", overwrite=overwrite, provenance=provenance) as dw:
        meta_tmp = dw.meta_tmp_path()
        schema = pa.schema([("id", pa.int64()), ("key", pa.string()), ("label", pa.int32()),
                            ("prediction", pa.int32()), ("confidence", pa.float32()),
                            ("loss", pa.float32()), ("correct", pa.bool_())])
        dw.set_meta_file(meta_tmp, n)
        with pq.ParquetWriter(meta_tmp, schema) as mw, \
                dw.space(space, dim=dim, dtype=dtype, total_rows=n,
                         provenance=provenance) as sw:
            bar = progress_bar(total=n, desc="synth", unit="rows", enabled=progress)
            for start in range(0, n, batch_rows):
                b = min(batch_rows, n - start)
                brng = np.random.default_rng([seed, start])
                label = brng.choice(clusters, size=b, p=weights)
                sub = brng.integers(0, n_sub, b)
                x = brng.standard_normal((b, dim), dtype=np.float32)
                x *= scales[label, None].astype(np.float32)
                x += (centres[label] + sub_offsets[label, sub]).astype(np.float32)
                wrong = brng.random(b) < error_rate
                alt = np.where(brng.random(b) < 0.7, nearest[label],
                               brng.integers(0, clusters, b))
                alt = np.where(alt == label, (label + 1) % clusters, alt)
                pred = np.where(wrong & (clusters > 1), alt, label)
                correct = pred == label
                conf = np.where(correct, brng.beta(8, 1.5, b), brng.beta(3, 3, b)).astype(
                    np.float32)
                # Probability given to the true class: conf if right, else what remains.
                p_true = np.where(correct, conf, (1 - conf) * brng.uniform(0.2, 0.9, b))
                loss = (-np.log(np.clip(p_true, 1e-7, 1.0))).astype(np.float32)
                ids = np.arange(start, start + b, dtype=np.int64)
                sw.write(x)
                mw.write_table(pa.table({
                    "id": ids, "key": pa.array([f"synth-{i}" for i in ids]),
                    "label": label.astype(np.int32), "prediction": pred.astype(np.int32),
                    "confidence": conf, "loss": loss, "correct": correct,
                }, schema=schema))
                bar.update(b)
            bar.close()
        import os

        with open(meta_tmp, "rb") as f:
            os.fsync(f.fileno())
    return SynthResult(Path(out), n, dim, clusters, error_rate, time.perf_counter() - t0)


def synth_layout(out, *, n: int, clusters: int = 40, seed: int = 0, overwrite: bool = False,
                 batch_rows: int = 1 << 24, progress: bool | None = None) -> SynthResult:
    """Write a layout-only dataset to ``out``: ``n`` 2-D points (``clusters`` Gaussian blobs
    of varied size and weight, 1% uniform background) with a ``label`` (the blob mod 10) and
    no vectors, streamed in batches of ``batch_rows`` (a billion points in bounded memory).

    The layout is stored as layout ``synth`` (method ``synth``); what needs vectors (true
    neighbours, layout quality) says the dataset has none.
    """
    from ..dataset.layouts import write_layout_batches
    from ..dataset.reader import Dataset

    t0 = time.perf_counter()
    n = check_positive_int("n", n)
    clusters = check_positive_int("clusters", clusters)
    batch_rows = check_positive_int("batch_rows", batch_rows)
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-50, 50, (clusters, 2))
    scales = rng.uniform(0.3, 4.0, clusters)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    table = np.minimum(np.searchsorted(np.cumsum(weights), (np.arange(1 << 16) + 0.5) / (1 << 16),
                                       side="right"), clusters - 1).astype(np.int16)
    label_type = pa.uint8()  # labels are blob mod 10

    cx, cy = centres[:, 0].astype(np.float32), centres[:, 1].astype(np.float32)
    sc = scales.astype(np.float32)

    def batches(xy: bool):
        """(start, x, y, label) per batch; x, y None unless ``xy`` (the label pass skips
        them: labels and positions come from separate streams of the batch's seed)."""
        bar = progress_bar(total=n, desc="synth layout" if xy else "synth labels", unit="pts",
                           enabled=progress)
        for start in range(0, n, batch_rows):
            b = min(batch_rows, n - start)
            lrng = np.random.default_rng([seed, start, 0])
            # a weighted choice through a 2**16-entry table of the cumulative weights
            # (rng.choice with p= is ~10x slower; the table rounds weights to 1/65536)
            blob = table[(lrng.random(b, np.float32) * len(table)).astype(np.int32)]
            bg = lrng.random(b, np.float32) < 0.01
            nbg = int(bg.sum())
            label = (blob % 10).astype(np.uint8)
            label[bg] = lrng.integers(0, 10, nbg)
            x = y = None
            if xy:
                prng = np.random.default_rng([seed, start, 1])
                s = sc[blob]
                x = prng.standard_normal(b, np.float32)
                x *= s
                x += cx[blob]
                y = prng.standard_normal(b, np.float32)
                y *= s
                y += cy[blob]
                x[bg] = prng.uniform(-60, 60, nbg).astype(np.float32)
                y[bg] = prng.uniform(-60, 60, nbg).astype(np.float32)
            yield start, x, y, label
            bar.update(b)
        bar.close()

    provenance = {"source": "synth", "layout_only": True, "n": n, "clusters": clusters,
                  "seed": seed}
    with DatasetWriter(out, mode="create", overwrite=overwrite, provenance=provenance) as dw:
        meta_tmp = dw.meta_tmp_path()
        schema = pa.schema([("id", pa.int64()), ("label", label_type)])
        dw.set_rows(n)
        dw.set_meta_file(meta_tmp, n)
        # the labels first (small), the coordinates after the dataset exists, streamed again
        # from the same seeds (nothing of size n is held)
        # ids delta-encoded (a billion of them in a few kB, and fast), no dictionary for them
        with pq.ParquetWriter(meta_tmp, schema, use_dictionary=["label"],
                              column_encoding={"id": "DELTA_BINARY_PACKED"}) as mw:
            for start, _, _, label in batches(False):
                mw.write_table(pa.table({
                    "id": np.arange(start, start + len(label), dtype=np.int64),
                    "label": pa.array(label, label_type)}, schema=schema))
        import os

        with open(meta_tmp, "rb") as f:
            os.fsync(f.fileno())
    ds = Dataset.open(out)
    write_layout_batches(ds, "synth", ((x, y) for _, x, y, _ in batches(True)),
                         {"space": None, "method": "synth",
                          "params": {"clusters": clusters, "seed": seed}})
    return SynthResult(Path(out), n, 2, clusters, 0.0, time.perf_counter() - t0)
