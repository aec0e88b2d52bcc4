"""Extract activations of named layers of a PyTorch model into the spaces of a dataset.

One pass over the data runs the model with forward hooks on the requested layers; each layer's
output is pooled to a vector per instance (see :mod:`bigembed.extract.capture`) and becomes a
space. Beside the vectors, meta.parquet holds per instance the label (when the data has one)
and, when the model returns (B, C) logits, prediction, confidence, loss and correct.

The device comes from the backend registry (``torch-cuda`` when a GPU is visible, else
``torch-cpu``); the same code runs on both. On CUDA: optional bf16/fp16 autocast, a DataLoader
with workers and pinned memory, non-blocking copies back to the host overlapped with the next
batch, and a background shard writer. Output is written chunk by chunk and is resumable (see
:mod:`bigembed.extract.store`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from ..dataset import _mmap
from ..dataset.format import DTYPES, MANIFEST, shard_rows_for
from ..distributed.session import implementation as cluster_implementation
from ..errors import BackendUnavailable, InputError, check_choice, check_positive_int
from ..progress import progress_bar
from .backends import DEVICES as EXTRACT_DEVICES
from .capture import (
    POOLINGS,
    Capture,
    describe_pooling,
    list_layers,
    logits_of,
    resolve_layers,
    scores,
)
from .sources import (
    batch_rows,
    load_data,
    load_model,
    slice_inputs,
    split_batch,
    to_device,
    torch,
)
from .store import ChunkWriter, ExtractError, ExtractStore

log = logging.getLogger(__name__)

__all__ = ["extract", "inspect_layers", "ExtractResult", "ExtractError"]

AMPS = {None: None, "none": None, "bf16": "bfloat16", "fp16": "float16"}
#: batch size ``"auto"`` starts here and halves on out-of-memory
AUTO_BATCH = 1024

@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract` wrote to the dataset at ``path``.

    ``rows_computed`` ran through the model in this call; ``rows_resumed`` were already on disk
    from an earlier, interrupted run; ``cached`` means the whole extraction was already done.
    """

    path: Path
    spaces: tuple
    rows: int
    dims: dict
    dtype: str
    shards: int
    bytes: int
    seconds: float
    rows_computed: int
    rows_resumed: int
    device: str
    backend: str
    batch_size: int
    amp: str | None
    cached: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"path": str(self.path), "spaces": list(self.spaces), "rows": self.rows,
                "dims": self.dims, "dtype": self.dtype, "shards": self.shards,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "rows_computed": self.rows_computed, "rows_resumed": self.rows_resumed,
                "items_per_s": round(self.items_per_s, 1), "device": self.device,
                "backend": self.backend, "batch_size": self.batch_size, "amp": self.amp,
                "cached": self.cached, "timings": self.timings}


def _weights_hash(model) -> str:
    """xxh3 of every parameter and buffer (names, shapes, bytes): the model's identity."""
    h = xxhash.xxh3_64()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch().uint8).numpy())  # the buffer, no copy
    return h.hexdigest()


def _page_step(dim: int, dtype: str) -> int:
    row = dim * np.dtype(DTYPES[dtype]).itemsize
    return int(_mmap.PAGE // math.gcd(_mmap.PAGE, row))


def _chunk_rows(dims: dict, dtype: str, shard_rows: int | None) -> int:
    """Rows per chunk (one shard per layer): about SHARD_BYTES for the widest layer, and a
    multiple of every layer's page step so each space maps as one array without copying."""
    step = 1
    for d in dims.values():
        step = math.lcm(step, _page_step(d, dtype))
    if shard_rows and shard_rows < step:
        log.warning("shard_rows %d is below %d, the smallest multiple that keeps shards "
                    "page-aligned: reading these spaces will copy them", shard_rows, step)
        return int(shard_rows)
    want = shard_rows if shard_rows else min(shard_rows_for(d, dtype) for d in dims.values())
    rows = max(step, int(want) // step * step)
    if shard_rows and rows != shard_rows:
        log.info("shard_rows %d rounded to %d (a multiple of %d keeps shards page-aligned)",
                 shard_rows, rows, step)
    return rows


class _Batches:
    """Batches ``(rows, inputs, labels)`` from ``start``; ``rows`` is an int64 array of the
    batch's row ids. For map-style data a batch never crosses a chunk boundary, so a resumed
    run computes exactly the batches a fresh one would; when the data knows its instances'
    lengths (text), each chunk is batched longest first, so a batch holds similar lengths and
    little padding (the chunker puts every row back in its place)."""

    def __init__(self, src, *, start: int, chunk_rows: int, batch_size: int, workers: int,
                 pin: bool):
        self.src, self.start, self.chunk_rows = src, start, chunk_rows
        self.batch_size, self.workers, self.pin = batch_size, workers, pin
        self._issued: deque = deque()

    def _index_batches(self):
        n = self.src.rows
        s = self.start
        lengths = None if self.src.lengths is None else np.asarray(self.src.lengths())
        while s < n:
            end = min(n, (s // self.chunk_rows + 1) * self.chunk_rows)
            order = np.arange(s, end)
            if lengths is not None:  # longest first, ties in row order
                order = s + np.argsort(-lengths[s:end], kind="stable")
            p = 0
            while p < len(order):
                b = order[p:p + self.batch_size]  # batch_size may shrink after an OOM
                self._issued.append(b)
                yield b.tolist()
                p += len(b)
            s = end

    def __iter__(self):
        if self.src.map_style:
            self._issued.clear()
            loader = self.src.loader(batch_sampler=self._index_batches(),
                                     num_workers=self.workers, pin_memory=self.pin)
            for i, b in enumerate(loader):
                x, y = split_batch(b, f"data batch {i}")
                yield self._issued.popleft(), x, y  # the loader keeps the sampler's order
            return
        row = 0
        for i, b in enumerate(self.src.data):
            x, y = split_batch(b, f"data batch {i}")
            n = batch_rows(x)
            if row + n <= self.start:  # finished in an earlier run: skip without computing
                row += n
                continue
            if row < self.start:
                k = self.start - row
                x = slice_inputs(x, k, n)
                y = None if y is None else y[k:]
                row, n = self.start, n - k
            yield np.arange(row, row + n, dtype=np.int64), x, y
            row += n


def _where(rows: np.ndarray) -> str:
    lo, hi = int(rows.min()), int(rows.max())
    return f"rows {lo}..{hi}" if hi - lo + 1 == len(rows) else f"{len(rows)} rows in {lo}..{hi}"


def _labels_numpy(y, n: int):
    if y is None:
        return None
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.shape[:1] != (n,):
        raise InputError(f"data: a batch has {n} inputs but {y.shape[:1]} labels")
    return y.reshape(n, -1)[:, 0] if y.ndim > 1 else y


class _Runner:
    """Runs batches through the model on the device; halves the batch on out-of-memory."""

    def __init__(self, model, capture: Capture, backend, amp, auto_batch: bool):
        from .text import is_text_model

        self.model, self.capture, self.backend = model, capture, backend
        self.device = backend.device
        # An embedding model's output is not class scores: no prediction/confidence/loss.
        self.predict = not is_text_model(model)
        self.amp = amp
        self.auto_batch = auto_batch
        self.non_blocking = backend.async_copies
        self.halvings = 0

    def forward(self, x, y, where: str):
        """Pooled outputs ``{layer: (b, d) float32}`` and the (b, C) logits or None."""
        t = torch()
        oom = getattr(t, "OutOfMemoryError", t.cuda.OutOfMemoryError)
        try:
            xd = to_device(x, self.device, self.non_blocking)
            # Token outputs are pooled over the real tokens of this batch only.
            self.capture.mask = xd.get("attention_mask") if isinstance(xd, dict) else None
            with t.inference_mode(), t.autocast(
                    device_type=self.device.type, dtype=getattr(t, self.amp or "float32"),
                    enabled=self.amp is not None):
                out = self.model(**xd) if isinstance(xd, dict) else self.model(xd)
            pooled = self.capture.take()
            missing = [k for k in self.capture.layers if k not in pooled]
            if missing:
                raise InputError(
                    f"layers {missing}: never ran in the model's forward pass (a layer the "
                    f"model does not call, or a TorchScript model whose compiled forward skips "
                    f"hooks: save it with torch.export instead)")
            return pooled, (logits_of(out) if self.predict else None)
        except oom:
            self.capture.take()
            self.backend.free_memory()
            n = batch_rows(x)
            if not self.auto_batch or n <= 1:
                raise ExtractError(
                    f"out of memory on {self.device} at {where} with a batch of {n}; pass a "
                    f"smaller --batch-size, or --batch-size auto to halve and retry") from None
            self.halvings += 1
            h = n // 2
            log.warning("out of memory on %s at %s with a batch of %d; halving to %d",
                        self.device, where, n, h)
            y1 = None if y is None else y[:h]
            y2 = None if y is None else y[h:]
            a = self.forward(slice_inputs(x, 0, h), y1, where)
            b = self.forward(slice_inputs(x, h, n), y2, where)
            pooled = {k: t.cat([a[0][k], b[0][k]]) for k in a[0]}
            logits = None if a[1] is None or b[1] is None else t.cat([a[1], b[1]])
            return pooled, logits


def _grow(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((max(rows, 2 * len(a)),) + a.shape[1:], a.dtype)
    out[:len(a)] = a
    return out


class _Chunker:
    """Collects per-batch host arrays into chunks of ``chunk_rows`` rows and submits them."""

    def __init__(self, writer: ChunkWriter, src, dims: dict, *, chunk_rows: int, index: int,
                 start: int, has_labels: bool, classes: int | None, has_loss: bool,
                 dtype: str = "float32", suffix: str = ""):
        self.writer, self.src, self.dims = writer, src, dict(dims)
        #: appended to the score columns (``prediction@step10``) of a tagged checkpoint
        self.suffix = suffix
        self.layers = list(dims)
        self.dtype = dtype
        self.chunk_rows, self.index, self.start = chunk_rows, index, start
        self.has_labels, self.has_loss = has_labels, has_loss
        self.classes, self.has_preds = classes, classes is not None
        self._reset()

    def _reset(self):
        # One buffer per chunk, filled in place: keeping per-batch arrays alive between the
        # large transient activations fragments the heap (RSS grew ~5 KB/row before this).
        rows = self.chunk_rows
        if self.src.rows is not None:
            rows = max(1, min(rows, self.src.rows - self.start))
        self.vec = {k: np.empty((rows, d), np.float32) for k, d in self.dims.items()}
        self.logits = (np.empty((rows, self.classes), np.float32) if self.has_preds else None)
        self.labels = []
        self.rows = 0

    def add(self, pooled: dict, logits, labels, rows) -> None:
        """Add a batch: ``{layer: (n, d)}``, logits (n, C) or None, labels (n,) or None, and
        ``rows`` (n,) its row ids, in any order within a chunk (a length-sorted batch)."""
        rows = np.asarray(rows, np.int64)
        pos = rows - self.start
        here = pos < self.chunk_rows
        sel = None if here.all() else np.flatnonzero(here)
        pick = (lambda a: a) if sel is None else (lambda a: a[sel])
        p = pick(pos)
        if len(p):
            need = int(p.max()) + 1
            if need > len(self.vec[self.layers[0]]):  # more rows than announced
                for k in self.layers:
                    self.vec[k] = _grow(self.vec[k], need)
                if self.logits is not None:
                    self.logits = _grow(self.logits, need)
            for k in self.layers:
                self.vec[k][p] = pick(pooled[k])
            if self.has_labels:
                lab = labels if labels is not None else np.full(len(rows), -1)
                self.labels.append((p, np.array(pick(np.asarray(lab)))))
            if self.has_preds:
                self.logits[p] = pick(logits) if logits is not None else np.nan
            self.rows += len(p)
        if self.rows >= self.chunk_rows:
            self.flush()
        if sel is not None:  # the rest belongs to the next chunk(s)
            rest = np.flatnonzero(~here)
            self.add({k: v[rest] for k, v in pooled.items()},
                     None if logits is None else logits[rest],
                     None if labels is None else np.asarray(labels)[rest], rows[rest])

    def flush(self) -> None:
        if self.rows == 0:
            return
        blocks = {}
        for k in self.layers:
            b = self.vec[k][:self.rows]
            # Checked in the storage dtype: float16 turns values above 65504 into Inf.
            b = b.astype(DTYPES[self.dtype], copy=False)
            finite = np.isfinite(b).all(axis=1)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0]) + self.start
                hint = (" (or its values exceed the float16 range: use --dtype float32)"
                        if self.dtype == "float16" else "")
                raise ExtractError(
                    f"layer {k!r} produced NaN or Inf for instance {bad} (chunk {self.index}, "
                    f"rows {self.start}..{self.start + self.rows - 1}); the model or its input "
                    f"is broken there{hint}. The {self.index} finished chunks are kept")
            blocks[k] = b
        cols = {}
        if self.has_labels:
            pos = np.concatenate([p for p, _ in self.labels])
            cols["label"] = np.concatenate([v for _, v in self.labels])[np.argsort(pos)]
        if self.has_preds:
            pred, conf, loss = scores(self.logits[:self.rows], cols.get("label"))
            missing = ~np.isfinite(conf)
            pred[missing] = -1
            cols["prediction"], cols["confidence"] = pred, conf
            if self.has_loss and loss is not None:
                cols["loss"] = loss
            if self.has_labels and cols["label"].dtype.kind in "iu":
                cols["correct"] = cols["label"] == pred
            if self.suffix:
                cols = {(k if k in ("label",) else f"{k}{self.suffix}"): v
                        for k, v in cols.items()}
        stop = self.start + self.rows
        for k, v in self.src.metadata(self.start, stop).items():
            cols[k] = np.asarray(v)
        table = pa.table({k: pa.array(v) for k, v in cols.items()}) if cols else pa.table(
            {"_rows": pa.array(np.zeros(self.rows, np.int8))}).drop_columns(["_rows"])
        if table.num_rows != self.rows:  # a table without columns has no rows of its own
            table = pa.table({"row": pa.array(np.arange(self.start, stop, dtype=np.int64))})
        self.writer.submit(self.index, self.start, blocks, table)
        self.index += 1
        self.start = stop
        self._reset()


def _probe(model, src, layers: dict, pooling: str, run_on, amp):
    """One small batch through the model: output shapes, dims, and which meta columns exist."""
    if src.map_style:
        if src.rows == 0:
            raise InputError(f"data {src.description}: holds no instances")
        # One instance is enough to learn the output shapes.
        first = next(iter(src.loader(batch_size=1)))
    else:
        it = iter(src.data)
        try:
            first = next(it)
        except StopIteration:
            raise InputError(f"data {src.description}: holds no batches") from None
        # A one-shot iterator must not lose its first batch: chain it back.
        if it is src.data:
            import itertools

            src.data = itertools.chain([first], it)
    x, y = split_batch(first, "data batch 0")
    n = batch_rows(x)
    if n == 0:
        raise InputError(f"data {src.description}: the first batch is empty")
    cap = Capture(layers, pooling)
    with cap:
        try:
            pooled, logits = _Runner(model, cap, run_on, amp, False).forward(x, y, "batch 0")
        except (InputError, ExtractError):
            raise
        except Exception as e:
            raise ExtractError(f"the model raised {type(e).__name__} on the first batch "
                               f"(rows 0..{n - 1}): {e}") from None
    dims = {k: int(pooled[k].shape[1]) for k in layers}  # in the order asked for
    classes = None if logits is None else int(logits.shape[1])
    has_loss = classes is not None and y is not None and _labels_numpy(y, n).dtype.kind in "iu"
    pooled_how = {k: describe_pooling(pooling, cap.shapes[k], cap.masked.get(k, False),
                                      layers[k]) for k in layers}
    return dims, dict(cap.shapes), y is not None, classes, has_loss, pooled_how


def extract(*, model, data=None, out, layers, pooling: str = "mean", batch_size=256,
            device: str = "auto", amp: str | None = None, dtype: str = "float32",
            workers: int | None = None, shard_rows: int | None = None,
            background_writer: bool = True, overwrite: bool = False, n: int | None = None,
            seed: int = 0, model_seed: int = 0, weights=None, tag=None,
            progress: bool | None = None) -> ExtractResult:
    """Run ``model`` over ``data`` once; write each of ``layers`` as a space of ``out``.

    model: an ``nn.Module``, ``"package.module:factory"``, a built-in name (``digits``,
    ``vit_b16``) or a TorchScript / torch.export file. data: a map-style Dataset (items ``x``,
    ``(x, label)`` or dicts), a tensor of instances, an iterable of batches, or
    ``"package.module:factory"``; ``None`` with ``model="digits"`` makes ``n`` digits.
    layers: module names (list or ``"a,b"``); each space holds an array of shape (N, d) where d
    is the pooled width. batch_size: int or ``"auto"`` (start at 1024, halve on OOM).
    amp: None, ``"bf16"`` or ``"fp16"`` autocast. dtype: storage ``float32`` or ``float16``.

    weights: state-dict files (a list or ``"a.pt,b.pt"``), each loaded into the model in turn
    and run over the same data: checkpoints of one run. Their spaces are ``layer@tag`` and
    their scores ``prediction@tag``, ``confidence@tag``, ``loss@tag``, ``correct@tag``, where
    the tags are ``tag`` (a list or ``"a,b"``) or the files' stems. Every file is checked
    against the model before anything runs. Without ``weights``, ``tag`` (one name) names the
    spaces and scores of this one model the same way.

    ``out`` may already hold a dataset: the new spaces are then added to it when the data has
    its row count (refused otherwise, before anything runs); nothing already there changes
    except that new metadata columns are added. Rerunning with the same arguments resumes a
    killed run (or returns at once when complete); an unfinished extraction with different
    settings refuses to mix with its shards unless ``overwrite`` (which replaces the dataset).
    """
    t0 = time.perf_counter()
    check_choice("pooling", pooling, POOLINGS)
    check_choice("dtype", dtype, list(DTYPES))
    devices = ["auto", *(n.removeprefix("torch-") for n in EXTRACT_DEVICES.names())]
    check_choice("device", device, devices)
    if amp not in AMPS:
        raise InputError(f"amp must be one of ['none', 'bf16', 'fp16'], got {amp!r}")
    amp_dtype = AMPS[amp]
    auto_batch = batch_size == "auto"
    if auto_batch:
        batch_size = AUTO_BATCH
    else:
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        batch_size = check_positive_int("batch_size", batch_size)
    if shard_rows is not None:
        shard_rows = check_positive_int("shard_rows", shard_rows)
    if workers is not None:
        workers = check_positive_int("workers", workers, minimum=0)
    if out is None:
        raise InputError("out is required (the dataset directory to write)")
    files = _weight_files(weights)
    tags = _tags(tag, files)
    torch()  # the install hint when torch is missing, before anything is read
    try:
        backend, run_on = EXTRACT_DEVICES.create(device if device == "auto" else
                                                 f"torch-{device}")
    except BackendUnavailable as e:  # name the device as it was passed, not the backend
        raise BackendUnavailable(str(e).replace(f"device='torch-{device}'",
                                                f"device={device!r}")) from None
    if amp_dtype == "float16" and run_on.slow_fp16:
        log.info("amp='fp16' on the CPU runs slowly in PyTorch; bf16 is the CPU choice")

    if data is None and model == "digits":
        data = "digits"
    mdl, mdesc = load_model(model, seed=model_seed)
    opts = dict(out=out, layers=layers, pooling=pooling, batch_size=batch_size,
                auto_batch=auto_batch, backend=backend, run_on=run_on, amp_dtype=amp_dtype,
                dtype=dtype, workers=workers, shard_rows=shard_rows,
                background_writer=background_writer, overwrite=overwrite, n=n, seed=seed,
                progress=progress, t0=t0, model_spec=model, model_seed=model_seed,
                device=device)
    if files is None:
        return _extract_one(mdl, mdesc, data, tag=tags[0] if tags else None, **opts)
    for f in files:  # every checkpoint must fit before the first one runs
        load_checkpoint(mdl, f, check_only=True)
    if len(files) > 1:
        _check_rereadable(data)
    results = []
    for i, (f, t) in enumerate(zip(files, tags)):
        load_checkpoint(mdl, f)
        log.info("extract: checkpoint %d/%d %s as %s", i + 1, len(files), f, t)
        results.append(_extract_one(mdl, f"{mdesc} with weights {f.resolve()}", data, tag=t,
                                    **dict(opts, overwrite=overwrite and i == 0)))
    return _combined(results, t0)


# -- checkpoints ----------------------------------------------------------------------------

def _weight_files(weights) -> list | None:
    if weights is None:
        return None
    if isinstance(weights, Path):
        weights = [weights]
    items = [w.strip() for w in weights.split(",")] if isinstance(weights, str) else \
        [str(w) for w in weights]
    if not items or any(not w for w in items):
        raise InputError(f"weights must name one or more state-dict files, 'a.pt,b.pt', got "
                         f"{weights!r}")
    files = [Path(w) for w in items]
    for f in files:
        if not f.is_file():
            raise InputError(f"weights: {f} does not exist (or is not a file)")
    if len({f.resolve() for f in files}) != len(files):
        raise InputError(f"weights names a file more than once: {items}")
    return files


def _tags(tag, files) -> list | None:
    if tag is None:
        if files is None:
            return None
        tags = [f.stem for f in files]
        if len(set(tags)) != len(tags):
            raise InputError(f"weights: the files {[str(f) for f in files]} share a name "
                             f"({tags}); pass --tag with one distinct name per file")
    else:
        tags = [t.strip() for t in tag.split(",")] if isinstance(tag, str) else list(tag)
        want = 1 if files is None else len(files)
        if len(tags) != want:
            raise InputError(f"tag must give {want} name(s), one per "
                             f"{'weights file' if files else 'model'}, got {tag!r}")
        if len(set(tags)) != len(tags):
            raise InputError(f"tag names a checkpoint more than once: {tags}")
    for t in tags:
        if not isinstance(t, str) or not t or any(c in t for c in "@,/\\\0") or \
                t.startswith(".") or t != t.strip():
            raise InputError(f"tag {t!r}: a tag is a non-empty name without '@', ',', '/' "
                             f"or a leading '.'")
    return tags


def _state_dict(obj):
    """The tensors of a checkpoint: a state dict, or one under a usual key of a dict."""
    t = torch()
    if isinstance(obj, dict):
        for k in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(k), dict) and obj[k] and all(
                    isinstance(v, t.Tensor) for v in obj[k].values()):
                return obj[k]
        if obj and all(isinstance(v, t.Tensor) for v in obj.values()):
            return obj
    return None


def load_checkpoint(model, path, *, check_only: bool = False) -> None:
    """Load the state dict in ``path`` into ``model`` (or only check that it fits).

    The file holds a state dict, or a dict with one under ``state_dict``,
    ``model_state_dict`` or ``model`` (the usual training checkpoints); a ``module.``
    prefix left by DataParallel is removed. Raises InputError naming the file and what does
    not fit: missing and unexpected tensors, shapes that differ.
    """
    t = torch()
    path = Path(path)
    try:
        obj = t.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"weights: {path} is not a readable PyTorch state dict "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    sd = _state_dict(obj)
    if sd is None:
        raise InputError(f"weights: {path} holds {type(obj).__name__}, expected a state dict "
                         f"(name -> tensor), or a checkpoint dict with one under "
                         f"'state_dict' / 'model_state_dict' / 'model'")
    want = model.state_dict()
    if all(k.startswith("module.") for k in sd) and not any(k.startswith("module.")
                                                           for k in want):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shapes = [f"{k}: {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in want.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing ({missing[:5]})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({extra[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:3])})")
        raise InputError(f"weights: {path} does not fit the model "
                         f"{type(model).__name__}: {', '.join(parts)}; nothing was written")
    if not check_only:
        model.load_state_dict(sd, strict=True)


def _check_rereadable(data) -> None:
    if data is not None and not isinstance(data, (str, Path)) and not hasattr(
            data, "__getitem__") and iter(data) is data:
        raise InputError("data: a one-shot iterator can be read once, but several checkpoints "
                         "each run over the data; pass a Dataset, a tensor or a "
                         "'package.module:factory'")


def _combined(results: list, t0: float) -> ExtractResult:
    last = results[-1]
    dims = {}
    for r in results:
        dims.update(r.dims)
    return ExtractResult(
        path=last.path, spaces=tuple(dims), rows=last.rows, dims=dims, dtype=last.dtype,
        shards=last.shards, bytes=sum(r.bytes for r in results),
        seconds=time.perf_counter() - t0,
        rows_computed=sum(r.rows_computed for r in results),
        rows_resumed=sum(r.rows_resumed for r in results), device=last.device,
        backend=last.backend, batch_size=last.batch_size, amp=last.amp,
        cached=all(r.cached for r in results),
        timings={"checkpoints": [dict(r.timings, spaces=list(r.spaces), cached=r.cached)
                                 for r in results]})


# -- one model over the data ----------------------------------------------------------------

SCORES = ("prediction", "confidence", "loss", "correct")


def _complete_dataset(out) -> dict | None:
    """The manifest at ``out`` when it is a finished dataset new spaces can be added to."""
    f = Path(out) / MANIFEST
    if not f.is_file():
        return None
    try:
        m = json.loads(f.read_text())
    except ValueError:
        return None  # ExtractStore names the broken file
    ext = m.get("extract") or {}
    if ext and ext.get("status") != "complete":
        return None  # an unfinished extraction: resumed, or refused, by ExtractStore
    spaces = m.get("spaces") or {}
    if not spaces or any(sp.get("status") == "partial" for sp in spaces.values()):
        return None
    return m


def _extract_one(mdl, mdesc, data, *, tag, out, layers, pooling, batch_size, auto_batch,
                 backend, run_on, amp_dtype, dtype, workers, shard_rows, background_writer,
                 overwrite, n, seed, progress, t0, model_spec, model_seed,
                 device) -> ExtractResult:
    dev = run_on.device
    src = load_data(_text_data(mdl, data), n=n, seed=seed)
    mdl.eval().to(dev)
    layer_mods = resolve_layers(mdl, layers)
    dims, shapes, has_labels, classes, has_loss, pooled_how = _probe(
        mdl, src, layer_mods, pooling, run_on, amp_dtype)
    chunk_rows = _chunk_rows(dims, dtype, shard_rows)
    names = {k: (f"{k}@{tag}" if tag else k) for k in dims}
    # The weights hash names the model (class and every tensor), however it was passed.
    identity = {"weights": _weights_hash(mdl), "data": src.fingerprint,
                "layers": list(layer_mods), "pooling": pooling, "dtype": dtype,
                "amp": amp_dtype, "chunk_rows": chunk_rows}
    if tag:
        identity["tag"] = tag
    key = xxhash.xxh3_64(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    provenance = {"source": "extract", "model": mdesc, "data": src.description,
                  "pooling": pooling, "amp": amp_dtype,
                  "output_shapes": {k: list(v[1:]) for k, v in shapes.items()}}
    if tag:
        provenance["tag"] = tag
    if src.lengths is not None:
        provenance["batching"] = ("by length within each chunk (longest first), rows "
                                  "restored to input order")
    # Each space says how its vectors were pooled, and whether over real tokens only.
    per_space = {k: {"pooled": pooled_how[k], "output_shape": list(shapes[k][1:])}
                 for k in dims}
    cluster = cluster_implementation("extract")
    result_kw = dict(path=Path(out), spaces=tuple(names.values()),
                     dims={names[k]: d for k, d in dims.items()}, dtype=dtype,
                     device=str(dev), backend=backend.name, batch_size=batch_size,
                     amp=amp_dtype)
    existing = None if overwrite else _complete_dataset(out)
    adding = existing is not None and (existing.get("extract") or {}).get("key") != key
    if adding:
        have = existing.get("spaces", {})
        if all(have.get(nm, {}).get("provenance", {}).get("extract_key") == key
               for nm in names.values()):
            log.info("extract: %s already holds these spaces; nothing to do", out)
            return _result(Path(out), result_kw, t0, computed=0, resumed=0, cached=True)
        _check_addable(out, existing, names, src, identity, tag, classes)
        store_path = Path(out) / "cache" / f"extract-{key}"
    else:
        store_path = Path(out)
    if cluster is not None:  # chunks on the workers (bigembed.distributed); nothing written yet
        if tag or adding:
            raise InputError(
                "cluster: tagged checkpoints (--weights / --tag) and spaces added to an "
                "existing dataset are extracted in one process for now; run this without "
                "--cluster")
        cluster.check(out=out, src=src)
    store = ExtractStore(store_path, identity=identity, key=key, dims=dims, dtype=dtype,
                         chunk_rows=chunk_rows, total_rows=src.rows, provenance=provenance,
                         space_provenance=per_space, overwrite=overwrite and not adding,
                         names=names).open()
    if store.complete and not adding:
        log.info("extract: %s already holds this extraction; nothing to do", out)
        return _result(Path(out), result_kw, t0, computed=0, resumed=store.done_rows,
                       cached=True)
    resumed = store.done_rows
    if cluster is not None and not store.complete:
        return cluster.run(store=store, src=src, model=model_spec, data=data, n=n, seed=seed,
                           model_seed=model_seed, layers=list(layer_mods), pooling=pooling,
                           amp=amp_dtype, dtype=dtype, device=device, batch_size=batch_size,
                           auto_batch=auto_batch, dims=dims, chunk_rows=chunk_rows,
                           has_labels=has_labels, classes=classes, has_loss=has_loss,
                           identity=identity, model_desc=mdesc, result_kw=result_kw, t0=t0,
                           progress=progress)
    computed, timings = 0, {}
    if not store.complete:
        computed, timings = _run(store, src, mdl, dims, run_on, amp_dtype, auto_batch,
                                 batch_size, workers, has_labels, classes, has_loss, dtype,
                                 chunk_rows, layer_mods, pooling, progress,
                                 suffix=f"@{tag}" if tag else "", t0=t0,
                                 background_writer=background_writer)
    if adding:
        _commit_added(Path(out), store, names, existing, provenance)
    return _result(Path(out), result_kw, t0, computed=computed, resumed=resumed,
                   timings=timings)


def _check_addable(out, existing, names, src, identity, tag, classes) -> None:
    """Refuse, before anything runs, to add spaces that cannot join the dataset at ``out``."""
    have = existing.get("spaces", {})
    clash = [nm for nm in names.values() if nm in have]
    if clash:
        layer = next(k for k, v in names.items() if v == clash[0])
        raise InputError(
            f"out: dataset {out} already has space(s) {clash} (made by another model or "
            f"other settings); pass --tag NAME to add these as {layer}@NAME, or choose "
            f"another --out. Nothing was written")
    rows = int(existing.get("rows") or 0)
    if src.rows is not None and src.rows != rows:
        raise InputError(
            f"data {src.description}: holds {src.rows} instances but dataset {out} has "
            f"{rows}; a new space needs one vector per existing instance, in the same order. "
            f"Nothing was written")
    cols = set((existing.get("meta") or {}).get("columns") or ())
    taken = [c for c in SCORES if c in cols]
    same_model = (existing.get("extract") or {}).get("identity", {}).get(
        "weights") == identity["weights"]
    if classes is not None and not tag and taken and not same_model:
        raise InputError(
            f"out: dataset {out} already has {taken} from another model; pass --tag NAME so "
            f"these spaces and scores are stored as LAYER@NAME and prediction@NAME. Nothing "
            f"was written")


def _commit_added(out: Path, store, names, existing, provenance) -> None:
    """Move the staged spaces of ``store`` into the dataset at ``out`` and add the new
    metadata columns (scores of this model); nothing already there changes."""
    import shutil

    import pyarrow.parquet as pq

    from ..dataset.writer import DatasetWriter

    staged = json.loads((store.path / MANIFEST).read_text())
    rows = int(staged["rows"])
    if rows != int(existing.get("rows") or 0):
        shutil.rmtree(store.path, ignore_errors=True)
        raise InputError(f"data: yielded {rows} instances but dataset {out} has "
                         f"{existing.get('rows')}; a new space needs one vector per existing "
                         f"instance. Nothing was added")
    meta = pq.read_table(store.path / staged["meta"]["file"])
    try:
        with DatasetWriter(out, mode="append", provenance=provenance) as dw:
            for nm in names.values():
                rec = staged["spaces"][nm]
                dw.adopt_space(nm, store.path / rec["dir"], rec)
            dw.merge_meta_columns(meta, must_match=("label",))
    finally:  # committed, or refused: either way the staged copy has no further use
        shutil.rmtree(store.path, ignore_errors=True)
    log.info("extract: added spaces %s to %s", list(names.values()), out)


def _run(store, src, mdl, dims, run_on, amp_dtype, auto_batch, batch_size, workers,
         has_labels, classes, has_loss, dtype, chunk_rows, layer_mods, pooling, progress, *,
         suffix, t0, background_writer=True):
    """The pass over the data: batches through the model, chunks to ``store``; finishes it."""
    resumed = store.done_rows
    dev = run_on.device
    if workers is None:
        workers = run_on.default_workers if src.workers is None else src.workers
    if not src.map_style and batch_size != 256:
        log.info("batch_size is ignored: the data yields its own batches")
    writer = ChunkWriter(store, background=background_writer)
    chunker = _Chunker(writer, src, dims, chunk_rows=chunk_rows, index=store.done_chunks,
                       start=resumed, has_labels=has_labels, classes=classes,
                       has_loss=has_loss, dtype=dtype, suffix=suffix)
    batches = _Batches(src, start=resumed, chunk_rows=chunk_rows, batch_size=batch_size,
                       workers=workers, pin=run_on.pin_memory)
    cap = Capture(layer_mods, pooling)
    runner = _Runner(mdl, cap, run_on, amp_dtype, auto_batch)
    bar = progress_bar(total=src.rows, initial=resumed, desc="extract", unit="items",
                       enabled=progress)
    pending: deque = deque()
    computed = 0
    t_model = 0.0

    def drain(keep: int) -> None:
        # Host copies were queued non-blocking; wait for the oldest only when it is needed,
        # so the device runs the next batch meanwhile.
        while len(pending) > keep:
            event, rows, pooled, logits, labels = pending.popleft()
            if event is not None:
                event.synchronize()
            host = {k: v.numpy() for k, v in pooled.items()}
            chunker.add(host, None if logits is None else logits.numpy(), labels, rows)
            bar.update(len(rows))

    i = -1
    try:
        with cap:
            for i, (rows, x, y) in enumerate(batches):
                n_b = batch_rows(x)
                if n_b != len(rows):
                    raise ExtractError(f"data: batch {i} holds {n_b} instances where "
                                       f"{len(rows)} were asked for")
                where = f"batch {i} ({_where(rows)})"
                ts = time.perf_counter()
                try:
                    pooled, logits = runner.forward(x, y, where)
                except (InputError, ExtractError):
                    raise
                except Exception as e:
                    drain(0)  # batches already computed still make their chunks
                    raise ExtractError(
                        f"the model raised {type(e).__name__} on {where}: {e}. The "
                        f"{chunker.index} finished chunks ({chunker.start} rows) are kept; "
                        f"rerun the same command to resume") from None
                if auto_batch:
                    batches.batch_size = max(1, AUTO_BATCH >> runner.halvings)
                nb = run_on.async_copies
                pooled = {k: v.to("cpu", non_blocking=nb) for k, v in pooled.items()}
                if logits is not None:
                    logits = logits.to("cpu", non_blocking=nb)
                event = run_on.event()
                t_model += time.perf_counter() - ts
                pending.append((event, rows, pooled, logits, _labels_numpy(y, n_b)))
                computed += n_b
                drain(1)
            drain(0)
            chunker.flush()
        writer.close()
    except BaseException:
        bar.close()
        writer.abandon()  # the chunks finished before the failure stay on disk, listed
        raise
    bar.close()
    total = store.done_rows
    if src.rows is not None and total != src.rows:
        raise ExtractError(f"data {src.description}: says it has {src.rows} instances but "
                           f"yielded {total}")
    if total == 0:
        raise InputError(f"data {src.description}: holds no instances")
    seconds = time.perf_counter() - t0
    timings = {"model_s": round(t_model, 3), "write_s": round(writer.write_seconds, 3),
               "batches": i + 1, "oom_halvings": runner.halvings}
    store.finish({"rows": total, "rows_computed": computed, "seconds": round(seconds, 3),
                  "items_per_s": round(computed / max(seconds, 1e-9), 1), "device": str(dev),
                  "batch_size": batches.batch_size, **timings})
    return computed, timings


def _text_data(model, data):
    """For a text model, texts (a file or a list of strings) become a dataset of texts that
    tokenises a batch at a time (see :class:`bigembed.extract.text.TextBatches`)."""
    from .text import TextBatches, is_text_model, read_texts

    if not is_text_model(model):
        return data
    return TextBatches(read_texts(data), model)


def _result(path: Path, kw, t0, *, computed, resumed, cached=False, timings=None):
    m = json.loads((Path(path) / MANIFEST).read_text())
    nbytes = sum(s["bytes"] for name in kw["spaces"] for s in m["spaces"][name]["shards"])
    shards = len(m["spaces"][kw["spaces"][0]]["shards"])
    return ExtractResult(rows=int(m["rows"]), shards=shards, bytes=nbytes,
                         seconds=time.perf_counter() - t0, rows_computed=computed,
                         rows_resumed=resumed, cached=cached, timings=timings or {}, **kw)


def inspect_layers(*, model, data=None, n: int | None = None, seed: int = 0,
                   model_seed: int = 0) -> list[dict]:
    """``[{name, type, output_shape}]`` for every named module, from one forward pass of the
    first (up to 2) instances of ``data``; without data, names and types only."""
    torch()  # the install hint when torch is missing
    if data is None and model == "digits":
        data, n = "digits", n or 2
    from .text import PROBE_TEXTS, is_text_model

    mdl, _ = load_model(model, seed=model_seed)
    mdl.eval()
    if data is None and is_text_model(mdl):
        data = list(PROBE_TEXTS)  # a text model needs no data to show its shapes
    if data is None:
        return [{"name": k, "type": type(m).__name__, "output_shape": None}
                for k, m in mdl.named_modules() if k]
    src = load_data(_text_data(mdl, data), n=n, seed=seed)
    if src.map_style:
        first = next(iter(src.loader(batch_size=min(2, src.rows))))
    else:
        first = next(iter(src.data))
    x, _ = split_batch(first, "data batch 0")

    def run():
        return mdl(**x) if isinstance(x, dict) else mdl(x)

    return list_layers(mdl, run)
