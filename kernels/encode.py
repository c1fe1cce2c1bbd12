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
def _pick(bit, if_set, if_clear):
    return if_set if bit else if_clear


@njit(**INLINE)
def _encode_tree_rows(X, split_dims, thresholds, codes, start, stop, columns_contiguous,
                      values, block_codes):
    """Encode rows start..stop-1; return 1 if a value read was NaN/Inf, else 0.

    The split values of the block are first gathered into ``values[c, level, i]``
    (column copies for F-ordered X, row reads for C-ordered X); the trees then run
    branch-free over contiguous lanes, the node's threshold picked by selects, which
    LLVM vectorises without gathers.
    """
    nrows = stop - start
    C = split_dims.shape[0]
    if columns_contiguous:
        for c in range(C):
            for level in range(4):
                col = X[:, split_dims[c, level]]
                dst = values[c, level]
                for i in range(nrows):
                    dst[i] = col[start + i]
    else:
        for i in range(nrows):
            row = X[start + i]
            for c in range(C):
                for level in range(4):
                    values[c, level, i] = row[split_dims[c, level]]
    # poison stays 0 unless a value is NaN or ±Inf (0 · x is NaN for those)
    poison = np.float32(0.0)
    for c in range(C):
        t = thresholds[c]
        t0, t1, t2, t3, t4, t5, t6, t7 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
        t8, t9, t10, t11, t12, t13, t14 = t[8], t[9], t[10], t[11], t[12], t[13], t[14]
        v0 = values[c, 0]
        v1 = values[c, 1]
        v2 = values[c, 2]
        v3 = values[c, 3]
        out = block_codes[c]
        for i in range(nrows):
            x0, x1, x2, x3 = v0[i], v1[i], v2[i], v3[i]
            b0 = x0 > t0
            b1 = x1 > _pick(b0, t2, t1)
            b2 = x2 > _pick(b0, _pick(b1, t6, t5), _pick(b1, t4, t3))
            b3 = x3 > _pick(b0, _pick(b1, _pick(b2, t14, t13), _pick(b2, t12, t11)),
                            _pick(b1, _pick(b2, t10, t9), _pick(b2, t8, t7)))
            out[i] = (np.uint8(b0) << np.uint8(3)) | (np.uint8(b1) << np.uint8(2)) \
                | (np.uint8(b2) << np.uint8(1)) | np.uint8(b3)
            poison += np.float32(0.0) * x0 + np.float32(0.0) * x1 + np.float32(0.0) * x2 \
                + np.float32(0.0) * x3
    for i in range(nrows):
        for c in range(C):
            codes[start + i, c] = block_codes[c, i]
    return np.int64(poison != 0.0)


@njit(**JIT)
def encode_tree_serial(X, split_dims, thresholds, codes, block_rows, columns_contiguous, nworkers):
    """Serial twin of :func:`encode_tree_parallel` (``nworkers`` is ignored)."""
    C = split_dims.shape[0]
    values = np.empty((C, 4, block_rows), dtype=np.float32)
    block_codes = np.empty((C, block_rows), dtype=np.uint8)
    nonfinite = np.int64(0)
    for start in range(0, X.shape[0], block_rows):
        stop = min(start + block_rows, X.shape[0])
        nonfinite += _encode_tree_rows(X, split_dims, thresholds, codes, start, stop,
                                       columns_contiguous, values, block_codes)
    return nonfinite


@njit(**PJIT)
def encode_tree_parallel(X, split_dims, thresholds, codes, block_rows, columns_contiguous, nworkers):
    """Write ``codes[n, c]`` for every row of X; return how many row blocks read NaN/Inf.

    ``columns_contiguous`` says X is F-ordered (its split columns are then copied whole);
    blocks of ``block_rows`` rows keep the gathered values in L1; each of ``nworkers``
    workers (the thread count) takes every ``nworkers``-th block with its own scratch.
    """
    C = split_dims.shape[0]
    nblocks = (X.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nblocks))
    values = np.empty((nworkers, C, 4, block_rows), dtype=np.float32)
    block_codes = np.empty((nworkers, C, block_rows), dtype=np.uint8)
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, X.shape[0])
            counts[w] += _encode_tree_rows(X, split_dims, thresholds, codes, start, stop,
                                           columns_contiguous, values[w], block_codes[w])
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
