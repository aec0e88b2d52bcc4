"""Search backends (stage ``"knn"`` in the registry), each implementing :class:`SearchBackend`:
``faiss-gpu`` (moves stored CPU indexes to the GPU), ``torch`` (bigembed's exact kernel,
:mod:`bigembed.kernels.knn`, for a GPU without FAISS GPU) and ``faiss-cpu``."""

from __future__ import annotations

import logging
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..registry import cuda_check, declare

log = logging.getLogger(__name__)


@runtime_checkable
class SearchBackend(Protocol):
    """Where FAISS-convention searches run (``search(q, k) -> (D, I)``: squared L2 ascending
    or inner product descending).

    ``to_device(index)``: the stored CPU index as this backend searches it (moved to the GPU,
    or unchanged). ``exact_searcher(vectors, metric)``: the backend's own exact search over
    ``vectors()`` (float32 (N, d), made only when needed; ``metric`` "l2" or "ip"), or None
    where exact search is FAISS's flat index.
    """

    gpu: bool

    def to_device(self, index): ...

    def exact_searcher(self, vectors: Callable[[], np.ndarray], metric: str): ...


SEARCH = declare("knn", SearchBackend, description="nearest-neighbour search")


def _faiss_gpu_check() -> str | None:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return "the installed faiss has no GPU support (faiss-cpu)"
    if faiss.get_num_gpus() < 1:
        return "FAISS sees no GPU"
    return None


class FaissCPU:
    gpu = False

    def to_device(self, index):
        return index

    def exact_searcher(self, vectors, metric):
        return None


class FaissGPU:
    """FAISS on GPU 0; indexes are stored in CPU form and moved on load."""

    gpu = True

    def __init__(self):
        import faiss

        self._res = faiss.StandardGpuResources()

    def to_device(self, index):
        import faiss

        try:
            return faiss.index_cpu_to_gpu(self._res, 0, index)
        except (RuntimeError, AttributeError) as e:  # e.g. HNSW has no GPU form
            log.info("faiss-gpu: keeping %s on the CPU (%s)", type(index).__name__, e)
            return index

    def exact_searcher(self, vectors, metric):
        return None


class TorchExact:
    """Exact search with :func:`bigembed.kernels.knn.knn_torch` on a torch device; other
    index kinds stay FAISS on the CPU."""

    gpu = True

    def __init__(self, device: str = "cuda"):
        self.device = device

    def to_device(self, index):
        return index

    def exact_searcher(self, vectors, metric):
        return _TorchSearcher(vectors(), metric, self.device)


class _TorchSearcher:
    """Has FAISS's ``search(q, k) -> (D, I)`` over a base held on a torch device."""

    def __init__(self, x: np.ndarray, metric: str, device: str):
        import torch

        self.torch = torch
        self.device = device
        self.base = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
        self.metric = "l2" if metric == "l2" else "ip"
        self.dtype = torch.bfloat16 if device != "cpu" else torch.float32
        self.lowp = self.base.to(self.dtype)
        self.sqnorm = (self.base * self.base).sum(1) if self.metric == "l2" else None
        self.ntotal, self.d = x.shape

    def search(self, q: np.ndarray, k: int):
        from ..kernels.knn import knn_torch

        qt = self.torch.from_numpy(np.ascontiguousarray(q, np.float32)).to(self.device)
        d, i = knn_torch(qt, self.base, k, metric=self.metric, compute_dtype=self.dtype,
                         base_lowp=self.lowp, base_sqnorm=self.sqnorm)
        return d.cpu().numpy(), i.cpu().numpy()


SEARCH.register("faiss-gpu", FaissGPU, requires=("faiss",), check=_faiss_gpu_check,
                install="pip install faiss-gpu-cu12 (replaces faiss-cpu)", gpu=True,
                description="FAISS indexes on the GPU")
SEARCH.register("torch", TorchExact, requires=("torch",), check=cuda_check,
                install="install a CUDA build of torch", gpu=True,
                description="bigembed's exact bf16 matmul + fp32 re-rank kernel on CUDA")
SEARCH.register("faiss-cpu", FaissCPU, requires=("faiss",),
                install="pip install faiss-cpu", description="FAISS on the CPU")
