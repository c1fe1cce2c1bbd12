"""Encoding rows of A into one 4-bit code per codebook (stored as uint8).

``encode_tree_*``: MADDNESS hash trees (Blalock & Guttag 2021, §4.1; maddness.md §2.2).
Tree ``c`` reads column ``split_dims[c, level]`` at each of its 4 levels and compares it
with the threshold of the current node, kept in heap order: ``thresholds[c, 2**level - 1
+ node]``. A value strictly above the threshold goes right; the code is the 4 decision
bits read most-significant first.

``encode_pq_*``: product quantisation (nearest of 16 centroids per subspace), the
baseline whose slow encoding MADDNESS removes.

Both report (as a count of blocks, or of rows for PQ) non-finite values they read, so the API can reject NaN/Inf input
without a separate pass over A.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _encode_tree_rows(X, split_dims, thresholds, codes, start, stop):
    # poison is 0 unless a value read is NaN or ±Inf (0 · x is NaN for those)
    poison = np.float32(0.0)
    for c in range(split_dims.shape[0]):
        col0 = X[:, split_dims[c, 0]]
        col1 = X[:, split_dims[c, 1]]
        col2 = X[:, split_dims[c, 2]]
        col3 = X[:, split_dims[c, 3]]
        t = thresholds[c]
        for n in range(start, stop):
            x0 = col0[n]
            x1 = col1[n]
            x2 = col2[n]
            x3 = col3[n]
            node = np.int64(x0 > t[0])
            node = 2 * node + np.int64(x1 > t[1 + node])
            node = 2 * node + np.int64(x2 > t[3 + node])
            node = 2 * node + np.int64(x3 > t[7 + node])
            codes[n, c] = node
            poison += np.float32(0.0) * x0 + np.float32(0.0) * x1 + np.float32(0.0) * x2 + np.float32(0.0) * x3
    return np.int64(poison != 0.0)


@njit(**JIT)
def encode_tree_serial(X, split_dims, thresholds, codes, block_rows):
    """Serial twin of :func:`encode_tree_parallel`."""
    nonfinite = np.int64(0)
    for start in range(0, X.shape[0], block_rows):
        stop = min(start + block_rows, X.shape[0])
        nonfinite += _encode_tree_rows(X, split_dims, thresholds, codes, start, stop)
    return nonfinite


@njit(**PJIT)
def encode_tree_parallel(X, split_dims, thresholds, codes, block_rows):
    """Write ``codes[n, c]`` for every row of X; return how many row blocks read NaN/Inf.

    Rows are processed in blocks of ``block_rows`` (small for C-ordered X so the rows
    of a block stay in cache while every tree reads them; large for F-ordered X, whose
    split columns are then read contiguously).
    """
    nblocks = (X.shape[0] + block_rows - 1) // block_rows
    counts = np.zeros(nblocks, dtype=np.int64)
    for b in prange(nblocks):
        start = b * block_rows
        stop = min(start + block_rows, X.shape[0])
        counts[b] = _encode_tree_rows(X, split_dims, thresholds, codes, start, stop)
    return counts.sum()


@njit(**INLINE)
def _encode_pq_rows(X, subspace_cols, subspace_bounds, centroids, codes, start, stop):
    nonfinite = 0
    for n in range(start, stop):
        for c in range(subspace_bounds.shape[0] - 1):
            lo = subspace_bounds[c]
            hi = subspace_bounds[c + 1]
            best = np.inf
            best_k = 0
            for k in range(centroids.shape[1]):
                dist = np.float32(0.0)
                for j in range(lo, hi):
                    diff = X[n, subspace_cols[j]] - centroids[c, k, j - lo]
                    dist += diff * diff
                if dist < best:
                    best = dist
                    best_k = k
            codes[n, c] = best_k
            if not np.isfinite(best):
                nonfinite += 1
    return nonfinite


@njit(**JIT)
def encode_pq_serial(X, subspace_cols, subspace_bounds, centroids, codes, block_rows):
    """Serial twin of :func:`encode_pq_parallel`."""
    return _encode_pq_rows(X, subspace_cols, subspace_bounds, centroids, codes, 0, X.shape[0])


@njit(**PJIT)
def encode_pq_parallel(X, subspace_cols, subspace_bounds, centroids, codes, block_rows):
    """Nearest centroid (squared L2) per subspace; codebook ``c`` owns the columns
    ``subspace_cols[subspace_bounds[c]:subspace_bounds[c + 1]]`` and ``centroids[c]``
    (16 × widest subspace, zero-padded). Returns the count of non-finite distances."""
    nblocks = (X.shape[0] + block_rows - 1) // block_rows
    counts = np.zeros(nblocks, dtype=np.int64)
    for b in prange(nblocks):
        start = b * block_rows
        stop = min(start + block_rows, X.shape[0])
        counts[b] = _encode_pq_rows(X, subspace_cols, subspace_bounds, centroids, codes, start, stop)
    return counts.sum()
