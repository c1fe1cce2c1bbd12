"""Products with G, the one-hot matrix of codes (N × 16C), without forming G.

``G[n, 16c + k] = 1`` iff ``codes[n, c] == k`` (maddness.md §3.1). The ridge solve for
the prototypes needs ``GᵀG`` (co-occurrence counts of codes) and ``GᵀA`` (per-code sums
of rows). Rows are cut into fixed chunks whose partial sums are merged in chunk order,
so results do not depend on the thread count.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _gram_rows(codes, out, start, stop):
    C = codes.shape[1]
    for n in range(start, stop):
        for c1 in range(C):
            i = 16 * c1 + codes[n, c1]
            for c2 in range(C):
                out[i, 16 * c2 + codes[n, c2]] += 1.0


@njit(**INLINE)
def _rowsum_rows(codes, A, out, start, stop):
    for n in range(start, stop):
        a = A[n]
        for c in range(codes.shape[1]):
            o = out[16 * c + codes[n, c]]
            for j in range(a.shape[0]):
                o[j] += a[j]


@njit(**JIT)
def onehot_gram_serial(codes, chunk_rows):
    """Serial twin of :func:`onehot_gram_parallel`."""
    K = 16 * codes.shape[1]
    out = np.zeros((K, K))
    _gram_rows(codes, out, 0, codes.shape[0])
    return out


@njit(**PJIT)
def onehot_gram_parallel(codes, chunk_rows):
    """``GᵀG`` as float64 (16C × 16C); the counts are exact in any order."""
    K = 16 * codes.shape[1]
    nchunks = (codes.shape[0] + chunk_rows - 1) // chunk_rows
    parts = np.zeros((nchunks, K, K))
    for b in prange(nchunks):
        _gram_rows(codes, parts[b], b * chunk_rows, min((b + 1) * chunk_rows, codes.shape[0]))
    out = np.zeros((K, K))
    for b in range(nchunks):
        out += parts[b]
    return out


@njit(**JIT)
def onehot_rowsum_serial(codes, A, chunk_rows):
    """Serial twin of :func:`onehot_rowsum_parallel` (same chunks, same merge order)."""
    out = np.zeros((16 * codes.shape[1], A.shape[1]))
    part = np.empty_like(out)
    for start in range(0, codes.shape[0], chunk_rows):
        part[:] = 0.0
        _rowsum_rows(codes, A, part, start, min(start + chunk_rows, codes.shape[0]))
        out += part
    return out


@njit(**PJIT)
def onehot_rowsum_parallel(codes, A, chunk_rows):
    """``GᵀA`` as float64 (16C × D): row ``16c + k`` sums the rows of A coded k in c."""
    nchunks = (codes.shape[0] + chunk_rows - 1) // chunk_rows
    parts = np.zeros((nchunks, 16 * codes.shape[1], A.shape[1]))
    for b in prange(nchunks):
        _rowsum_rows(codes, A, parts[b], b * chunk_rows, min((b + 1) * chunk_rows, codes.shape[0]))
    out = np.zeros((16 * codes.shape[1], A.shape[1]))
    for b in range(nchunks):
        out += parts[b]
    return out
