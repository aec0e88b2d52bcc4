"""The one benchmark harness: timing with warm-up and repeats, peak memory, machine facts and
library versions, JSON results. ``bigembed bench`` and every suite in ``benchmarks/`` use it.

Benchmarks compare against the plain library a user would otherwise call, in the same run,
and report ratios (these machines are shared and noisy); speed is never asserted in tests.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

LIBRARIES = ("bigembed", "numpy", "pyarrow", "pandas", "scikit-learn", "faiss-cpu",
             "faiss-gpu", "umap-learn", "opentsne", "pynndescent", "numba", "datashader",
             "bokeh", "holoviews", "torch", "triton", "cupy", "cuml", "dask")


def versions() -> dict:
    """Installed versions of the libraries that matter here (absent ones omitted)."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict:
    """CPU model, cores, memory, and GPU name/memory when torch sees one."""
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = p.name
            info["gpu_memory_gb"] = round(p.total_memory / 2**30, 1)
    except ImportError:
        pass
    return info


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs (after warm-up)."""

    times: list
    warmup_s: float | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range (or max - min under 4 repeats)."""
        t = sorted(self.times)
        if len(t) < 4:
            return t[-1] - t[0]
        q = statistics.quantiles(t, n=4)
        return q[2] - q[0]

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(median=self.median, spread=self.spread, repeats=len(self.times))
        return d


class _PeakRSS:
    """Samples this process's resident memory in a thread; ``peak_mb`` after exit."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        try:
            import psutil

            self._proc = psutil.Process()
        except ImportError:
            self._proc = None
            return self
        self.peak = self._proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._t.join()
            self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float | None:
        return round(self.peak / 2**20, 1) if self._proc is not None else None


def _timed_call(fn, setup, sync) -> float:
    """Seconds of one ``fn()`` (plus ``sync()``); ``setup()`` runs before, untimed."""
    if setup:
        setup()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t0


def measure(fn, *, repeat: int = 3, warmup: int = 1, setup=None, sync=None,
            deadline: float | None = None) -> Timing:
    """Run ``fn()`` ``warmup`` times (timed apart: JIT, CUDA context), then ``repeat`` times.

    ``setup()`` runs untimed before every call; ``sync()`` (e.g. ``torch.cuda.synchronize``)
    runs inside the timed region after each call. ``deadline`` (a ``time.perf_counter()``
    value) stops the repeats early once passed; at least one timed run always happens.
    """
    warm = None
    for _ in range(warmup):
        warm = (warm or 0.0) + _timed_call(fn, setup, sync)
    times = []
    gpu_peak = None
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            gpu_peak = True
    except ImportError:
        pass
    with _PeakRSS() as mem:
        for i in range(max(1, repeat)):
            if i and deadline is not None and time.perf_counter() > deadline:
                break
            times.append(_timed_call(fn, setup, sync))
    if gpu_peak:
        import torch

        gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return Timing(times, warm, mem.peak_mb, gpu_peak or None)


def fit_power_law(sizes, seconds) -> dict | None:
    """Least-squares fit of ``seconds ~ c * size ** exponent`` in log-log space.

    Returns ``{"exponent", "coefficient", "r2", "points"}``, or None with fewer than two
    distinct positive sizes.
    """
    import numpy as np

    pts = [(float(n), float(t)) for n, t in zip(sizes, seconds)
           if n and t and n > 0 and t > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    lx = np.log([n for n, _ in pts])
    ly = np.log([t for _, t in pts])
    slope, icept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + icept)
    ss = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss if ss > 0 else 1.0
    return {"exponent": round(float(slope), 3), "coefficient": float(np.exp(icept)),
            "r2": round(r2, 4), "points": len(pts)}


def results_doc(suite: str, results, *, params: dict | None = None) -> dict:
    """The JSON document every benchmark writes: suite, when, machine, versions, results."""
    return {
        "suite": suite,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "params": params or {},
        "results": results,
    }


def write_results(path, doc: dict) -> Path:
    """Write a results document as JSON (atomically); returns the path."""
    from ..dataset._atomic import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, json.loads(json.dumps(doc, default=_default)))
    return path


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Timing):
        return o.to_json()
    return str(o)
