"""Subspace partitions of the D input columns into C codebooks.

A partition is ``(cols, bounds)``: codebook ``c`` owns the columns
``cols[bounds[c]:bounds[c + 1]]``. The ranges of ``bounds`` are always contiguous and
disjoint, the first ``D mod C`` of them one column wider; a partition
only chooses the column order ``cols``. The kernels select columns through it, so A is
never copied at predict time.

- ``contiguous``: the identity order, as in MADDNESS.
- ``opq``: ITLUMM's OPQ-based partitioning (McCarter & Dronen 2022, §2.1.1): learn an OPQ
  rotation (Ge et al. 2013), then take the permutation closest to it by maximum-weight
  matching (the Hungarian algorithm).
- ``r2``: ITLUMM's squared-correlation hierarchical clustering (§2.1.2): average-linkage
  clustering of the columns under the distance 1 − r², the leaves ordered so that
  successive columns are close.
"""

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

# scikit-learn and scipy's clustering are imported by the functions that use them: loading
# them takes longer than a whole default fit, which uses neither

KINDS = ("contiguous", "opq", "r2")


def contiguous(n_features, ncodebooks):
    """Contiguous ranges: widths ⌊D/C⌋, plus one for the first ``D mod C`` ranges."""
    widths = np.full(ncodebooks, n_features // ncodebooks, dtype=np.int64)
    widths[: n_features % ncodebooks] += 1
    bounds = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    return np.arange(n_features, dtype=np.int64), bounds


def _pq_reconstruct(Z, bounds, centroids, seeds):
    """Quantise each subspace of ``Z`` to its nearest of (at most) 16 k-means centroids.

    ``centroids[c]`` (None on the first call) warm-starts the k-means of subspace ``c``
    and is replaced by its result.
    """
    from sklearn.cluster import KMeans
    Z_hat = np.empty_like(Z)
    for c in range(len(bounds) - 1):
        sub = Z[:, bounds[c]:bounds[c + 1]]
        init = "k-means++" if centroids[c] is None else centroids[c]
        km = KMeans(n_clusters=min(16, len(Z)), init=init, n_init=1, max_iter=10,
                    random_state=seeds[c])
        labels = km.fit_predict(sub)
        centroids[c] = km.cluster_centers_
        Z_hat[:, bounds[c]:bounds[c + 1]] = km.cluster_centers_[labels]
    return Z_hat


def _opq_rotation(A, ncodebooks, random_state, n_iter, max_rows):
    """Non-parametric OPQ's rotation ``R`` (D × D, rotated data ``A·R``), from ``R = I``."""
    n_rows, n_features = A.shape
    _, bounds = contiguous(n_features, ncodebooks)
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(n_rows, max_rows, replace=False)) if n_rows > max_rows else \
        np.arange(n_rows)
    X = A[rows]
    seeds = rng.integers(2**31 - 1, size=ncodebooks)
    R = np.eye(n_features, dtype=A.dtype)
    centroids = [None] * ncodebooks
    from sklearn.exceptions import ConvergenceWarning
    # many tiny k-means and one small SVD: BLAS threads only add overhead (and oversubscribe
    # numba's); duplicate rows (e.g. blank pixels) leave k-means with empty clusters
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(n_iter):
            X_hat = _pq_reconstruct(X @ R, bounds, centroids, seeds)
            U, _, Vt = np.linalg.svd(X.T @ X_hat)
            R = U @ Vt
    return R


def _nearest_permutation(R):
    """``cols[dim]``: the original column matched to rotated dimension ``dim`` by the
    matching that maximises ``Σ |R[cols[dim], dim]|``."""
    from scipy.optimize import linear_sum_assignment
    # rows of |R|ᵀ are rotated dimensions, its columns the original ones
    _, cols = linear_sum_assignment(np.abs(R).T, maximize=True)
    return cols.astype(np.int64)


def opq(A, ncodebooks, random_state=None, n_iter=8, max_rows=4096):
    """ITLUMM's OPQ partition: an OPQ rotation ``R`` rounded to the nearest permutation.

    Non-parametric OPQ alternates product quantisation of ``A·R`` (16 k-means centroids
    per contiguous subspace) with the orthogonal Procrustes update of ``R`` (from the SVD
    of ``Aᵀ·Â``), ``n_iter`` times from ``R = I``, on at most ``max_rows`` random rows.
    The permutation then maximises ``Σ |R[col, dim]|`` over the matched pairs (Hungarian
    algorithm). The absolute value is taken because a sign flip of a coordinate changes
    no quantisation error: a weight of −0.9 ties a column to a rotated dimension as much
    as +0.9 does (the paper's Eq. 1 uses ``R`` itself, favouring positive weights only).
    """
    R = _opq_rotation(A, ncodebooks, random_state, n_iter, max_rows)
    return _nearest_permutation(R), contiguous(A.shape[1], ncodebooks)[1]


def _squared_correlation(A):
    """``r²`` between the columns of ``A``; a constant column has ``r² = 0`` with every
    other column (its correlation is undefined) and 1 with itself."""
    # a float32 column's float64 mean is exact when the column is constant, so it centres
    # to exact zeros: dividing by a unit instead of its zero deviation gives r² = 0, no NaN
    X = A - A.mean(axis=0, dtype=np.float64).astype(A.dtype)
    cov = (X.T @ X).astype(np.float64)
    std = np.sqrt(np.where(np.ptp(A, axis=0) == 0, 1.0, np.diag(cov)))
    sq = np.clip((cov / std[:, None] / std[None, :]) ** 2, 0.0, 1.0)
    np.fill_diagonal(sq, 1.0)
    return sq


def r2(A, ncodebooks):
    """ITLUMM's r² partition: columns ordered by the optimally ordered leaves of an
    average-linkage dendrogram under the distance ``1 − r²``. Deterministic."""
    n_features = A.shape[1]
    _, bounds = contiguous(n_features, ncodebooks)
    if n_features < 2:
        return np.arange(n_features, dtype=np.int64), bounds
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform
    dist = squareform(1.0 - _squared_correlation(A), checks=False)
    tree = hierarchy.optimal_leaf_ordering(hierarchy.linkage(dist, method="average"), dist)
    return hierarchy.leaves_list(tree).astype(np.int64), bounds


def learn(kind, A, ncodebooks, random_state=None):
    """The partition ``kind`` (one of :data:`KINDS`) of ``A``'s columns: ``(cols, bounds)``."""
    if kind == "contiguous":
        return contiguous(A.shape[1], ncodebooks)
    if kind == "opq":
        return opq(A, ncodebooks, random_state=random_state)
    if kind == "r2":
        return r2(A, ncodebooks)
    raise ValueError(f"partition must be one of {list(KINDS)}, got partition={kind!r}")
