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
Four outputs go per pass over a chunk of blocks, sharing each load of codes; their sums are
dequantised with the same float32 expression straight from registers into the result's
columns: the scan writes ``out_t[M, N]``, the transposed (F-ordered) result, as MADDNESS's
reference writes its output, so no transpose of 16-bit sums is needed. These kernels need
AVX2 (:func:`kernels.simd.has_avx2`); the dispatcher never calls them elsewhere.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .simd import (add_scaled_u16x16, add_times_zero, average_u8x32, high_nibbles, load_f32x8,
                   load_table16, load_u8x32, lookup_u8x32, low_nibbles, narrow_u8x32,
                   pack_nibbles, store_dequantized, store_u8x32, sum_f32x8,
                   tree_step, widen_high, widen_low, zeros_f32x8, zeros_i32x8, zeros_u16x16,
                   zeros_u8x32)

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
def _tree(size, packed, tables, code_at, table_at):
    """The rounded-average tree of a group of ``size`` codebooks (16, 8, 4, 2 or 1)."""
    if size == 16:
        return _sixteen(packed, tables, code_at, table_at)
    if size == 8:
        return _octet(packed, tables, code_at, table_at)
    if size == 4:
        return _quad(packed, tables, code_at, table_at)
    if size == 2:
        return _pair(packed, tables, code_at, table_at)
    return _single(packed, tables, code_at, table_at)


@njit(**INLINE)
def _group_averages(packed, tables, c0, size, b, m0, m1, m2, m3):
    """The rounded-average trees (u8x32) of the group of ``size`` codebooks from c0 for the
    32 rows of block b and four outputs. Computed side by side, so LLVM loads and unpacks
    each 32 bytes of codes once for all four."""
    code_at = (b * packed.shape[1] + (c0 >> 1)) * BLOCK  # every group starts at an even c0
    C = tables.shape[1]
    return (_tree(size, packed, tables, code_at, (m0 * C + c0) * 16),
            _tree(size, packed, tables, code_at, (m1 * C + c0) * 16),
            _tree(size, packed, tables, code_at, (m2 * C + c0) * 16),
            _tree(size, packed, tables, code_at, (m3 * C + c0) * 16))


@njit(**INLINE)
def _add_average(low, high, average, size):
    """(low, high) += size · average, widened to uint16 (rows 0–15, 16–31)."""
    return (add_scaled_u16x16(low, widen_low(average), size),
            add_scaled_u16x16(high, widen_high(average), size))


@njit(**INLINE)
def _accumulate_block(packed, tables, group_starts, group_sizes, b, m0, m1, m2, m3):
    """uint16 Σ_groups size · (group average) for block b and four outputs, as (low, high)
    u16x16 pairs (rows 0–15, 16–31)."""
    low0 = high0 = low1 = high1 = low2 = high2 = low3 = high3 = zeros_u16x16()
    for g in range(group_starts.shape[0]):
        size = group_sizes[g]
        a0, a1, a2, a3 = _group_averages(packed, tables, group_starts[g], size, b, m0, m1, m2,
                                         m3)
        low0, high0 = _add_average(low0, high0, a0, size)
        low1, high1 = _add_average(low1, high1, a1, size)
        low2, high2 = _add_average(low2, high2, a2, size)
        low3, high3 = _add_average(low3, high3, a3, size)
    return low0, high0, low1, high1, low2, high2, low3, high3


@njit(**INLINE)
def _store_tail(out, at, nrows, parts, inv_scale, shift, tail):
    """The last, partial block of one output: its dequantised ``parts`` (a u8x32 average,
    or the uint16 sums of rows 0–15 and 16–31) go through the float32 scratch ``tail``, and
    its first nrows values into ``out[at:]``."""
    start = 0
    for part in parts:
        store_dequantized(tail, start, part, inv_scale, shift)
        start += BLOCK // len(parts)
    for i in range(nrows):
        out[at + i] = tail[i]


@njit(**INLINE)
def _single_group_blocks(tree, packed, tables, out, tail, where):
    """Blocks first..stop-1 of four outputs when all C codebooks form one group (C ≤ 16, a
    power of two), ``tree`` its averaging function above: the group's size s is folded into
    ``scale`` = s · inv_scale (a power of two: ``float32(s · avg) · inv_scale ==
    float32(avg) · scale`` exactly), so the uint8 averages are dequantised directly. With
    ``tree`` fixed for the loop, LLVM keeps it free of branches."""
    m0, m1, m2, m3, N, first, stop, scale, s0, s1, s2, s3 = where
    C = tables.shape[1]
    whole = min(stop, N // BLOCK)  # blocks with 32 rows
    for b in range(first, whole):
        code_at = b * packed.shape[1] * BLOCK
        store_dequantized(out, m0 * N + b * BLOCK, tree(packed, tables, code_at, m0 * C * 16),
                          scale, s0)
        store_dequantized(out, m1 * N + b * BLOCK, tree(packed, tables, code_at, m1 * C * 16),
                          scale, s1)
        store_dequantized(out, m2 * N + b * BLOCK, tree(packed, tables, code_at, m2 * C * 16),
                          scale, s2)
        store_dequantized(out, m3 * N + b * BLOCK, tree(packed, tables, code_at, m3 * C * 16),
                          scale, s3)
    if whole < stop:
        code_at = whole * packed.shape[1] * BLOCK
        row0 = whole * BLOCK
        for m, shift in ((m0, s0), (m1, s1), (m2, s2), (m3, s3)):
            _store_tail(out, m * N + row0, N - row0,
                        (tree(packed, tables, code_at, m * C * 16),), scale, shift, tail)


@njit(**INLINE)
def _multi_group_blocks(packed, tables, group_starts, group_sizes, out, tail, where):
    """Blocks first..stop-1 of four outputs when the codebooks form several groups: their
    uint16 sums (:func:`_accumulate_block`) dequantised."""
    m0, m1, m2, m3, N, first, stop, inv_scale, s0, s1, s2, s3 = where
    whole = min(stop, N // BLOCK)
    for b in range(first, whole):
        low0, high0, low1, high1, low2, high2, low3, high3 = _accumulate_block(
            packed, tables, group_starts, group_sizes, b, m0, m1, m2, m3)
        row0 = b * BLOCK
        store_dequantized(out, m0 * N + row0, low0, inv_scale, s0)
        store_dequantized(out, m0 * N + row0 + 16, high0, inv_scale, s0)
        store_dequantized(out, m1 * N + row0, low1, inv_scale, s1)
        store_dequantized(out, m1 * N + row0 + 16, high1, inv_scale, s1)
        store_dequantized(out, m2 * N + row0, low2, inv_scale, s2)
        store_dequantized(out, m2 * N + row0 + 16, high2, inv_scale, s2)
        store_dequantized(out, m3 * N + row0, low3, inv_scale, s3)
        store_dequantized(out, m3 * N + row0 + 16, high3, inv_scale, s3)
    if whole < stop:
        low0, high0, low1, high1, low2, high2, low3, high3 = _accumulate_block(
            packed, tables, group_starts, group_sizes, whole, m0, m1, m2, m3)
        row0 = whole * BLOCK
        for m, shift, parts in ((m0, s0, (low0, high0)), (m1, s1, (low1, high1)),
                                (m2, s2, (low2, high2)), (m3, s3, (low3, high3))):
            _store_tail(out, m * N + row0, N - row0, parts, inv_scale, shift, tail)


@njit(**INLINE)
def _scan_packed_blocks(packed, tables, group_starts, group_sizes, inv_scale, out_shift,
                        out_t, first, stop, tail):
    """Packed blocks first..stop-1 into their columns of ``out_t[M, N]`` (the result,
    transposed), dequantised straight from registers with the multiply-add of
    kernels/scan.py. Outputs are the outer loop, four per pass, so their tables stay in L1
    across the blocks."""
    M, N = out_t.shape
    out = out_t.reshape(M * N)
    size = group_sizes[0]
    for m in range(0, M, 4):
        # M not a multiple of 4: the last output computed and written more than once
        m1, m2, m3 = min(m + 1, M - 1), min(m + 2, M - 1), min(m + 3, M - 1)
        shifts = out_shift[m], out_shift[m1], out_shift[m2], out_shift[m3]
        if group_starts.shape[0] > 1:
            _multi_group_blocks(packed, tables, group_starts, group_sizes, out, tail,
                                (m, m1, m2, m3, N, first, stop, inv_scale, *shifts))
            continue
        where = (m, m1, m2, m3, N, first, stop, inv_scale * np.float32(size), *shifts)
        if size == 16:
            _single_group_blocks(_sixteen, packed, tables, out, tail, where)
        elif size == 8:
            _single_group_blocks(_octet, packed, tables, out, tail, where)
        elif size == 4:
            _single_group_blocks(_quad, packed, tables, out, tail, where)
        elif size == 2:
            _single_group_blocks(_pair, packed, tables, out, tail, where)
        else:
            _single_group_blocks(_single, packed, tables, out, tail, where)


@njit(**INLINE)
def _output_tables(luts):
    """``tables[m, c, :]``: the 16 entries of codebook c for output m, contiguous."""
    return np.ascontiguousarray(luts.transpose(2, 0, 1))


@njit(**INLINE)
def _chunk_blocks(chunk, nchunks, nblocks):
    """Blocks first..stop-1 of chunk ``chunk`` when nblocks are split into nchunks nearly
    equal runs."""
    return chunk * nblocks // nchunks, (chunk + 1) * nblocks // nchunks


@njit(**JIT)
def scan_average_packed_serial(packed, luts, group_starts, group_sizes, inv_scale, out_shift,
                               out_t, block_rows, nworkers):
    """Serial twin of :func:`scan_average_packed_parallel` (``nworkers`` is ignored)."""
    tables = _output_tables(luts)
    nblocks = packed.shape[0]
    nchunks = max(1, (nblocks * BLOCK + block_rows - 1) // block_rows)
    tail = np.empty(BLOCK, np.float32)
    for chunk in range(nchunks):
        first, stop = _chunk_blocks(chunk, nchunks, nblocks)
        _scan_packed_blocks(packed, tables, group_starts, group_sizes, inv_scale, out_shift,
                            out_t, first, stop, tail)


@njit(**PJIT)
def scan_average_packed_parallel(packed, luts, group_starts, group_sizes, inv_scale, out_shift,
                                 out_t, block_rows, nworkers):
    """Averaged MADDNESS scan of packed codes with uint8 ``luts[C, 16, M]`` into the
    transposed result ``out_t[M, N]`` (float32), equal bit for bit to
    :func:`kernels.scan.scan_average_parallel` on the unpacked codes. The blocks are split
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
            _scan_packed_blocks(packed, tables, group_starts, group_sizes, inv_scale,
                                out_shift, out_t, first, stop, tail)
