"""Exact top-k helpers for maximum inner product search.

``merge_topk_*`` folds a block of scores into each query's running top-k;
``rows_dot_*`` computes only the selected inner products ``<W[ids[i, j]], X[i]>`` that a
top-k sparse layer evaluates exactly.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _merge_row(scores, ids_offset, top_scores, top_ids):
    """Insert the better entries of one query's block scores into its unsorted top-k
    (replacing the current minimum); a lower id wins a tie, so results are order-free."""
    k = top_scores.shape[0]
    worst = 0
    for j in range(1, k):
        if top_scores[j] < top_scores[worst] or (top_scores[j] == top_scores[worst]
                                                 and top_ids[j] > top_ids[worst]):
            worst = j
    for j in range(scores.shape[0]):
        s = scores[j]
        i = ids_offset + j
        if s > top_scores[worst] or (s == top_scores[worst] and i < top_ids[worst]):
            top_scores[worst] = s
            top_ids[worst] = i
            worst = 0
            for t in range(1, k):
                if top_scores[t] < top_scores[worst] or (top_scores[t] == top_scores[worst]
                                                         and top_ids[t] > top_ids[worst]):
                    worst = t


@njit(**JIT)
def merge_topk_serial(scores, ids_offset, rows, top_scores, top_ids):
    """Serial twin of :func:`merge_topk_parallel`."""
    for q in range(rows.shape[0]):
        _merge_row(scores[q], ids_offset, top_scores[rows[q]], top_ids[rows[q]])


@njit(**PJIT)
def merge_topk_parallel(scores, ids_offset, rows, top_scores, top_ids):
    """For each q, merge ``scores[q]`` (ids ``ids_offset + j``) into the running top-k of
    query ``rows[q]`` (``top_scores``/``top_ids``, unsorted, -inf / -1 when empty)."""
    for q in prange(rows.shape[0]):
        _merge_row(scores[q], ids_offset, top_scores[rows[q]], top_ids[rows[q]])


@njit(**INLINE)
def _dot_rows(W, ids, X, out, i):
    x = X[i]
    for j in range(ids.shape[1]):
        w = W[ids[i, j]]
        acc = np.float32(0.0)
        for t in range(x.shape[0]):
            acc += w[t] * x[t]
        out[i, j] = acc


@njit(**JIT)
def rows_dot_serial(W, ids, X, out):
    """Serial twin of :func:`rows_dot_parallel`."""
    for i in range(ids.shape[0]):
        _dot_rows(W, ids, X, out, i)


@njit(**PJIT)
def rows_dot_parallel(W, ids, X, out):
    """``out[i, j] = <W[ids[i, j]], X[i]>`` (float32)."""
    for i in prange(ids.shape[0]):
        _dot_rows(W, ids, X, out, i)
