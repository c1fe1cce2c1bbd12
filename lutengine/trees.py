"""Learning MADDNESS's 4-level hash trees (Blalock & Guttag 2021, §4.2).

One balanced binary regression tree per codebook, learned greedily on the codebook's
column slice of the training rows. At each level every node shares one split column,
chosen among the 4 columns with the largest within-bucket SSE as the one whose best
per-node cuts (``_dispatch.lut.best_split``) leave the least total SSE; each node gets its
own threshold. Thresholds are stored in heap order (node ``i`` of level ``s`` at
``2**s - 1 + i``), the layout ``kernels.encode`` reads.
"""

import numpy as np

from . import _dispatch

NLEVELS = 4
NCANDIDATES = 4


def _bucket_sse(X, rows):
    if rows.size == 0:
        return np.zeros(X.shape[1])
    sub = X[rows].astype(np.float64)
    return ((sub - sub.mean(axis=0)) ** 2).sum(axis=0)


def learn_tree(X):
    """Learn one tree on ``X`` (n, d) float32 C-contiguous.

    Returns ``(split_dims, thresholds, leaves, leaf_means)``: local split columns (4,),
    heap-ordered thresholds (16,) with the last entry unused, each row's leaf (n,) as
    uint8, and the leaf means (16, d). An empty leaf inherits its parent's mean.
    """
    buckets = [np.arange(X.shape[0], dtype=np.int64)]
    means = [X.mean(axis=0, dtype=np.float64)]
    split_dims = np.zeros(NLEVELS, dtype=np.int64)
    thresholds = np.zeros(16, dtype=np.float32)
    for level in range(NLEVELS):
        col_sse = sum(_bucket_sse(X, rows) for rows in buckets)
        candidates = np.argsort(-col_sse, kind="stable")[:NCANDIDATES]
        best = None
        for dim in candidates:
            splits = [_dispatch.lut.best_split(X, rows, dim) for rows in buckets]
            loss = sum(s[0] for s in splits)
            if best is None or loss < best[0]:
                best = (loss, dim, [s[1] for s in splits])
        _, dim, level_thresholds = best
        split_dims[level] = dim
        thresholds[2**level - 1: 2**(level + 1) - 1] = level_thresholds
        children, child_means = [], []
        for rows, mean, t in zip(buckets, means, level_thresholds):
            right = X[rows, dim] > t
            for part in (rows[~right], rows[right]):
                children.append(part)
                child_means.append(X[part].mean(axis=0, dtype=np.float64) if part.size else mean)
        buckets, means = children, child_means
    leaves = np.zeros(X.shape[0], dtype=np.uint8)
    for leaf, rows in enumerate(buckets):
        leaves[rows] = leaf
    return split_dims, thresholds, leaves, np.array(means)
