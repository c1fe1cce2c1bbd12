"""Lookup tables from prototypes, and their int8 quantisation.

``build_luts``: ``T[c, k, m] = <P[c, k, :], B[:, m]>`` (the product-quantisation tables of
MADDNESS, Blalock & Guttag 2021), one BLAS call.

``quantize_luts_*`` (MADDNESS's int8 tables, here scaled per output): the offset of codebook
c for output m is its smallest entry ``offsets[c, m] = min_k T[c, k, m]``; one power-of-two
scale per output, ``scales[m] = 2**-ceil(log2(gap_m)) · 255.5`` (gap_m = output m's largest
per-codebook range; 1 when it is 0), maps every table of that output into [0, 255] with
round-half-up, so the dequantisation is a multiply-add per output. A per-output scale keeps the resolution of
small outputs next to a much larger one (the "massive activations" of transformers), which
one shared scale would round to nothing. Tables are stored as uint8 (offset-shifted, i.e.
int8 values plus 128, which keeps the arithmetic unsigned).
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**JIT)
def build_luts(prototypes, B):
    """float32 ``luts[C, 16, M]`` from ``prototypes[C, 16, D]`` and ``B[D, M]``."""
    C, K, D = prototypes.shape
    flat = np.dot(prototypes.reshape(C * K, D), B)
    return flat.reshape(C, K, B.shape[1])


@njit(**INLINE)
def _quantize_output(luts, m, offsets, scales, out):
    """Offsets ``offsets[:, m]``, scale ``scales[m]`` and entries ``out[:, :, m]`` of output m."""
    C, K = luts.shape[0], luts.shape[1]
    gap = np.float64(0.0)
    for c in range(C):
        low = high = luts[c, 0, m]
        for k in range(1, K):
            low = min(low, luts[c, k, m])
            high = max(high, luts[c, k, m])
        offsets[c, m] = low
        gap = max(gap, np.float64(high) - np.float64(low))
    scale = np.float32(1.0)
    if gap > 0.0:
        scale = np.float32(2.0 ** (-np.ceil(np.log2(gap))) * (255.5 - 1e-10))
    scales[m] = scale
    for c in range(C):
        for k in range(K):
            q = np.floor((np.float64(luts[c, k, m]) - offsets[c, m]) * scale + 0.5)
            out[c, k, m] = np.uint8(min(max(q, 0.0), 255.0))


@njit(**JIT)
def quantize_luts_serial(luts, offsets, scales, out):
    """Serial twin of :func:`quantize_luts_parallel`."""
    for m in range(luts.shape[2]):
        _quantize_output(luts, m, offsets, scales, out)


@njit(**PJIT)
def quantize_luts_parallel(luts, offsets, scales, out):
    """Quantise float32 ``luts[C, 16, M]`` into uint8 ``out``, float32 ``offsets[C, M]`` and
    ``scales[M]``, one output per iteration."""
    for m in prange(luts.shape[2]):
        _quantize_output(luts, m, offsets, scales, out)
