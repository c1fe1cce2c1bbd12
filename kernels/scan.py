"""Lookup-accumulate: ``out[n, m] ≈ Σ_c T[c, codes[n, c], m]`` (the hot loop).

Layout (MADDNESS's "row-gather"): tables are ``luts[c, k, m]`` with M contiguous, so each
(row, codebook) step adds one contiguous table row and LLVM vectorises across M. Rows are
processed in blocks; each block owns its output rows and its scratch.

``scan_quantized_*`` is MADDNESS's quantised accumulation (Blalock & Guttag 2021, §4.4) with
exact sums: the uint8 entries are added in uint16, which cannot overflow for up to 256
codebooks (256 · 255 < 2**16), instead of MADDNESS's trees of rounded averages, whose
rounding error grows with C. The result is dequantised in place per output:
``float32(acc) * inv_scale[m] + out_shift[m]``, one multiply-add, where the caller folds the
tables' offsets and the output bias into ``out_shift`` (``lutengine._dispatch.dequantization``),
so the scalar and vectorised loops round alike; the SIMD (kernels/packed.py) and CUDA twins
compute the same integers and the same FMA.

``scan_float_*`` sums float32 tables exactly (``quantize=False``).
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _padded_tables(luts):
    """A copy of the tables with M padded to a multiple of 32 (zeros): every loop over
    outputs then runs in whole 32-byte vectors, with no scalar remainder."""
    padded = np.zeros((luts.shape[0], luts.shape[1], (luts.shape[2] + 31) // 32 * 32), np.uint8)
    padded[:, :, : luts.shape[2]] = luts
    return padded


@njit(**INLINE)
def _scan_quantized_rows(codes, luts, inv_scale, out_shift, out, start, stop, acc):
    """Rows start..stop-1 of out from the same rows of codes."""
    M = luts.shape[2]  # padded width; out has the true width
    for n in range(start, stop):
        row_codes = codes[n]
        acc[:] = 0
        for c in range(luts.shape[0]):
            entries = luts[c, row_codes[c]]
            for m in range(M):
                acc[m] += np.uint16(entries[m])
        o = out[n]
        for m in range(o.shape[0]):
            o[m] = np.float32(acc[m]) * inv_scale[m] + out_shift[m]


@njit(**JIT)
def scan_quantized_serial(codes, luts, inv_scale, out_shift, out, block_rows, nworkers):
    """Serial twin of :func:`scan_quantized_parallel` (``nworkers`` is ignored)."""
    padded = _padded_tables(luts)
    _scan_quantized_rows(codes, padded, inv_scale, out_shift, out, 0, codes.shape[0],
                       np.empty(padded.shape[2], np.uint16))


@njit(**PJIT)
def scan_quantized_parallel(codes, luts, inv_scale, out_shift, out, block_rows, nworkers):
    """Quantised MADDNESS scan of uint8 ``luts[C, 16, M]`` into float32 ``out[N, M]``;
    each of ``nworkers`` workers takes every ``nworkers``-th block of rows."""
    nblocks = (codes.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nblocks))
    padded = _padded_tables(luts)
    for w in prange(nworkers):
        # scratch allocated once per worker: private, so LLVM knows it aliases nothing
        acc = np.empty(padded.shape[2], np.uint16)
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, codes.shape[0])
            _scan_quantized_rows(codes, padded, inv_scale, out_shift, out, start, stop, acc)


@njit(**INLINE)
def _scan_float_rows(codes, luts, out_bias, out, start, stop):
    M = luts.shape[2]
    for n in range(start, stop):
        for m in range(M):
            out[n, m] = out_bias[m]
        for c in range(luts.shape[0]):
            row = luts[c, codes[n, c]]
            for m in range(M):
                out[n, m] += row[m]


@njit(**JIT)
def scan_float_serial(codes, luts, out_bias, out, block_rows):
    """Serial twin of :func:`scan_float_parallel`."""
    _scan_float_rows(codes, luts, out_bias, out, 0, codes.shape[0])


@njit(**PJIT)
def scan_float_parallel(codes, luts, out_bias, out, block_rows):
    """Exact float32 sum of ``luts[c, codes[n, c], :]`` over codebooks, plus ``out_bias``."""
    nblocks = (codes.shape[0] + block_rows - 1) // block_rows
    for b in prange(nblocks):
        start = b * block_rows
        stop = min(start + block_rows, codes.shape[0])
        _scan_float_rows(codes, luts, out_bias, out, start, stop)
