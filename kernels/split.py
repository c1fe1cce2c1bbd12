"""The greedy split search of a MADDNESS hash-tree node (Blalock & Guttag 2021, §4.2).

Sort a bucket's rows by one column; for each cut between two distinct values, the loss
is the SSE of the left rows plus the SSE of the right rows, summed over every column of
the subspace (running sums and sums of squares, in float64). The threshold is the
midpoint of the two values around the best cut, so ``x > threshold`` sends a row right.
"""

import numpy as np
from numba import njit

from ._flags import JIT_EXACT


@njit(**JIT_EXACT)
def best_split(X, rows, dim):
    """Return ``(loss, threshold)`` of the best cut of ``X[rows]`` on column ``dim``.

    With no cut possible (fewer than 2 distinct values) the loss is the bucket's SSE and
    the threshold its largest value (``+inf`` for an empty bucket): every row goes left.
    """
    n = rows.shape[0]
    d = X.shape[1]
    if n == 0:
        return 0.0, np.float32(np.inf)
    vals = np.empty(n, dtype=np.float32)
    for i in range(n):
        vals[i] = X[rows[i], dim]
    order = np.argsort(vals, kind="mergesort")
    total_sum = np.zeros(d)
    total_sq = np.zeros(d)
    for i in range(n):
        r = rows[i]
        for j in range(d):
            x = np.float64(X[r, j])
            total_sum[j] += x
            total_sq[j] += x * x
    best_loss = 0.0
    for j in range(d):
        best_loss += total_sq[j] - total_sum[j] * total_sum[j] / n
    best_threshold = vals[order[n - 1]]
    left_sum = np.zeros(d)
    left_sq = np.zeros(d)
    for i in range(n - 1):
        r = rows[order[i]]
        for j in range(d):
            x = np.float64(X[r, j])
            left_sum[j] += x
            left_sq[j] += x * x
        v = vals[order[i]]
        v_next = vals[order[i + 1]]
        if v < v_next:
            n_left = i + 1
            n_right = n - n_left
            loss = 0.0
            for j in range(d):
                right_sum = total_sum[j] - left_sum[j]
                loss += (left_sq[j] - left_sum[j] * left_sum[j] / n_left
                         + (total_sq[j] - left_sq[j]) - right_sum * right_sum / n_right)
            if loss < best_loss:
                best_loss = loss
                t = np.float32((np.float64(v) + np.float64(v_next)) / 2.0)
                # adjacent floats: the midpoint may round onto v_next; v keeps the cut exact
                best_threshold = t if t < v_next else v
    return best_loss, best_threshold
