"""The torch kNN kernel (low-precision matmul, running top-k, fp32 re-rank) against the NumPy
reference: on the CPU device here, on CUDA where there is one."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bigembed.kernels.knn import knn_reference, knn_torch  # noqa: E402


def _recall(found, true, q, base, metric="l2"):
    """Recall counting ties: a found id counts when its exact distance is within the true k-th."""
    q64, b64 = q.astype(np.float64), base.astype(np.float64)
    if metric == "l2":
        key = lambda ids: ((q64[:, None, :] - b64[ids]) ** 2).sum(-1)  # noqa: E731
    else:
        key = lambda ids: -(q64[:, None, :] * b64[ids]).sum(-1)  # noqa: E731
    kth = key(true).max(1, keepdims=True)
    return float((key(found) <= kth + 1e-6 * np.maximum(1, np.abs(kth))).mean())


def _data(rng, n, d, m):
    base = rng.standard_normal((n, d)).astype(np.float32)
    base[10:20] = base[0]  # exact duplicates
    base[30] = 0.0  # a zero row
    q = np.concatenate([base[:m // 2], rng.standard_normal((m - m // 2, d)).astype(np.float32)])
    return q, base


def test_reference_matches_brute_force_sort(rng):
    q, base = _data(rng, 300, 7, 20)
    d, i = knn_reference(q, base, 5)
    full = ((q[:, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d, np.sort(full, 1)[:, :5], rtol=1e-5, atol=1e-5)
    di, ii = knn_reference(q, base, 5, metric="ip")
    ip = q.astype(np.float64) @ base.T.astype(np.float64)
    np.testing.assert_allclose(di, -np.sort(-ip, 1)[:, :5], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_torch_kernel_on_cpu_matches_reference(rng, metric, dtype):
    q, base = _data(rng, 2000, 24, 64)
    k = 10
    rd, ri = knn_reference(q, base, k, metric=metric)
    # Small blocks so the running top-k merges across many base chunks and query blocks.
    td, ti = knn_torch(torch.from_numpy(q), torch.from_numpy(base), k, metric=metric,
                       compute_dtype=getattr(torch, dtype), query_block=17, base_block=300)
    td, ti = td.numpy(), ti.numpy()
    assert ti.dtype == np.int64 and ti.shape == (64, k) and (ti >= 0).all()
    # Distances are exact fp32 after the re-rank: compare values (ties make ids ambiguous).
    np.testing.assert_allclose(td, rd, rtol=1e-4, atol=1e-3)
    assert _recall(ti, ri, q, base, metric) >= 0.99
    # Duplicates of row 0 are all at distance 0 from query 0 (l2).
    if metric == "l2":
        assert set(ti[0]) <= {0, *range(10, 20)}


def test_torch_kernel_edge_cases(rng):
    # d = 1, k = n (every row returned), and n smaller than the candidate pool.
    base = rng.standard_normal((7, 1)).astype(np.float32)
    q = base[:3].copy()
    rd, ri = knn_reference(q, base, 7)
    td, ti = knn_torch(torch.from_numpy(q), torch.from_numpy(base), 7)
    np.testing.assert_allclose(td.numpy(), rd, atol=1e-5)
    assert sorted(ti.numpy()[0].tolist()) == list(range(7))


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_kernel_on_cuda_matches_reference(rng, metric):
    q, base = _data(rng, 20000, 64, 256)
    rd, ri = knn_reference(q, base, 10, metric=metric)
    td, ti = knn_torch(torch.from_numpy(q).cuda(), torch.from_numpy(base).cuda(), 10,
                       metric=metric, base_block=4096)
    np.testing.assert_allclose(td.cpu().numpy(), rd, rtol=1e-3, atol=1e-2)
    assert _recall(ti.cpu().numpy(), ri, q, base, metric) >= 0.99
