"""Lookup tables from prototypes, and their int8 quantisation.

``build_luts``: ``T[c, k, m] = <P[c, k, :], B[:, m]>`` (maddness.md §3.2), one BLAS call.

``quantize_luts_*`` (maddness.md §4.1): per codebook the offset is its smallest entry
over all outputs; one power-of-two scale ``2**-ceil(log2(gap)) · 255.5`` (gap = largest
per-codebook range) maps every table into [0, 255] with round-half-up, so the
dequantisation is a shift. Tables are stored as uint8 (offset-shifted, i.e. int8 values
plus 128, which keeps the arithmetic unsigned).
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
def _scale_from_ranges(mins, maxs):
    gap = np.float64(0.0)
    for c in range(mins.shape[0]):
        gap = max(gap, np.float64(maxs[c]) - np.float64(mins[c]))
    if gap <= 0.0:
        return np.float32(1.0)
    return np.float32(2.0 ** (-np.ceil(np.log2(gap))) * (255.5 - 1e-10))


@njit(**INLINE)
def _quantize_codebook(luts, c, mins, scale, out):
    for k in range(luts.shape[1]):
        for m in range(luts.shape[2]):
            q = np.floor((np.float64(luts[c, k, m]) - mins[c]) * scale + 0.5)
            out[c, k, m] = np.uint8(min(max(q, 0.0), 255.0))


@njit(**JIT)
def quantize_luts_serial(luts, out):
    """Serial twin of :func:`quantize_luts_parallel`."""
    C = luts.shape[0]
    mins = np.empty(C, dtype=np.float32)
    maxs = np.empty(C, dtype=np.float32)
    for c in range(C):
        mins[c] = luts[c].min()
        maxs[c] = luts[c].max()
    scale = _scale_from_ranges(mins, maxs)
    for c in range(C):
        _quantize_codebook(luts, c, mins, scale, out)
    return mins, scale


@njit(**PJIT)
def quantize_luts_parallel(luts, out):
    """Quantise float32 ``luts[C, 16, M]`` into uint8 ``out``; return (mins[C], scale)."""
    C = luts.shape[0]
    mins = np.empty(C, dtype=np.float32)
    maxs = np.empty(C, dtype=np.float32)
    for c in prange(C):
        mins[c] = luts[c].min()
        maxs[c] = luts[c].max()
    scale = _scale_from_ranges(mins, maxs)
    for c in prange(C):
        _quantize_codebook(luts, c, mins, scale, out)
    return mins, scale
