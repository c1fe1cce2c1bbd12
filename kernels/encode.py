"""Encoding rows of A into one 4-bit code per codebook (stored as uint8).

``encode_tree_*``: MADDNESS hash trees (Blalock & Guttag 2021, §4.1).
Tree ``c`` reads column ``split_dims[c, level]`` at each of its 4 levels and compares it
with the threshold of the current node, kept in heap order: ``thresholds[c, 2**level - 1
+ node]``. A value strictly above the threshold goes right; the code is the 4 decision
bits read most-significant first.

``encode_pq_*``: product quantisation (nearest of 16 centroids per subspace), the
baseline whose slow encoding MADDNESS removes.

Both report the non-finite values they read (a nonzero count of blocks or rows), so
the API can reject NaN/Inf input without a separate pass over A.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _pick(bit, if_set, if_clear):
    return if_set if bit else if_clear


@njit(**INLINE)
def _tree_codes(v0, v1, v2, v3, first, nrows, t, out):
    """Codes of one tree for rows first..first+nrows-1 of its 4 split-value vectors, into
    out[0:nrows]; returns 0 unless a value is NaN or ±Inf (0 · x is NaN for those).

    Branch-free: the node's threshold is picked by selects, so LLVM vectorises the loop
    across rows without gathers.
    """
    t0, t1, t2, t3, t4, t5, t6, t7 = t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]
    t8, t9, t10, t11, t12, t13, t14 = t[8], t[9], t[10], t[11], t[12], t[13], t[14]
    poison = np.float32(0.0)
    for i in range(nrows):
        x0, x1, x2, x3 = v0[first + i], v1[first + i], v2[first + i], v3[first + i]
        b0 = x0 > t0
        b1 = x1 > _pick(b0, t2, t1)
        b2 = x2 > _pick(b0, _pick(b1, t6, t5), _pick(b1, t4, t3))
        b3 = x3 > _pick(b0, _pick(b1, _pick(b2, t14, t13), _pick(b2, t12, t11)),
                        _pick(b1, _pick(b2, t10, t9), _pick(b2, t8, t7)))
        out[i] = (np.uint8(b0) << np.uint8(3)) | (np.uint8(b1) << np.uint8(2)) \
            | (np.uint8(b2) << np.uint8(1)) | np.uint8(b3)
        poison += np.float32(0.0) * x0 + np.float32(0.0) * x1 + np.float32(0.0) * x2 \
            + np.float32(0.0) * x3
    return poison


@njit(**INLINE)
def _block_tree_codes(X, split_dims, thresholds, start, nrows, columns_contiguous, values,
                     block_codes):
    """Codes of rows start..start+nrows-1 of X into ``block_codes[c, i]``; returns a
    non-zero float if a value read was NaN/Inf.

    F-ordered X: the trees read their split columns in place. C-ordered X: the block's
    split values are first gathered row by row into ``values[c, level, i]``.
    """
    C = split_dims.shape[0]
    poison = np.float32(0.0)
    if columns_contiguous:
        # X's columns as rows of X.T: for F-ordered X Numba types them as contiguous, so
        # the loop below vectorises with plain loads (``X[:, j]`` would be strided)
        columns = X.T
        for c in range(C):
            poison += _tree_codes(columns[split_dims[c, 0]], columns[split_dims[c, 1]],
                                  columns[split_dims[c, 2]], columns[split_dims[c, 3]], start,
                                  nrows, thresholds[c], block_codes[c])
    else:
        for i in range(nrows):
            row = X[start + i]
            for c in range(C):
                for level in range(4):
                    values[c, level, i] = row[split_dims[c, level]]
        for c in range(C):
            poison += _tree_codes(values[c, 0], values[c, 1], values[c, 2], values[c, 3], 0, nrows,
                                  thresholds[c], block_codes[c])
    return poison


@njit(**INLINE)
def _encode_tree_rows(X, split_dims, thresholds, codes, start, stop, columns_contiguous,
                      values, block_codes):
    """Encode rows start..stop-1 of X into the same rows of codes; return 1 if a value
    read was NaN/Inf, else 0."""
    nrows = stop - start
    poison = _block_tree_codes(X, split_dims, thresholds, start, nrows, columns_contiguous,
                              values, block_codes)
    for i in range(nrows):
        for c in range(split_dims.shape[0]):
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
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        # scratch allocated once per worker: private, so LLVM knows it aliases nothing
        values = np.empty((C, 4, block_rows), dtype=np.float32)
        block_codes = np.empty((C, block_rows), dtype=np.uint8)
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, X.shape[0])
            counts[w] += _encode_tree_rows(X, split_dims, thresholds, codes, start, stop,
                                           columns_contiguous, values, block_codes)
    return counts.sum()


@njit(**INLINE)
def _encode_pq_rows(X, subspace_cols, subspace_bounds, centroids_t, codes, start, stop, dist):
    """Nearest centroids for rows start..stop-1; ``dist`` is 16-float scratch. The 16
    distances of a subspace are accumulated together, so the loop over centroids is the
    vector loop and each value of X is read once."""
    nonfinite = 0
    K = centroids_t.shape[2]
    for n in range(start, stop):
        for c in range(subspace_bounds.shape[0] - 1):
            lo = subspace_bounds[c]
            dist[:] = 0.0
            for j in range(lo, subspace_bounds[c + 1]):
                x = X[n, subspace_cols[j]]
                cj = centroids_t[c, j - lo]
                for k in range(K):
                    diff = x - cj[k]
                    dist[k] += diff * diff
            best = np.inf
            best_k = 0
            for k in range(K):
                if dist[k] < best:
                    best = dist[k]
                    best_k = k
            codes[n, c] = best_k
            if not np.isfinite(best):
                nonfinite += 1
    return nonfinite


@njit(**INLINE)
def _transposed(centroids):
    """(C, width, 16) copy of the (C, 16, width) centroids."""
    return np.ascontiguousarray(centroids.transpose(0, 2, 1))


@njit(**JIT)
def encode_pq_serial(X, subspace_cols, subspace_bounds, centroids, codes, block_rows, nworkers):
    """Serial twin of :func:`encode_pq_parallel` (``nworkers`` is ignored)."""
    return _encode_pq_rows(X, subspace_cols, subspace_bounds, _transposed(centroids), codes, 0,
                           X.shape[0], np.empty(centroids.shape[1], dtype=np.float32))


@njit(**PJIT)
def encode_pq_parallel(X, subspace_cols, subspace_bounds, centroids, codes, block_rows, nworkers):
    """Nearest centroid (squared L2, first on ties) per subspace; codebook ``c`` owns the
    columns ``subspace_cols[subspace_bounds[c]:subspace_bounds[c + 1]]`` and
    ``centroids[c]`` (16 × widest subspace, zero-padded). Returns the count of rows whose
    distances were not finite."""
    nblocks = (X.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nblocks))
    centroids_t = _transposed(centroids)
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        dist = np.empty(centroids.shape[1], dtype=np.float32)  # once per worker
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, X.shape[0])
            counts[w] += _encode_pq_rows(X, subspace_cols, subspace_bounds, centroids_t, codes,
                                         start, stop, dist)
    return counts.sum()
