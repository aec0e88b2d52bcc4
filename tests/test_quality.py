"""Layout quality: kNN preservation, trustworthiness and continuity against references."""

from __future__ import annotations

import numpy as np
import pytest

from bigembed.errors import InputError
from bigembed.reduce.quality import (
    knn_preservation,
    layout_quality,
    low_knn,
    trustworthiness_continuity,
)


def _exact_knn(x, k):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_knn_preservation_matches_a_set_based_reference(rng):
    x = rng.standard_normal((300, 10))
    xy = rng.standard_normal((300, 2))
    high = _exact_knn(x, 12)
    got = knn_preservation(high, xy)
    low = _exact_knn(xy, 12)
    ref = np.array([len(set(h) & set(lo)) / 12 for h, lo in zip(high, low)])
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_knn_preservation_is_one_for_a_faithful_layout(rng):
    xy = rng.standard_normal((500, 2))
    got = knn_preservation(_exact_knn(xy, 10), xy)
    np.testing.assert_array_equal(got, 1.0)


def test_knn_preservation_small_n_and_bad_shapes():
    assert knn_preservation(np.empty((1, 0), np.int64), np.zeros((1, 2))).tolist() == [1.0]
    two = knn_preservation(np.array([[1], [0]]), np.array([[0.0, 0], [1, 1]]))
    assert two.tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="high_indices"):
        knn_preservation(np.zeros((3, 2), np.int64), np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"xy \(N, 2\)"):
        knn_preservation(np.zeros((3, 2), np.int64), np.zeros((3, 3)))


def test_low_knn_excludes_self_among_coincident_points():
    xy = np.zeros((6, 2))
    idx = low_knn(xy, 3)
    assert idx.shape == (6, 3)
    assert not (idx == np.arange(6)[:, None]).any()


@pytest.mark.parametrize("k", [5, 12])
def test_trustworthiness_and_continuity_match_scikit_learn(rng, k):
    from sklearn.manifold import trustworthiness

    x = rng.standard_normal((250, 8))
    xy = x[:, :2] + 0.3 * rng.standard_normal((250, 2))
    got = trustworthiness_continuity(x, xy, k=k, sample=1000)
    assert got["sample"] == 250 and got["k"] == k
    assert got["trustworthiness"] == pytest.approx(trustworthiness(x, xy, n_neighbors=k), abs=1e-4)
    # Continuity is trustworthiness with the roles of the spaces swapped.
    assert got["continuity"] == pytest.approx(trustworthiness(xy, x, n_neighbors=k), abs=1e-4)


def test_trustworthiness_sample_and_degenerate_sizes(rng):
    x = rng.standard_normal((3000, 4))
    got = trustworthiness_continuity(x, x[:, :2], k=10, sample=400, seed=1)
    assert got["sample"] == 400 and 0.5 < got["trustworthiness"] <= 1.0
    tiny = trustworthiness_continuity(x[:2], x[:2, :2], k=10)
    assert tiny["trustworthiness"] is None and tiny["continuity"] is None
    # Identical points: ranks are ties, the measures stay finite.
    same = trustworthiness_continuity(np.ones((50, 3)), np.zeros((50, 2)), k=5)
    assert np.isfinite(same["trustworthiness"]) and np.isfinite(same["continuity"])


def test_layout_quality_cosine_with_zero_vectors(rng):
    x = rng.standard_normal((100, 5))
    x[:10] = 0.0
    xy = rng.standard_normal((100, 2))
    high = _exact_knn(x, 8)
    per_point, q = layout_quality(high, xy, x, k=8, metric="cosine")
    assert per_point.shape == (100,) and np.all((per_point >= 0) & (per_point <= 1))
    assert set(q) >= {"knn_preservation", "trustworthiness", "continuity", "k"}
    assert all(np.isfinite(q[m]) for m in ("knn_preservation", "trustworthiness", "continuity"))
