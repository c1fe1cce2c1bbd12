"""Products with G, the one-hot matrix of codes (N × 16C), without forming G.

``G[n, 16c + k] = 1`` iff ``codes[n, c] == k`` (MADDNESS §4.3). The ridge solve for the
prototypes needs ``GᵀG`` (co-occurrence counts of codes) and ``GᵀA`` (per-code sums of
rows). Each parallel worker owns a part of the OUTPUT and reads every row, so there are
no partial sums to hold or merge (memory is the output's at any N) and each output element
is computed by the same additions in the same order whatever the thread count:

- ``GᵀG``: worker ``w`` owns the rows of the codebooks c1 = w, w + nworkers, …; only pairs
  ``c2 >= c1`` are counted (GᵀG is symmetric and its diagonal blocks are diagonal), then
  the upper triangle is mirrored. Counts in float64 are exact below 2**53.
- ``GᵀA``: worker ``w`` owns a run of A's columns (whole cache lines of the output) and adds
  every row into it, in row order.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT

#: float64 output columns per 64-byte cache line: column ranges start on a line
_LINE = 8


@njit(**INLINE)
def _count_pairs(codes, out, first, step):
    """Count, in the rows of ``out`` of codebooks c1 = first, first + step, …, the code
    pairs (c1, c2 >= c1) of every row of codes: those rows of GᵀG's upper triangle."""
    C = codes.shape[1]
    for n in range(codes.shape[0]):
        row = codes[n]
        for c1 in range(first, C, step):
            i = 16 * c1 + row[c1]
            for c2 in range(c1, C):
                out[i, 16 * c2 + row[c2]] += 1.0


@njit(**INLINE)
def _mirror_upper(out):
    """Copy the upper triangle of the square ``out`` onto its lower triangle."""
    for i in range(out.shape[0]):
        for j in range(i + 1, out.shape[0]):
            out[j, i] = out[i, j]


@njit(**JIT)
def onehot_gram_serial(codes, nworkers):
    """Serial twin of :func:`onehot_gram_parallel` (``nworkers`` is ignored)."""
    K = 16 * codes.shape[1]
    out = np.zeros((K, K))
    _count_pairs(codes, out, 0, 1)
    _mirror_upper(out)
    return out


@njit(**PJIT)
def onehot_gram_parallel(codes, nworkers):
    """``GᵀG`` as float64 (16C × 16C); worker ``w`` of ``nworkers`` counts the rows of the
    codebooks c1 = w, w + nworkers, … over all rows of codes."""
    C = codes.shape[1]
    nworkers = max(1, min(nworkers, C))
    out = np.zeros((16 * C, 16 * C))
    for w in prange(nworkers):
        _count_pairs(codes, out, w, nworkers)
    _mirror_upper(out)
    return out


@njit(**INLINE)
def _rowsum_columns(codes, A, out, lo):
    """``out`` = columns lo..lo+width-1 of ``GᵀA``: every row of A added to its codes'
    rows, in row order."""
    for n in range(codes.shape[0]):
        a = A[n, lo:lo + out.shape[1]]
        for c in range(codes.shape[1]):
            o = out[16 * c + codes[n, c]]
            for j in range(out.shape[1]):
                o[j] += a[j]


@njit(**JIT)
def onehot_rowsum_serial(codes, A, nworkers):
    """Serial twin of :func:`onehot_rowsum_parallel` (``nworkers`` is ignored)."""
    out = np.zeros((16 * codes.shape[1], A.shape[1]))
    _rowsum_columns(codes, A, out, 0)
    return out


@njit(**PJIT)
def onehot_rowsum_parallel(codes, A, nworkers):
    """``GᵀA`` as float64 (16C × D): row ``16c + k`` sums the rows of A coded k in c.

    The D columns, in whole cache lines, are cut into ``nworkers`` runs, one per worker.
    """
    D = A.shape[1]
    nlines = (D + _LINE - 1) // _LINE
    nworkers = max(1, min(nworkers, nlines))
    out = np.zeros((16 * codes.shape[1], D))
    for w in prange(nworkers):
        lo = w * nlines // nworkers * _LINE
        hi = min((w + 1) * nlines // nworkers * _LINE, D)
        # private to the worker, so LLVM knows it aliases nothing
        columns = np.zeros((out.shape[0], hi - lo))
        _rowsum_columns(codes, A, columns, lo)
        out[:, lo:hi] = columns
    return out
