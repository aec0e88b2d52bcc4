"""What a benchmark stage sees (:class:`BenchContext`) and what it hands back (:class:`Trial`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .quality import exact_neighbors, sample_ids


class StageSkipped(Exception):
    """A stage (or peer) cannot run here; the message says why. Reported, never faked."""


@dataclass
class Trial:
    """One thing to time: ``run()`` (its return value goes to ``quality``), with an untimed
    ``setup()`` before every call.

    ``name`` is ``"bigembed"`` for the library's own stage, else the peer library call;
    ``items`` is how many units one call handles (queries for lookup) so per-item time can
    be reported; ``max_n`` caps the sizes a slow peer is run at (None: no cap).

    ``warm``, when given, replaces the full-size warm-up run: a call on a small sample that
    pays the one-off costs (numba JIT, imports), timed apart. Slow peers use it so warming
    up does not cost a second full fit; its time also seeds the budget's prediction.
    ``max_repeat`` caps the timed repeats of a slow trial.
    """

    name: str
    run: Callable[[], Any]
    what: str = ""
    setup: Callable[[], None] | None = None
    quality: Callable[[Any], dict] | None = None
    backend: str | None = None
    items: int = 1
    max_n: int | None = None
    warm: Callable[[], Any] | None = None
    warm_n: int | None = None
    max_repeat: int | None = None


@dataclass
class BenchContext:
    """The synthetic dataset of one size and the run's settings."""

    n: int
    dim: int
    dataset: Path
    work: Path
    device: str = "cpu"
    seed: int = 0
    k: int = 15
    compare: bool = False
    reduce_method: str = "pca"
    quality_sample: int = 1000
    peer_max_n: dict = field(default_factory=dict)
    _truth: dict = field(default_factory=dict)

    @cached_property
    def ds(self):
        from ..dataset import Dataset

        return Dataset.open(self.dataset)

    @cached_property
    def x(self) -> np.ndarray:
        """The space's vectors as a float32 array of shape (n, dim) (one copy, reused)."""
        return np.ascontiguousarray(self.ds.space().vectors, dtype=np.float32)

    @cached_property
    def queries(self) -> np.ndarray:
        """Seeded sample of query ids for quality measures: shape (s,)."""
        return sample_ids(self.n, self.quality_sample, self.seed + 1)

    def truth(self, k: int) -> np.ndarray:
        """Exact neighbours of :attr:`queries`, self excluded: (s, k) int64 (cached)."""
        if k not in self._truth:
            self._truth[k] = exact_neighbors(self.x, self.queries, k)
        return self._truth[k]

    def clear_artifacts(self, kind: str) -> None:
        """Delete every stored artifact of ``kind`` so a content-keyed stage recomputes."""
        ds = self.ds.reload()
        for name in list(ds.manifest.get(kind, {})):
            ds.remove_artifact(kind, name)
        self.__dict__["ds"] = ds.reload()


def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword parameter ``name`` (feature detection across branches)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def device_kwargs(fn, device: str, stage: str) -> dict:
    """Keyword arguments that pin ``fn`` to ``device``: ``device=`` where it takes one, else a
    CPU ``backend=`` from the registry when the CPU is asked for; nothing otherwise."""
    if "device" in _params(fn):
        return {"device": device}
    if device == "cpu" and "backend" in _params(fn):
        from .. import registry

        cpu = [n for n, b in registry.backends(stage).items()
               if not b.gpu and b.unavailable_reason() is None]
        if cpu:
            return {"backend": cpu[0]}
    return {}


def _params(fn) -> dict:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}
