"""The demo model: a small CNN on scikit-learn's handwritten digits (no download).

The 1,797 real 8 x 8 digits ship with scikit-learn. The CNN trains on a seeded split in a few
seconds on one CPU core and is cached (``$BIGEMBED_CACHE`` or ``~/.cache/bigembed``), so the
first use trains it and later uses load it. :class:`DigitsData` makes any number of instances:
ids below 1,797 are the real digits, later ids are augmented copies (rotation, scale, shift,
noise) whose parameters come from a counter-based hash of ``(seed, id)``, so instance ``i`` is
the same whatever the batch it is computed in, and a resumed extraction matches a fresh one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..dataset import _atomic
from ..errors import InputError

log = logging.getLogger(__name__)

VERSION = 1
N_REAL = 1797
#: layers captured by default: a convolutional map (mean-pooled) and the penultimate layer
DEFAULT_LAYERS = ("conv2", "fc1")


def cache_dir() -> Path:
    d = os.environ.get("BIGEMBED_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "bigembed"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Images of shape (1797, 8, 8) float32 in [0, 1] and labels (1797,) int64."""
    import importlib.util

    # Read scikit-learn's bundled file directly: importing sklearn costs seconds.
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
        images, target = raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images.astype(np.float32), d.target.astype(np.int64)
    if images.shape != (N_REAL, 8, 8):
        raise InputError(f"scikit-learn's digits have shape {images.shape}, expected "
                         f"({N_REAL}, 8, 8)")
    return images / np.float32(16.0), target


def _hash_uniform(seed: int, ids: np.ndarray, k: int) -> np.ndarray:
    """Uniform [0, 1) numbers of shape (len(ids), k), a pure function of (seed, id, column).

    splitmix64 on a counter: per-instance randomness that does not depend on batching.
    """
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + ids.astype(np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)
             + np.arange(k, dtype=np.uint64)[None, :] * np.uint64(0x94D049BB133111EB))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def augment(images: np.ndarray, ids: np.ndarray, seed: int):
    """Augmented copies of ``images`` (B, 8, 8): rotation +-15 deg, scale 0.9-1.1, shift +-1 px,
    uniform noise +-0.08. Returns a float32 torch tensor of shape (B, 1, 8, 8)."""
    import torch
    import torch.nn.functional as F

    u = _hash_uniform(seed, ids, 5 + 64)
    ang = np.deg2rad((u[:, 0] - 0.5) * 30.0)
    scale = 0.9 + 0.2 * u[:, 1]
    tx, ty = (u[:, 2] - 0.5) * 0.5, (u[:, 3] - 0.5) * 0.5  # 1 px = 2/8 in grid units
    cos, sin = np.cos(ang) / scale, np.sin(ang) / scale
    theta = np.stack([np.stack([cos, -sin, tx], 1), np.stack([sin, cos, ty], 1)], 1)
    x = torch.from_numpy(images[:, None])
    grid = F.affine_grid(torch.from_numpy(theta.astype(np.float32)), list(x.shape),
                         align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    noise = torch.from_numpy(((u[:, 5:] - 0.5) * 0.16).astype(np.float32)).view(-1, 1, 8, 8)
    return (out + noise).clamp_(0.0, 1.0)


class DigitsData:
    """A map-style dataset of ``n`` digits: ``data[i] -> (image (1, 8, 8) float32, label)``.

    Ids below 1,797 are the real images (when ``augment_all`` is False); the rest are
    augmented copies of image ``i % 1797``. ``__getitems__`` builds a whole batch at once.
    """

    def __init__(self, n: int, *, seed: int = 0, augment_all: bool = False):
        from ..errors import check_positive_int

        self.n = check_positive_int("n", n)
        self.seed = int(seed)
        self.augment_all = augment_all
        self.images, self.labels = _digits()
        self.fingerprint = f"digits-v{VERSION}:n={self.n}:seed={self.seed}:all={augment_all}"

    def __len__(self) -> int:
        return self.n

    def batch(self, ids: np.ndarray):
        """(images (B, 1, 8, 8) float32 tensor, labels (B,) int64 tensor) for ``ids``."""
        import torch

        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f"digit ids must be in [0, {self.n}), got {ids.min()}..{ids.max()}")
        base = ids % N_REAL
        x = augment(self.images[base], ids, self.seed)
        if not self.augment_all:
            real = ids < N_REAL
            if real.any():
                x[torch.from_numpy(real)] = torch.from_numpy(self.images[base[real]][:, None])
        return x, torch.from_numpy(self.labels[base])

    def __getitem__(self, i):
        x, y = self.batch(np.array([i]))
        return x[0], y[0]

    def __getitems__(self, ids):
        x, y = self.batch(np.asarray(ids))
        return list(zip(x.unbind(0), y.unbind(0)))

    def metadata(self, start: int, stop: int) -> dict:
        """Extra per-instance columns for ids ``start..stop-1``."""
        ids = np.arange(start, stop, dtype=np.int64)
        return {"key": np.array([f"digit-{i}" for i in ids], dtype=object),
                "source_image": ids % N_REAL,
                "augmented": (ids >= N_REAL) | self.augment_all}


def _build_cnn():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        """(B, 1, 8, 8) digits -> (B, 10) logits. Named layers: conv1, conv2, pool, fc1, fc2."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(32 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)
            self.act = nn.ReLU()

        def forward(self, x):
            x = self.act(self.conv1(x))
            x = self.pool(self.act(self.conv2(x)))
            x = self.act(self.fc1(x.flatten(1)))
            return self.fc2(x)

    return DigitsCNN()


#: the early checkpoint kept beside the final model (after this many epochs)
EARLY_EPOCH = 1


def _train(seed: int, *, epochs: int = 12) -> tuple[object, dict]:
    import torch

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # Tiny batches: one thread is as fast, and immune to a busy machine's thread contention.
    torch.set_num_threads(1)
    try:
        return _train_loop(seed, epochs, t0)
    finally:
        torch.set_num_threads(threads)


def _train_loop(seed: int, epochs: int, t0: float):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    images, labels = _digits()
    perm = np.random.default_rng(seed).permutation(N_REAL)
    train, test = perm[:1500], perm[1500:]
    model = _build_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed + 1)
    counter = 0
    early = None
    for epoch in range(epochs):
        order = rng.permutation(train)
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            # Half real images, half augmented ones, so the model copes with both.
            aug = augment(images[idx], np.arange(counter, counter + len(idx)) + 10**9, seed)
            counter += len(idx)
            x = torch.cat([torch.from_numpy(images[idx][:, None]), aug])
            y = torch.from_numpy(np.concatenate([labels[idx], labels[idx]]))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch + 1 == EARLY_EPOCH:
            early = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(images[test][:, None])).argmax(1).numpy()
    info = {"version": VERSION, "seed": seed, "epochs": epochs,
            "test_accuracy": float((pred == labels[test]).mean()), "test_rows": len(test),
            "train_seconds": round(time.perf_counter() - t0, 2), "early": early}
    return model, info


def load_model(*, seed: int = 0, retrain: bool = False):
    """The trained demo CNN (eval mode), trained on first use and cached; returns the module.

    The cache holds ``digits-cnn-v{VERSION}-seed{seed}.pt`` (state dict) and a ``.json`` with
    its held-out accuracy.
    """
    import torch

    d = cache_dir()
    path = d / f"digits-cnn-v{VERSION}-seed{seed}.pt"
    model = _build_cnn()
    if path.is_file() and not retrain:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
            return model
        except Exception as e:  # a damaged cache file: retrain rather than fail
            log.warning("cached digits model %s unreadable (%s); retraining", path, e)
    model, info = _train(seed)
    early = info.pop("early")
    log.info("trained the digits CNN in %.1fs (held-out accuracy %.3f); cached in %s",
             info["train_seconds"], info["test_accuracy"], path)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with _atomic.atomic_path(_early_path(seed)) as tmp:
            torch.save(early, tmp)
        with _atomic.atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
        _atomic.write_json(path.with_suffix(".json"), info)
    except OSError as e:  # a read-only home still gets a working model
        log.warning("could not cache the digits model in %s: %s", d, e)
    return model


def _early_path(seed: int) -> Path:
    return cache_dir() / f"digits-cnn-v{VERSION}-seed{seed}-epoch{EARLY_EPOCH}.pt"


def checkpoints(*, seed: int = 0) -> dict:
    """State-dict files of the demo CNN during training: ``{"epoch1": early, "final": ...}``,
    for ``extract --weights`` (trained and cached on first use, like :func:`load_model`)."""
    final = cache_dir() / f"digits-cnn-v{VERSION}-seed{seed}.pt"
    early = _early_path(seed)
    if not (early.is_file() and final.is_file()):
        load_model(seed=seed, retrain=final.is_file())  # training is seeded: same final
    return {f"epoch{EARLY_EPOCH}": early, "final": final}


def model_info(*, seed: int = 0) -> dict:
    """The cached model's training record (held-out accuracy), training it if needed."""
    load_model(seed=seed)
    return json.loads((cache_dir() / f"digits-cnn-v{VERSION}-seed{seed}.json").read_text())


def build_digits_dataset(out, *, n: int, seed: int = 0, layers=None, device: str = "auto",
                         pooling: str = "mean", batch_size=256, dtype: str = "float32",
                         overwrite: bool = False, progress=None):
    """Extract the demo CNN's activations for ``n`` digits into the dataset at ``out``.

    Each of ``layers`` (default :data:`DEFAULT_LAYERS`) becomes a space; meta holds label,
    prediction, confidence, loss, correct, key, source_image and augmented. Resumable like
    :func:`bigembed.extract.extract`. Returns its :class:`~bigembed.extract.ExtractResult`.
    """
    from ..extract.run import extract

    if layers is None:
        layers = list(DEFAULT_LAYERS)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be an integer >= 1, got {n!r}")
    return extract(model="digits", data=DigitsData(int(n), seed=seed), out=out, layers=layers,
                   pooling=pooling, batch_size=batch_size, device=device, dtype=dtype,
                   overwrite=overwrite, progress=progress, model_seed=seed)


def digit_pngs(data: DigitsData, ids) -> np.ndarray:
    """PNG bytes of instances ``ids`` as the model sees them: 8 x 8 grayscale, ink dark on
    white. Returns an object array of shape (len(ids),)."""
    import io

    from PIL import Image

    x, _ = data.batch(np.asarray(ids, dtype=np.int64))
    pix = np.rint(255.0 * (1.0 - x[:, 0].numpy())).astype(np.uint8)
    out = np.empty(len(pix), dtype=object)
    for j, a in enumerate(pix):
        buf = io.BytesIO()
        Image.fromarray(a, mode="L").save(buf, format="PNG")
        out[j] = buf.getvalue()
    return out


def add_digit_images(path, *, batch_rows: int = 4096, progress=None) -> bool:
    """Add an ``image`` metadata column (:func:`digit_pngs` of every instance) to a digits
    dataset made by :func:`build_digits_dataset`, so the map's hover shows each digit.

    The instances are rebuilt from the extraction's recorded data fingerprint (size, seed,
    augmentation), so each image is exactly the input its vectors came from. The metadata is
    replaced atomically. Returns False when the column is already there.
    """
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..dataset.reader import Dataset
    from ..dataset.writer import DatasetWriter
    from ..progress import progress_bar

    ds = Dataset.open(path)
    if "image" in ds.meta.columns:
        return False
    fp = str(((ds.manifest.get("extract") or {}).get("identity") or {}).get("data", ""))
    m = re.fullmatch(rf"digits-v{VERSION}:n=(\d+):seed=(-?\d+):all=(True|False)", fp)
    if m is None or int(m.group(1)) != ds.rows:
        raise InputError(f"dataset {ds.path} was not extracted from the digits demo data "
                         f"(its data fingerprint is {fp!r}); cannot rebuild its images")
    data = DigitsData(ds.rows, seed=int(m.group(2)), augment_all=m.group(3) == "True")
    images = np.empty(ds.rows, dtype=object)
    with progress_bar(total=ds.rows, desc="digit images", unit="images",
                      enabled=progress) as bar:
        for start in range(0, ds.rows, batch_rows):
            stop = min(start + batch_rows, ds.rows)
            images[start:stop] = digit_pngs(data, np.arange(start, stop))
            bar.update(stop - start)
    table = pq.read_table(ds.path / ds.manifest["meta"]["file"])
    table = table.append_column("image", pa.array(images.tolist(), type=pa.binary()))
    with DatasetWriter(ds.path, mode="append") as dw:
        dw.set_meta(table)
    log.info("digits: added an image column (%d PNGs) to %s", ds.rows, ds.path)
    return True
