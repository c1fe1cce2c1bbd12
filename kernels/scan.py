"""Lookup-accumulate: ``out[n, m] ≈ Σ_c T[c, codes[n, c], m]`` (the hot loop).

Layout (maddness.md §5, "row-gather"): tables are ``luts[c, k, m]`` with M contiguous,
so each (row, codebook) step adds one contiguous table row and LLVM vectorises across M.
Rows are processed in blocks; each block owns its output rows and its scratch.

``scan_average_*`` is MADDNESS's quantised accumulation (Blalock & Guttag 2021, §4.2;
maddness.md §4.2): codebooks are taken in groups of ``group_sizes`` (powers of two, at
most 16); inside a group the uint8 entries are combined by a tree of rounded averages
``(a + b + 1) >> 1``; each group's average is weighted by its size and summed in uint16,
which cannot overflow for up to 256 codebooks (256 · 255 < 2**16). The result is
dequantised in place: ``acc * inv_scale + out_shift[m]``, one multiply-add, where the
caller folds the groups' rounding bias, the tables' offset and the output bias into
``out_shift`` (``lutengine._dispatch.dequantization``), so the scalar and vectorised
loops round alike; the SIMD (kernels/packed.py) and CUDA twins compute the same FMA.

``scan_float_*`` sums float32 tables exactly (``quantize=False``).
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT


@njit(**INLINE)
def _average_group(row_codes, luts, c0, size, pairs):
    """Rounded-average tree over codebooks c0 .. c0+size-1 of one row, left in pairs[0]."""
    one = np.uint16(1)
    half = size // 2
    for j in range(half):
        a = luts[c0 + 2 * j, row_codes[c0 + 2 * j]]
        b = luts[c0 + 2 * j + 1, row_codes[c0 + 2 * j + 1]]
        p = pairs[j]
        for m in range(luts.shape[2]):
            p[m] = (np.uint16(a[m]) + np.uint16(b[m]) + one) >> one
    while half > 1:
        half //= 2
        for j in range(half):
            p = pairs[j]
            x = pairs[2 * j]
            y = pairs[2 * j + 1]
            for m in range(luts.shape[2]):
                p[m] = (np.uint16(x[m]) + np.uint16(y[m]) + one) >> one


@njit(**INLINE)
def _padded_tables(luts):
    """A copy of the tables with M padded to a multiple of 32 (zeros): every loop over
    outputs then runs in whole 32-byte vectors, with no scalar remainder."""
    padded = np.zeros((luts.shape[0], luts.shape[1], (luts.shape[2] + 31) // 32 * 32), np.uint8)
    padded[:, :, : luts.shape[2]] = luts
    return padded


@njit(**INLINE)
def _scan_average_rows(codes, luts, group_starts, group_sizes, inv_scale, out_shift, out,
                       start, stop, acc, pairs):
    """Rows start..stop-1 of out from the same rows of codes."""
    M = luts.shape[2]  # padded width; out has the true width
    for n in range(start, stop):
        row_codes = codes[n]
        acc[:] = 0
        for g in range(group_starts.shape[0]):
            c0 = group_starts[g]
            size = group_sizes[g]
            # literal sizes let LLVM unroll the averaging tree
            if size == 16:
                _average_group(row_codes, luts, c0, 16, pairs)
            elif size == 8:
                _average_group(row_codes, luts, c0, 8, pairs)
            elif size == 4:
                _average_group(row_codes, luts, c0, 4, pairs)
            elif size == 2:
                _average_group(row_codes, luts, c0, 2, pairs)
            else:
                pairs[0, :] = luts[c0, row_codes[c0]]
            weight = np.uint16(size)
            p = pairs[0]
            for m in range(M):
                acc[m] += weight * np.uint16(p[m])
        o = out[n]
        for m in range(o.shape[0]):
            o[m] = np.float32(acc[m]) * inv_scale + out_shift[m]


@njit(**JIT)
def scan_average_serial(codes, luts, group_starts, group_sizes, inv_scale, out_shift, out,
                        block_rows, nworkers):
    """Serial twin of :func:`scan_average_parallel` (``nworkers`` is ignored)."""
    padded = _padded_tables(luts)
    M = padded.shape[2]
    _scan_average_rows(codes, padded, group_starts, group_sizes, inv_scale, out_shift, out, 0,
                       codes.shape[0], np.empty(M, np.uint16), np.empty((8, M), np.uint8))


@njit(**PJIT)
def scan_average_parallel(codes, luts, group_starts, group_sizes, inv_scale, out_shift, out,
                          block_rows, nworkers):
    """Quantised MADDNESS scan of uint8 ``luts[C, 16, M]`` into float32 ``out[N, M]``;
    each of ``nworkers`` workers takes every ``nworkers``-th block of rows."""
    nblocks = (codes.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nblocks))
    padded = _padded_tables(luts)
    M = padded.shape[2]
    for w in prange(nworkers):
        # scratch allocated once per worker: private, so LLVM knows it aliases nothing
        acc = np.empty(M, np.uint16)
        pairs = np.empty((8, M), np.uint8)
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, codes.shape[0])
            _scan_average_rows(codes, padded, group_starts, group_sizes, inv_scale, out_shift,
                               out, start, stop, acc, pairs)


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
