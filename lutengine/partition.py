"""Subspace partitions of the D input columns into C codebooks.

A partition is ``(cols, bounds)``: codebook ``c`` owns the columns
``cols[bounds[c]:bounds[c + 1]]``. MADDNESS uses contiguous, disjoint ranges, the first
``D mod C`` of them one column wider (maddness.md §2.1). Column permutations (ITLUMM,
§2.1 of the paper) change only ``cols``; the kernels select columns through it, so A is
never copied at predict time.
"""

import numpy as np


def contiguous(n_features, ncodebooks):
    """Contiguous ranges: widths ⌊D/C⌋, plus one for the first ``D mod C`` ranges."""
    widths = np.full(ncodebooks, n_features // ncodebooks, dtype=np.int64)
    widths[: n_features % ncodebooks] += 1
    bounds = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    return np.arange(n_features, dtype=np.int64), bounds
