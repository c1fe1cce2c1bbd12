"""Hash-tree encoding on the GPU: the twin of ``kernels.encode.encode_tree_*``.

MADDNESS (Blalock & Guttag 2021, §4.1): tree ``c`` compares column
``split_dims[c, level]`` with the heap-ordered threshold ``thresholds[c, 2**level - 1 +
node]``; a value strictly above goes right (NaN never does), and the code is the 4 decision
bits, most significant first.
"""

import math

from numba import cuda


@cuda.jit
def encode_tree(X, split_dims, thresholds, codes, nonfinite):
    """Write ``codes[n, c]`` for every row of X (any strides); set ``nonfinite[0] = 1`` when
    a value read is NaN/Inf. One thread per (codebook, row) item, rows fastest, so a warp
    reads one column of an F-ordered X contiguously."""
    nrows = X.shape[0]
    nitems = nrows * split_dims.shape[0]
    for item in range(cuda.grid(1), nitems, cuda.gridsize(1)):
        c = item // nrows
        n = item - c * nrows
        node = 0
        for level in range(4):
            x = X[n, split_dims[c, level]]
            if not math.isfinite(x):
                nonfinite[0] = 1  # every writer stores the same value
            node = 2 * node + (1 if x > thresholds[c, (1 << level) - 1 + node] else 0)
        codes[n, c] = node
