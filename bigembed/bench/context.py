"""What a benchmark stage sees (:class:`BenchContext`) and what it hands back (:class:`Trial`)."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..search.exact import exact_neighbors, sample_ids


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
        from ..dataset.reader import Dataset

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


# -- workloads shared by bigembed's stages and their peers ------------------------------------

def import_api(module: str, attr: str, issue: str):
    """``module.attr``, or :class:`StageSkipped` naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise StageSkipped(f"{module} is not in this build ({issue})") from None
        raise StageSkipped(f"{module} cannot be imported ({issue}): {e}") from None
    except ImportError as e:
        raise StageSkipped(f"{module} cannot be imported ({issue}): {e}") from None
    if not hasattr(mod, attr):
        raise StageSkipped(f"{module}.{attr} is not in this build ({issue})")
    return getattr(mod, attr)


def quiet_kwargs(fn, **kw) -> dict:
    """``progress=False`` where the function takes it (bars would garble the bench table)."""
    return {"progress": False, **kw} if accepts(fn, "progress") else kw


def layout_xy(ctx: BenchContext, name: str):
    """(xy (N, 2), record) of a stored layout."""
    from ..dataset.layouts import load_layout

    lay = load_layout(ctx.ds.reload(), name=name)
    return lay.xy, lay.record


def base_layout(ctx: BenchContext) -> str:
    """A stored PCA layout for the render stage (made once, untimed)."""
    reduce = import_api("bigembed.reduce", "reduce", "foundation")
    kw = quiet_kwargs(reduce, method="pca", seed=ctx.seed)
    if accepts(reduce, "quality"):
        kw["quality"] = False  # a full kNN graph for it would cost more than the frames
    return reduce(ctx.ds, **kw).name


def nonempty_pixels(png: bytes) -> int:
    """How many pixels of a PNG differ from its top-left (background) pixel."""
    import io

    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return int((a != a[0, 0]).any(-1).sum())


RENDER_SIZE = 800


LOOKUP_QUERIES = 20


def mlp(dim: int, seed: int):
    """A small seeded MLP (Linear-ReLU-Linear-ReLU) over ``dim`` inputs, in eval mode."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 64), torch.nn.ReLU()).eval()


def vector_data(x: np.ndarray):
    """The vectors as a torch dataset of (input,) rows."""
    import torch

    return torch.utils.data.TensorDataset(torch.from_numpy(np.array(x, np.float32)))
