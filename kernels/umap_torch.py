"""UMAP's graph and layout optimisation in torch, for a GPU without cuML (runs on any device).

The same model as umap-learn (McInnes et al.): a fuzzy simplicial set from the kNN graph
(per-row ``rho`` and ``sigma`` by bisection, then the fuzzy union ``P + P^T - P * P^T``), and
stochastic gradient descent with edges sampled in proportion to their weight, attraction
``-2ab d^(2(b-1)) / (1 + a d^2b)``, ``negative_sample_rate`` repulsive samples per attraction,
gradients clipped to 4 and a learning rate decaying linearly to 0. umap-learn applies updates
one edge at a time on the CPU; here every edge due in an epoch is applied at once
(``index_add_``), as GPU implementations do, so a whole epoch is a few tensor operations.

No I/O, logging or validation here: :mod:`bigembed.reduce.backends` owns that.
"""

from __future__ import annotations

import math

import numpy as np

#: umap-learn's constants
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
BISECTION_STEPS = 64


def find_ab_params(spread: float = 1.0, min_dist: float = 0.1) -> tuple[float, float]:
    """``a, b`` of the curve ``1 / (1 + a d^2b)`` fitted to UMAP's target membership (the
    least-squares fit umap-learn makes)."""
    from scipy.optimize import curve_fit

    def curve(x, a, b):
        return 1.0 / (1.0 + a * x ** (2 * b))

    xv = np.linspace(0, spread * 3, 300)
    yv = np.where(xv < min_dist, 1.0, np.exp(-(xv - min_dist) / spread))
    (a, b), _ = curve_fit(curve, xv, yv)
    return float(a), float(b)


def fuzzy_graph(indices, distances, *, n_neighbors: int, device="cpu"):
    """UMAP's symmetric fuzzy graph from a kNN graph (self excluded).

    ``indices``, ``distances``: arrays of shape (n, k) (k = n_neighbors - 1: umap-learn counts
    the point itself as its first neighbour). Returns (head, tail, weight): 1-D tensors on
    ``device`` of the graph's edges, each undirected edge once per direction.
    """
    import torch

    ind = torch.as_tensor(np.asarray(indices), dtype=torch.int64, device=device)
    d = torch.as_tensor(np.asarray(distances), dtype=torch.float64, device=device)
    n, k = d.shape
    # rho: distance to the nearest neighbour at a positive distance (local_connectivity = 1)
    pos = torch.where(d > 0, d, torch.full_like(d, math.inf))
    rho = pos.min(1).values
    rho = torch.where(torch.isfinite(rho), rho, torch.zeros_like(rho))
    target = math.log2(n_neighbors)
    lo = torch.zeros(n, dtype=torch.float64, device=device)
    hi = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    mid = torch.ones(n, dtype=torch.float64, device=device)
    gap = (d - rho[:, None]).clamp(min=0)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(BISECTION_STEPS):
        psum = torch.exp(-gap / mid[:, None]).sum(1)
        done = done | ((psum - target).abs() < SMOOTH_K_TOLERANCE)
        over = (psum > target) & ~done
        under = (psum < target) & ~done
        hi = torch.where(over, mid, hi)
        lo = torch.where(under, mid, lo)
        mid = torch.where(over, (lo + hi) / 2,
                          torch.where(under, torch.where(torch.isinf(hi), mid * 2, (lo + hi) / 2),
                                      mid))
        if bool(done.all()):
            break
    mean_row = d.mean(1)
    floor = torch.where(rho > 0, MIN_K_DIST_SCALE * mean_row,
                        torch.full_like(rho, MIN_K_DIST_SCALE * float(d.mean()) if d.numel() else 0))
    sigma = torch.maximum(mid, floor)
    w = torch.exp(-gap / sigma[:, None]).to(torch.float32)
    rows = torch.arange(n, device=device).repeat_interleave(k)
    cols = ind.reshape(-1)
    keep = (cols >= 0) & (cols != rows)  # no self loops (umap-learn: membership 0)
    p = torch.sparse_coo_tensor(torch.stack([rows[keep], cols[keep]]), w.reshape(-1)[keep],
                                (n, n), check_invariants=False).coalesce()
    pt = p.transpose(0, 1).coalesce()
    u = (p + pt - p * pt).coalesce()
    head, tail = u.indices()
    val = u.values()
    nz = val > 0
    return head[nz], tail[nz], val[nz]


def optimize_layout(head, tail, weight, init, *, n_epochs: int, a: float, b: float,
                    negative_sample_rate: int = 5, gamma: float = 1.0,
                    learning_rate: float = 1.0, seed: int = 0, callback=None):
    """UMAP's SGD of the 2-D layout; returns an array of shape (n, 2) float32.

    ``head``, ``tail``, ``weight``: edges (1-D tensors, all on the device the work runs on);
    ``init``: array (n, 2), rescaled to [0, 10] as umap-learn does. ``callback(epoch)`` is
    called after every epoch (progress).
    """
    import torch

    dev = head.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    y = torch.as_tensor(np.asarray(init, np.float32), device=dev).clone()
    lo, hi = y.min(0).values, y.max(0).values
    y = 10.0 * (y - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    n = y.shape[0]
    wmax = float(weight.max()) if weight.numel() else 1.0
    keep = weight >= wmax / n_epochs  # umap-learn drops edges that would never be sampled
    head, tail, weight = head[keep], tail[keep], weight[keep]
    eps = (wmax / weight).to(torch.float32)  # epochs per sample
    eps_neg = eps / negative_sample_rate
    next_s = eps.clone()
    next_neg = eps_neg.clone()
    for epoch in range(n_epochs):
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        due = torch.nonzero(next_s <= epoch + 1, as_tuple=True)[0]
        if due.numel():
            h, t = head[due], tail[due]
            diff = y[h] - y[t]
            d2 = (diff * diff).sum(1, keepdim=True)
            coef = torch.where(d2 > 0, -2.0 * a * b * d2.clamp(min=1e-12).pow(b - 1.0)
                               / (a * d2.pow(b) + 1.0), torch.zeros_like(d2))
            g = (coef * diff).clamp(-4.0, 4.0) * alpha
            step = torch.zeros_like(y)
            step.index_add_(0, h, g)
            step.index_add_(0, t, -g)
            next_s[due] += eps[due]
            # negative samples: as many as umap-learn's counters owe each due edge
            owed = ((epoch + 1 - next_neg[due]) / eps_neg[due]).floor().clamp(min=0)
            owed = owed.to(torch.int64)
            next_neg[due] += owed.to(torch.float32) * eps_neg[due]
            hn = h.repeat_interleave(owed)
            if hn.numel():
                kn = torch.randint(0, n, (hn.numel(),), generator=gen, device=dev)
                diff = y[hn] - y[kn]
                d2 = (diff * diff).sum(1, keepdim=True)
                coef = torch.where(d2 > 0, 2.0 * gamma * b / ((0.001 + d2) * (a * d2.pow(b) + 1.0)),
                                   torch.zeros_like(d2))
                g = (coef * diff).clamp(-4.0, 4.0) * alpha
                g = torch.where((kn == hn)[:, None], torch.zeros_like(g), g)
                step.index_add_(0, hn, g)
            y += step
        if callback is not None:
            callback(epoch)
    return y.cpu().numpy().astype(np.float32)


def pca_2d(x, *, device="cpu") -> np.ndarray:
    """The first two principal components of ``x`` (array (n, d)) by the covariance's
    eigenvectors, computed on ``device``; array of shape (n, 2) float32 (zero columns when
    d < 2). Signs are fixed so each component's largest loading is positive."""
    import torch

    t = torch.from_numpy(np.array(x, dtype=np.float32)).to(device)  # a copy: x may be mmapped
    n, d = t.shape
    out = torch.zeros((n, 2), dtype=torch.float32, device=device)
    if n == 0:
        return out.cpu().numpy()
    mu = t.to(torch.float64).mean(0)
    c = t.to(torch.float64) - mu
    cov = c.T @ c / max(n - 1, 1)
    vals, vecs = torch.linalg.eigh(cov)
    k = min(2, d)
    comp = vecs[:, torch.argsort(vals, descending=True)[:k]]
    sign = torch.sign(comp.gather(0, comp.abs().argmax(0, keepdim=True)))
    comp = comp * torch.where(sign == 0, torch.ones_like(sign), sign)
    out[:, :k] = (c @ comp).to(torch.float32)
    return out.cpu().numpy()
