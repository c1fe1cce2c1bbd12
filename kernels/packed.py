"""MADDNESS in the reference's packed layout, scanned with ``vpshufb`` (maddness.md §5).

Packed codes: ``packed[nblocks, npairs, 32]`` uint8 with ``nblocks = ceil(N / 32)`` and
``npairs = ceil(C / 2)``; byte ``packed[b, j, i]`` holds row ``32 b + i``: codebook ``2 j`` in
its low nibble, codebook ``2 j + 1`` in its high nibble. Rows past N and the high nibble of
the last pair when C is odd are 0. So one 32-byte load gives two codebooks of 32 rows.

``encode_tree_packed_*`` writes that layout straight from X (same trees as
:mod:`kernels.encode`, C- or F-ordered X). ``scan_average_packed_*`` is the averaged scan
of :mod:`kernels.scan` on it, with the same integers: the tables of output ``m`` are
broadcast to both lanes, ``vpshufb`` looks up 32 rows at once, ``vpavgb`` builds the same
rounded-average tree inside each group (every group starts at an even codebook, so a
group's pairs are whole bytes), and the groups are summed in uint16 weighted by their size.
The result is dequantised with the same float32 expression. These kernels need AVX2
(:func:`kernels.simd.has_avx2`); the dispatcher never calls them elsewhere.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .encode import _block_tree_codes
from .simd import (add_scaled_u16x16, average_u8x32, high_nibbles, load_table16, load_u8x32,
                   lookup_u8x32, low_nibbles, store_u16x16, transpose_u16x16, widen_high,
                   widen_low, zeros_u16x16)

#: rows per packed block: one 32-byte vector
BLOCK = 32


# -- encoder -----------------------------------------------------------------------------

@njit(**INLINE)
def _encode_packed_rows(X, split_dims, thresholds, packed, start, stop, columns_contiguous,
                        values, block_codes):
    """Encode rows start..stop-1 (start a multiple of 32) into their packed blocks; return 1
    if a value read was NaN/Inf, else 0. Codes of rows past stop up to the block end are 0."""
    nrows = stop - start
    C = split_dims.shape[0]
    poison = _block_tree_codes(X, split_dims, thresholds, start, nrows, columns_contiguous,
                              values, block_codes)
    padded_rows = (nrows + BLOCK - 1) // BLOCK * BLOCK
    block_codes[:, nrows:padded_rows] = 0
    if C % 2:
        block_codes[C, :padded_rows] = 0
    first_block = start // BLOCK
    for k in range(padded_rows // BLOCK):
        for j in range(packed.shape[1]):
            low = block_codes[2 * j, k * BLOCK:(k + 1) * BLOCK]
            high = block_codes[2 * j + 1, k * BLOCK:(k + 1) * BLOCK]
            dest = packed[first_block + k, j]
            for i in range(BLOCK):
                dest[i] = low[i] | (high[i] << np.uint8(4))
    return np.int64(poison != 0.0)


@njit(**INLINE)
def _encode_scratch(C, block_rows):
    """Gathered split values and the block's codes (one spare codebook row for odd C)."""
    return (np.empty((C, 4, block_rows), dtype=np.float32),
            np.empty((C + 1, block_rows), dtype=np.uint8))


@njit(**JIT)
def encode_tree_packed_serial(X, split_dims, thresholds, packed, block_rows, columns_contiguous,
                              nworkers):
    """Serial twin of :func:`encode_tree_packed_parallel` (``nworkers`` is ignored)."""
    values, block_codes = _encode_scratch(split_dims.shape[0], block_rows)
    nonfinite = np.int64(0)
    for start in range(0, X.shape[0], block_rows):
        stop = min(start + block_rows, X.shape[0])
        nonfinite += _encode_packed_rows(X, split_dims, thresholds, packed, start, stop,
                                         columns_contiguous, values, block_codes)
    return nonfinite


@njit(**PJIT)
def encode_tree_packed_parallel(X, split_dims, thresholds, packed, block_rows,
                                columns_contiguous, nworkers):
    """MADDNESS tree codes of every row of X written into ``packed`` (layout above); returns
    how many row blocks read NaN/Inf. ``block_rows`` must be a multiple of 32; each of
    ``nworkers`` workers takes every ``nworkers``-th block with its own scratch."""
    nblocks = (X.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nblocks))
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        values, block_codes = _encode_scratch(split_dims.shape[0], block_rows)
        for b in range(w, nblocks, nworkers):
            start = b * block_rows
            stop = min(start + block_rows, X.shape[0])
            counts[w] += _encode_packed_rows(X, split_dims, thresholds, packed, start, stop,
                                             columns_contiguous, values, block_codes)
    return counts.sum()


# -- scan --------------------------------------------------------------------------------

# The trees below read the codes of codebooks c, c + 1, ... of one block from ``code_at``
# (32 bytes per pair) and one output's tables of the same codebooks from ``table_at`` (16
# bytes per codebook); offsets grow by constants, which LLVM folds into the addresses.

@njit(**INLINE)
def _pair(packed, tables, code_at, table_at):
    """Rounded average of two codebooks (one packed pair) for 32 rows."""
    codes = load_u8x32(packed, code_at)
    low = lookup_u8x32(load_table16(tables, table_at), low_nibbles(codes))
    high = lookup_u8x32(load_table16(tables, table_at + 16), high_nibbles(codes))
    return average_u8x32(low, high)


@njit(**INLINE)
def _single(packed, tables, code_at, table_at):
    return lookup_u8x32(load_table16(tables, table_at), low_nibbles(load_u8x32(packed, code_at)))


@njit(**INLINE)
def _quad(packed, tables, code_at, table_at):
    return average_u8x32(_pair(packed, tables, code_at, table_at),
                         _pair(packed, tables, code_at + BLOCK, table_at + 32))


@njit(**INLINE)
def _octet(packed, tables, code_at, table_at):
    return average_u8x32(_quad(packed, tables, code_at, table_at),
                         _quad(packed, tables, code_at + 2 * BLOCK, table_at + 64))


@njit(**INLINE)
def _sixteen(packed, tables, code_at, table_at):
    return average_u8x32(_octet(packed, tables, code_at, table_at),
                         _octet(packed, tables, code_at + 4 * BLOCK, table_at + 128))


@njit(**INLINE)
def _accumulate_block(packed, tables, group_starts, group_sizes, b, m, m_next, acc, acc_start):
    """uint16 Σ_groups size · (rounded-average tree of the group) for the rows of block b
    and two outputs at once: m, stored to ``acc[acc_start : acc_start + 32]``, and m_next,
    stored to the next 32. The two trees of a group are computed side by side, so LLVM
    loads and unpacks each 32 bytes of codes once for both."""
    low = zeros_u16x16()
    high = zeros_u16x16()
    low_next = zeros_u16x16()
    high_next = zeros_u16x16()
    C = tables.shape[1]
    for g in range(group_starts.shape[0]):
        c0 = group_starts[g]
        size = group_sizes[g]
        code_at = (b * packed.shape[1] + (c0 >> 1)) * BLOCK  # every group starts at an even c0
        table_at = (m * C + c0) * 16
        next_at = (m_next * C + c0) * 16
        if size == 16:
            average = _sixteen(packed, tables, code_at, table_at)
            average_next = _sixteen(packed, tables, code_at, next_at)
        elif size == 8:
            average = _octet(packed, tables, code_at, table_at)
            average_next = _octet(packed, tables, code_at, next_at)
        elif size == 4:
            average = _quad(packed, tables, code_at, table_at)
            average_next = _quad(packed, tables, code_at, next_at)
        elif size == 2:
            average = _pair(packed, tables, code_at, table_at)
            average_next = _pair(packed, tables, code_at, next_at)
        else:
            average = _single(packed, tables, code_at, table_at)
            average_next = _single(packed, tables, code_at, next_at)
        low = add_scaled_u16x16(low, widen_low(average), size)
        high = add_scaled_u16x16(high, widen_high(average), size)
        low_next = add_scaled_u16x16(low_next, widen_low(average_next), size)
        high_next = add_scaled_u16x16(high_next, widen_high(average_next), size)
    store_u16x16(acc, acc_start, low)
    store_u16x16(acc, acc_start + 16, high)
    store_u16x16(acc, acc_start + BLOCK, low_next)
    store_u16x16(acc, acc_start + BLOCK + 16, high_next)


@njit(**INLINE)
def _scan_packed_blocks(packed, tables, group_starts, group_sizes, scale, bias, out_shift, out,
                        first, stop, acc, rows_acc):
    """Packed blocks first..stop-1 into their rows of out. Scratch: ``acc[blocks, M', 32]``
    and ``rows_acc[32, M']`` uint16, M' = M rounded up to 16. Outputs are the outer loop, two
    per pass, so their tables stay in L1 across the blocks; each block's sums are then transposed
    to rows, and dequantised with the loop over outputs innermost, as in kernels/scan.py."""
    M = out.shape[1]
    padded_M = acc.shape[1]
    for m in range(0, M, 2):
        m_next = min(m + 1, M - 1)  # odd M: the last output twice, into a padding row
        for b in range(first, stop):
            _accumulate_block(packed, tables, group_starts, group_sizes, b, m, m_next,
                              acc[b - first], m * BLOCK)
    inv_scale = np.float32(1.0) / scale
    for b in range(first, stop):
        for m0 in range(0, padded_M, 16):
            for half in range(0, BLOCK, 16):
                transpose_u16x16(acc[b - first], m0 * BLOCK + half, BLOCK, rows_acc,
                                 half * padded_M + m0, padded_M)
        for i in range(min(BLOCK, out.shape[0] - b * BLOCK)):
            o = out[b * BLOCK + i]
            row = rows_acc[i]
            for m in range(M):
                o[m] = (np.float32(row[m]) - bias) * inv_scale + out_shift[m]


@njit(**INLINE)
def _scan_scratch(blocks_per_chunk, M):
    padded_M = (M + 15) // 16 * 16
    return (np.empty((blocks_per_chunk, padded_M, BLOCK), np.uint16),
            np.empty((BLOCK, padded_M), np.uint16))


@njit(**INLINE)
def _output_tables(luts):
    """``tables[m, c, :]``: the 16 entries of codebook c for output m, contiguous."""
    return np.ascontiguousarray(luts.transpose(2, 0, 1))


@njit(**JIT)
def scan_average_packed_serial(packed, luts, group_starts, group_sizes, scale, bias, out_shift,
                               out, block_rows, nworkers):
    """Serial twin of :func:`scan_average_packed_parallel` (``nworkers`` is ignored)."""
    tables = _output_tables(luts)
    blocks_per_chunk = max(1, block_rows // BLOCK)
    acc, rows_acc = _scan_scratch(blocks_per_chunk, out.shape[1])
    for first in range(0, packed.shape[0], blocks_per_chunk):
        _scan_packed_blocks(packed, tables, group_starts, group_sizes, scale, bias, out_shift,
                            out, first, min(first + blocks_per_chunk, packed.shape[0]), acc,
                            rows_acc)


@njit(**PJIT)
def scan_average_packed_parallel(packed, luts, group_starts, group_sizes, scale, bias,
                                 out_shift, out, block_rows, nworkers):
    """Averaged MADDNESS scan of packed codes with uint8 ``luts[C, 16, M]`` into float32
    ``out[N, M]``, equal bit for bit to :func:`kernels.scan.scan_average_parallel` on the
    unpacked codes. Rows go in chunks of ``block_rows`` (rounded down to whole packed blocks);
    each of ``nworkers`` workers takes every ``nworkers``-th chunk."""
    tables = _output_tables(luts)
    blocks_per_chunk = max(1, block_rows // BLOCK)
    nchunks = (packed.shape[0] + blocks_per_chunk - 1) // blocks_per_chunk
    nworkers = max(1, min(nworkers, nchunks))
    for w in prange(nworkers):
        acc, rows_acc = _scan_scratch(blocks_per_chunk, out.shape[1])  # once per worker
        for chunk in range(w, nchunks, nworkers):
            first = chunk * blocks_per_chunk
            _scan_packed_blocks(packed, tables, group_starts, group_sizes, scale, bias,
                                out_shift, out, first,
                                min(first + blocks_per_chunk, packed.shape[0]), acc, rows_acc)
