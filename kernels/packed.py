"""MADDNESS in the reference's packed layout, scanned with ``vpshufb`` (Blalock & Guttag
2021, §4.4 and its reference implementation's layout).

Packed codes: ``packed[nblocks, npairs, 32]`` uint8 with ``nblocks = ceil(N / 32)`` and
``npairs = ceil(C / 2)``; byte ``packed[b, j, i]`` holds row ``32 b + i``: codebook ``2 j`` in
its low nibble, codebook ``2 j + 1`` in its high nibble. Rows past N and the high nibble of
the last pair when C is odd are 0. So one 32-byte load gives two codebooks of 32 rows.

``encode_tree_packed_*`` writes that layout straight from X (same trees as
:mod:`kernels.encode`, C- or F-ordered X). ``scan_quantized_packed_*`` is the quantised scan
of :mod:`kernels.scan` on it, with the same integers: the tables of output ``m`` are
broadcast to both lanes, ``vpshufb`` looks up 32 rows at once, and the looked-up bytes are
summed exactly in uint16 with FAISS's fast-scan accumulation (:func:`kernels.simd.add_words`:
2 additions and a shift per lookup; an odd C reads a zero table for the missing codebook).
Four outputs go per pass over a chunk of blocks, sharing each load of codes; their sums are
dequantised with each output's own ``inv_scale[m]`` and ``out_shift[m]``, the float32
multiply-add of :mod:`kernels.scan`, straight from registers into the result's columns: the
scan writes ``out_t[M, N]``, the transposed (F-ordered) result, as MADDNESS's reference
writes its output, so no transpose of 16-bit sums is needed. These kernels need AVX2
(:func:`kernels.simd.has_avx2`); the dispatcher never calls them elsewhere.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .simd import (add_high_bytes, add_times_zero, add_words, high_nibbles, load_f32x8,
                   load_table16, load_u8x32, lookup_u8x32, low_nibbles, narrow_u8x32,
                   pack_nibbles, row_sums_high, row_sums_low, store_dequantized, store_u8x32,
                   sum_f32x8, tree_step, zeros_f32x8, zeros_i32x8, zeros_u16x16, zeros_u8x32)

#: rows per packed block: one 32-byte vector
BLOCK = 32


# -- encoder -----------------------------------------------------------------------------

@njit(**INLINE)
def _level_tables(thresholds):
    """``levels[c, l, j]``: the threshold of node j at level l of tree c, read from the heap
    order of :mod:`kernels.encode` (``thresholds[c, 2**l - 1 + j]``); lanes j ≥ 2**l are 0
    and never read. One f32x8 per level, so ``vpermps`` picks each row's node threshold."""
    levels = np.zeros((thresholds.shape[0], 4, 8), dtype=np.float32)
    for c in range(thresholds.shape[0]):
        for level in range(4):
            for j in range(1 << level):
                levels[c, level, j] = thresholds[c, (1 << level) - 1 + j]
    return levels


@njit(**INLINE)
def _level_step(nodes, source, at, table):
    """One tree level for 32 rows (four i32x8 of node indices); returns the new nodes and
    the level's poison: 0 · every value read (NaN iff one is NaN or ±Inf)."""
    x0, x1 = load_f32x8(source, at), load_f32x8(source, at + 8)
    x2, x3 = load_f32x8(source, at + 16), load_f32x8(source, at + 24)
    poison = add_times_zero(add_times_zero(add_times_zero(add_times_zero(zeros_f32x8(), x0),
                                                          x1), x2), x3)
    return (tree_step(nodes[0], x0, table), tree_step(nodes[1], x1, table),
            tree_step(nodes[2], x2, table), tree_step(nodes[3], x3, table)), poison


@njit(**INLINE)
def _tree_codes32(sources, at, levels, c):
    """Codes of tree c for 32 rows whose split values at level l are ``sources[l][at : at +
    32]``, as a u8x32, and their poison (f32x8, see :func:`_level_step`)."""
    zero = zeros_i32x8()
    nodes = (zero, zero, zero, zero)
    nodes, p0 = _level_step(nodes, sources[0], at, load_f32x8(levels, 32 * c))
    nodes, p1 = _level_step(nodes, sources[1], at, load_f32x8(levels, 32 * c + 8))
    nodes, p2 = _level_step(nodes, sources[2], at, load_f32x8(levels, 32 * c + 16))
    nodes, p3 = _level_step(nodes, sources[3], at, load_f32x8(levels, 32 * c + 24))
    # poison summed as a tree, so only one add per call joins the caller's running sum
    return (narrow_u8x32(nodes[0], nodes[1], nodes[2], nodes[3]),
            add_times_zero(add_times_zero(p0, p1), add_times_zero(p2, p3)))


@njit(**INLINE)
def _tree_sources(columns, values, split_dims, c, in_place):
    """The 4 split-value rows of tree c: columns of X in place (rows of ``columns`` = X.T),
    or the gathered ``values[c]``. ``np.ascontiguousarray`` only fixes the type of a row of
    X.T when X is C-ordered, where ``in_place`` is never true."""
    if in_place:
        d = split_dims[c]
        return (np.ascontiguousarray(columns[d[0]]), np.ascontiguousarray(columns[d[1]]),
                np.ascontiguousarray(columns[d[2]]), np.ascontiguousarray(columns[d[3]]))
    return values[c, 0], values[c, 1], values[c, 2], values[c, 3]


@njit(**INLINE)
def _gather_split_values(X, split_dims, start, nrows, columns_contiguous, values):
    """``values[c, l, i]`` = X[start + i, split_dims[c, l]] for i < nrows, 0 up to the next
    whole block (those rows' codes are overwritten with 0 after encoding)."""
    padded = (nrows + BLOCK - 1) // BLOCK * BLOCK
    values[:, :, nrows:padded] = 0.0
    if columns_contiguous:
        columns = X.T
        for c in range(split_dims.shape[0]):
            for level in range(4):
                values[c, level, :nrows] = columns[split_dims[c, level], start:start + nrows]
    else:
        for i in range(nrows):
            row = X[start + i]
            for c in range(split_dims.shape[0]):
                for level in range(4):
                    values[c, level, i] = row[split_dims[c, level]]


@njit(**JIT)  # not inlined: parfors' array analysis would take its tuples of vectors for shapes
def _encode_packed_rows(X, split_dims, levels, packed, start, stop, columns_contiguous,
                        values):
    """Encode rows start..stop-1 (start a multiple of 32) into their packed blocks; return 1
    if a value read was NaN/Inf, else 0. Codes of rows past stop up to the block end are 0.

    F-ordered X in whole blocks: the trees read their split columns in place (rows of X.T).
    Otherwise the split values are first gathered into ``values[c, l, i]``."""
    nrows = stop - start
    nblocks = (nrows + BLOCK - 1) // BLOCK
    C = split_dims.shape[0]
    npairs = packed.shape[1]
    in_place = columns_contiguous and nrows == nblocks * BLOCK
    if not in_place:
        _gather_split_values(X, split_dims, start, nrows, columns_contiguous, values)
    columns = X.T
    base = start if in_place else 0
    poison = zeros_f32x8()
    for j in range(npairs):
        low_sources = _tree_sources(columns, values, split_dims, 2 * j, in_place)
        high_sources = _tree_sources(columns, values, split_dims, min(2 * j + 1, C - 1),
                                     in_place)
        for b in range(nblocks):
            at = base + b * BLOCK
            low, low_poison = _tree_codes32(low_sources, at, levels, 2 * j)
            if 2 * j + 1 < C:
                high, high_poison = _tree_codes32(high_sources, at, levels, 2 * j + 1)
                low_poison = add_times_zero(low_poison, high_poison)
            else:
                high = zeros_u8x32()
            poison = add_times_zero(poison, low_poison)
            store_u8x32(packed, ((start // BLOCK + b) * npairs + j) * BLOCK,
                        pack_nibbles(low, high))
        packed[start // BLOCK + nblocks - 1, j, nrows - (nblocks - 1) * BLOCK:] = 0
    return np.int64(sum_f32x8(poison) != 0.0)


@njit(**JIT)
def encode_tree_packed_serial(X, split_dims, thresholds, packed, block_rows, columns_contiguous,
                              nworkers):
    """Serial twin of :func:`encode_tree_packed_parallel` (``nworkers`` is ignored)."""
    levels = _level_tables(thresholds)
    values = np.empty((split_dims.shape[0], 4, block_rows), np.float32)
    nonfinite = np.int64(0)
    for start in range(0, X.shape[0], block_rows):
        stop = min(start + block_rows, X.shape[0])
        nonfinite += _encode_packed_rows(X, split_dims, levels, packed, start, stop,
                                         columns_contiguous, values)
    return nonfinite


@njit(**PJIT)
def encode_tree_packed_parallel(X, split_dims, thresholds, packed, block_rows,
                                columns_contiguous, nworkers):
    """MADDNESS tree codes of every row of X written into ``packed`` (layout above), 8 rows
    per vector: each level's node threshold is picked per row by ``vpermps``
    (:func:`kernels.simd.tree_step`), the same comparisons as :mod:`kernels.encode`. Returns
    how many row chunks read NaN/Inf. ``block_rows`` must be a multiple of 32; each of
    ``nworkers`` workers takes every ``nworkers``-th chunk with its own scratch."""
    levels = _level_tables(thresholds)
    nchunks = (X.shape[0] + block_rows - 1) // block_rows
    nworkers = max(1, min(nworkers, nchunks))
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        values = np.empty((split_dims.shape[0], 4, block_rows), np.float32)
        for chunk in range(w, nchunks, nworkers):
            start = chunk * block_rows
            stop = min(start + block_rows, X.shape[0])
            counts[w] += _encode_packed_rows(X, split_dims, levels, packed, start, stop,
                                             columns_contiguous, values)
    return counts.sum()


# -- scan --------------------------------------------------------------------------------

@njit(**INLINE)
def _add_pair(sums, packed, tables, code_at, table_at):
    """``sums`` (word sums, odd-byte sums; :func:`kernels.simd.add_words`) plus the table
    entries of one packed pair of codebooks for 32 rows: ``code_at`` is the pair's 32 code
    bytes, ``table_at`` the first codebook's 16 entries (the second's follow)."""
    codes = load_u8x32(packed, code_at)
    low = lookup_u8x32(load_table16(tables, table_at), low_nibbles(codes))
    high = lookup_u8x32(load_table16(tables, table_at + 16), high_nibbles(codes))
    words, odd = sums
    return (add_words(add_words(words, low), high),
            add_high_bytes(add_high_bytes(odd, low), high))


@njit(**INLINE)
def _accumulate_block(packed, tables, b, outputs):
    """Exact uint16 sums Σ_c T[c, code, m] of the 32 rows of block b for the four ``outputs``
    (m0, m1, m2, m3), each as (word sums, odd-byte sums). The four share each load of codes;
    with no branch in the loop, LLVM keeps the eight accumulators in registers."""
    m0, m1, m2, m3 = outputs
    zero = zeros_u16x16()
    s0 = s1 = s2 = s3 = (zero, zero)
    npairs = packed.shape[1]
    span = tables.shape[1] * 16  # one output's tables
    for j in range(npairs):
        code_at = (b * npairs + j) * BLOCK
        s0 = _add_pair(s0, packed, tables, code_at, m0 * span + 32 * j)
        s1 = _add_pair(s1, packed, tables, code_at, m1 * span + 32 * j)
        s2 = _add_pair(s2, packed, tables, code_at, m2 * span + 32 * j)
        s3 = _add_pair(s3, packed, tables, code_at, m3 * span + 32 * j)
    return s0, s1, s2, s3


@njit(**INLINE)
def _store_block(out, at, sums, inv_scale, shift):
    """The dequantised sums of one block of one output into ``out[at : at + 32]``."""
    words, odd = sums
    store_dequantized(out, at, row_sums_low(words, odd), inv_scale, shift)
    store_dequantized(out, at + 16, row_sums_high(words, odd), inv_scale, shift)


@njit(**INLINE)
def _scan_packed_blocks(packed, tables, inv_scale, out_shift, out_t, first, stop, tail):
    """Packed blocks first..stop-1 into their columns of ``out_t[M, N]`` (the result,
    transposed), dequantised straight from registers with the multiply-add of
    kernels/scan.py. Outputs are the outer loop, four per pass, so their tables stay in L1
    across the blocks; the last, partial block goes through the scratch ``tail``."""
    M, N = out_t.shape
    out = out_t.reshape(M * N)
    whole = min(stop, N // BLOCK)  # blocks with 32 rows
    for m0 in range(0, M, 4):
        # M not a multiple of 4: the last output computed and written more than once
        outputs = (m0, min(m0 + 1, M - 1), min(m0 + 2, M - 1), min(m0 + 3, M - 1))
        for b in range(first, whole):
            sums = _accumulate_block(packed, tables, b, outputs)
            for m, s in zip(outputs, sums):
                _store_block(out, m * N + b * BLOCK, s, inv_scale[m], out_shift[m])
        if whole < stop:
            sums = _accumulate_block(packed, tables, whole, outputs)
            for m, s in zip(outputs, sums):
                _store_block(tail, 0, s, inv_scale[m], out_shift[m])
                out[m * N + whole * BLOCK:(m + 1) * N] = tail[:N - whole * BLOCK]


@njit(**INLINE)
def _output_tables(luts):
    """``tables[m, c, :]``: the 16 entries of codebook c for output m, contiguous; C padded
    to whole pairs with a zero table (the packed codes' missing high nibble reads it)."""
    C, K, M = luts.shape
    tables = np.zeros((M, C + C % 2, K), np.uint8)
    tables[:, :C, :] = luts.transpose(2, 0, 1)
    return tables


@njit(**INLINE)
def _chunk_blocks(chunk, nchunks, nblocks):
    """Blocks first..stop-1 of chunk ``chunk`` when nblocks are split into nchunks nearly
    equal runs."""
    return chunk * nblocks // nchunks, (chunk + 1) * nblocks // nchunks


@njit(**JIT)
def scan_quantized_packed_serial(packed, luts, inv_scale, out_shift, out_t, block_rows, nworkers):
    """Serial twin of :func:`scan_quantized_packed_parallel` (``nworkers`` is ignored)."""
    tables = _output_tables(luts)
    nblocks = packed.shape[0]
    nchunks = max(1, (nblocks * BLOCK + block_rows - 1) // block_rows)
    tail = np.empty(BLOCK, np.float32)
    for chunk in range(nchunks):
        first, stop = _chunk_blocks(chunk, nchunks, nblocks)
        _scan_packed_blocks(packed, tables, inv_scale, out_shift, out_t, first, stop, tail)


@njit(**PJIT)
def scan_quantized_packed_parallel(packed, luts, inv_scale, out_shift, out_t, block_rows,
                                 nworkers):
    """Quantised MADDNESS scan of packed codes with uint8 ``luts[C, 16, M]`` into the
    transposed result ``out_t[M, N]`` (float32), equal bit for bit to
    :func:`kernels.scan.scan_quantized_parallel` on the unpacked codes. The blocks are split
    into equal chunks of about ``block_rows`` rows, as many per worker (``nworkers``)."""
    tables = _output_tables(luts)
    nblocks = packed.shape[0]
    nworkers = max(1, min(nworkers, nblocks))
    per_worker = max(1, (nblocks * BLOCK + block_rows * nworkers - 1) // (block_rows * nworkers))
    nchunks = per_worker * nworkers
    for w in prange(nworkers):
        tail = np.empty(BLOCK, np.float32)  # once per worker
        for chunk in range(w * per_worker, (w + 1) * per_worker):
            first, stop = _chunk_blocks(chunk, nchunks, nblocks)
            _scan_packed_blocks(packed, tables, inv_scale, out_shift, out_t, first, stop,
                                tail)
