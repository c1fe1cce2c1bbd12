"""Prototypes by ridge regression (Blalock & Guttag 2021, §4.2; maddness.md §3.1).

With G the one-hot matrix of the training codes (N × 16C) and P0 the stacked leaf
means, ``P = argmin ‖A − G P‖² + λ ‖P − P0‖²``: a ridge that shrinks toward the leaf
means, solved through the normal equations ``(GᵀG + λI) P = GᵀA + λ P0`` whose
products come from ``kernels.onehot`` without forming G. P is dense over all D columns.
"""

import numpy as np
import scipy.linalg

from . import _dispatch


def ridge_prototypes(A, codes, initial_prototypes, lam=1.0):
    """Return prototypes (C, 16, D) float32 from A (N, D), codes (N, C) and P0 (C, 16, D)."""
    C, K, D = initial_prototypes.shape
    gram, rowsum = _dispatch.onehot_products(codes, A)
    P0 = initial_prototypes.reshape(C * K, D).astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    P = scipy.linalg.solve(gram, rowsum + lam * P0, assume_a="pos")
    return P.reshape(C, K, D).astype(np.float32)
