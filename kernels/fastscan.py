"""4-bit product-quantisation fast scan for maximum inner product search (the "fast scan"
of FAISS ``IndexPQFastScan``, André et al. VLDB'15, and of ScaNN, Guo et al. ICML'20). No
bounds are checked here: a state read from a file is checked by
``lutengine.fastscan.check_state`` first.

Database rows are PQ codes in the packed layout of :mod:`kernels.packed`:
``packed[nblocks, npairs, 32]`` uint8, byte ``[b, j, i]`` = row ``32 b + i`` with codebook
``2 j`` in the low nibble and ``2 j + 1`` in the high one (padding rows and the missing
high nibble of an odd C are 0).

Per query:

1. ``fastscan_tables_*``: float tables ``T[c, j] = <x[lo_c:hi_c], centroids[c, j]>``,
   quantised to uint8 ``q = floor((T - min_c) · scale + 0.5)`` (clipped to 0..255) with
   one ``scale = min(255 / max_c range_c, (65535 - C) / Σ_c range_c)`` (1 if every table
   is constant), so that a row's sum of C entries always fits in uint16. Tables are
   ``qtables[q, Cpad, 16]`` with ``Cpad = 2 · npairs``; the padding table is 0.
   ``T``'s sum over codebooks is then ``score / scale + offset`` up to C/2 quanta.
2. ``fastscan_scan``: the uint16 score ``Σ_c qtables[c, code_c]`` of every row: the
   tables broadcast to both lanes, ``vpshufb`` looks up 32 rows at once, and the bytes
   are summed exactly in uint16 (FAISS's accumulation: the looked-up bytes read as words,
   and their high bytes, see :func:`kernels.simd.add_words`; no averaging).
   ``fastscan_scan_plain`` is the same integer sum as an ordinary loop (any CPU).
3. ``fastscan_search`` (``fastscan_search_plain`` with the plain scan): the rows are the
   directions u = w / ‖w‖ of the items, so the approximate inner product of a row is
   ``a = ‖w‖ · (score / scale + offset)``. Fused into the scan, block by block while the
   block is in L1, each score becomes a 16-bit key, ``floor((a - lo) · kscale)`` over the
   range of every possible a (one float multiply-add per row, vectorised), and each block's
   largest key is counted in a block histogram. Selection: the cut ``t`` is the largest key
   with at least ``rerank`` rows keyed ≥ t; the candidates are every row keyed > t, then the
   rows keyed t in row order, ``rerank`` in all. A block whose largest key is ≥ t0 has a row
   ≥ t0, so the block histogram gives a lower bound t0 of t, and only the rows of the (about
   ``rerank``) blocks reaching t0 are counted row by row and collected. The candidates are
   re-scored exactly (float32 dot products with the float rows) and the best k kept in a
   binary heap (higher score first, lower row id on ties), written best first.

No ``argpartition`` over N scores: per query the work is the scan (N · npairs bytes), one
float key per row, one histogram increment per 32 rows, and ``rerank`` dot products.

Each kernel is one inlined body given the scan it calls (:func:`_scan_simd` or
:func:`_scan_plain`), so a ``*_plain`` kernel never compiles AVX2 code: the SIMD ones need
AVX2 (:func:`kernels.simd.has_avx2`) and the dispatcher chooses. The kernels split the
queries over ``nworkers`` workers (a ``prange`` over workers, each with its own scratch;
1 worker is the serial path).
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .simd import (add_high_bytes, add_words, high_nibbles, load_table16, load_u8x32,
                   lookup_u8x32, low_nibbles, row_sums_high, row_sums_low, store_u16x16,
                   zeros_u16x16)

#: rows per packed block
BLOCK = 32
#: histogram bins: every 16-bit key
HIST_BINS = 1 << 16


# -- query tables ------------------------------------------------------------------------

@njit(**INLINE)
def _query_table(x, centroids, bounds, ftable, qtable):
    """Quantised table of one query into ``qtable`` (Cpad, 16); returns (offset, scale)."""
    C = bounds.shape[0] - 1
    top = np.float32(0.0)
    total = np.float32(0.0)
    offset = np.float32(0.0)
    for c in range(C):
        lo = bounds[c]
        width = bounds[c + 1] - lo
        low = np.float32(np.inf)
        high = np.float32(-np.inf)
        for j in range(16):
            acc = np.float32(0.0)
            for t in range(width):
                acc += x[lo + t] * centroids[c, j, t]
            ftable[c, j] = acc
            low = min(low, acc)
            high = max(high, acc)
        ftable[c, 16] = low
        offset += low
        top = max(top, high - low)
        total += high - low
    scale = np.float32(1.0)
    if top > 0:
        scale = min(np.float32(255.0) / top, np.float32(65535 - C) / total)
    for c in range(C):
        low = ftable[c, 16]
        for j in range(16):
            v = np.floor((ftable[c, j] - low) * scale + np.float32(0.5))
            qtable[c, j] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))
    for c in range(C, qtable.shape[0]):
        qtable[c, :] = 0
    return offset, scale


@njit(**JIT)
def fastscan_tables_serial(Q, centroids, bounds, qtables, offsets, scales, nworkers):
    """Serial twin of :func:`fastscan_tables_parallel` (``nworkers`` is ignored)."""
    ftable = np.empty((bounds.shape[0] - 1, 17), dtype=np.float32)
    for q in range(Q.shape[0]):
        offsets[q], scales[q] = _query_table(Q[q], centroids, bounds, ftable, qtables[q])


@njit(**PJIT)
def fastscan_tables_parallel(Q, centroids, bounds, qtables, offsets, scales, nworkers):
    """uint8 ``qtables[q, Cpad, 16]``, float32 ``offsets[q]`` and ``scales[q]`` of every
    query row of ``Q`` (module docstring, step 1); subspace c is columns
    ``bounds[c]:bounds[c + 1]``, its centroids ``centroids[c, :, :width]``; each of
    ``nworkers`` workers takes every ``nworkers``-th query."""
    nq = Q.shape[0]
    nworkers = max(1, min(nworkers, nq))
    for w in prange(nworkers):
        ftable = np.empty((bounds.shape[0] - 1, 17), dtype=np.float32)  # once per worker
        for q in range(w, nq, nworkers):
            offsets[q], scales[q] = _query_table(Q[q], centroids, bounds, ftable, qtables[q])


# -- scan --------------------------------------------------------------------------------

@njit(**INLINE)
def _top_score(qtable):
    """The largest score a row can reach: Σ_c max_j qtable[c, j]."""
    top = 0
    for c in range(qtable.shape[0]):
        best = 0
        for j in range(16):
            best = max(best, np.int64(qtable[c, j]))
        top += best
    return top


@njit(**INLINE)
def _key_range(top, offset, scale, max_norm):
    """(lo, kscale): a row's key is ``floor((a - lo) · kscale)`` clipped to 0..65535, with
    ``a = norm · (score / scale + offset)`` its approximate inner product; lo..lo + 65535 /
    kscale covers every possible a."""
    inv_scale = np.float32(1.0) / scale
    high = max_norm * max(np.float32(top) * inv_scale + offset, np.float32(0.0))
    lo = max_norm * min(offset, np.float32(0.0))
    kscale = np.float32(0.0)
    if high > lo:
        kscale = np.float32(65535.0) / (high - lo)
    if not np.isfinite(kscale):  # a range below float32's: every key 0
        kscale = np.float32(0.0)
    return lo, kscale


@njit(**INLINE)
def _keys(scores, norms, base, n, inv_scale, offset, lo, kscale):
    """Scores of rows base..base+n-1 replaced by their keys; returns the largest key."""
    best = np.uint16(0)
    for i in range(n):
        a = norms[base + i] * (np.float32(scores[base + i]) * inv_scale + offset)
        key = np.uint16(min(max((a - lo) * kscale, np.float32(0.0)), np.float32(65535.0)))
        scores[base + i] = key
        best = max(best, key)
    return best


@njit(**INLINE)
def _key_block(scores, b, nrows, norms, inv_scale, offset, lo, kscale, block_max, block_hist):
    """Keys of block b's rows (< nrows); their maximum into ``block_max[b]``, counted in
    ``block_hist``. Full blocks take a loop of constant length (vectorised)."""
    base = b * BLOCK
    if nrows - base >= BLOCK:
        best = _keys(scores, norms, base, BLOCK, inv_scale, offset, lo, kscale)
    else:
        best = _keys(scores, norms, base, nrows - base, inv_scale, offset, lo, kscale)
    block_max[b] = best
    block_hist[best] += 1


@njit(**INLINE)
def _key_setup(qtable, offset, scale, norms, hist, keys):
    """1 / scale and, with ``keys``, the key range (:func:`_key_range`); clears ``hist``."""
    inv_scale = np.float32(1.0) / scale
    lo, kscale = np.float32(0.0), np.float32(0.0)
    if keys:
        hist[:] = 0
        lo, kscale = _key_range(_top_score(qtable), offset, scale, norms[0])
    return inv_scale, lo, kscale


@njit(**INLINE)
def _no_keys():
    """Stand-ins for the histogram and the norms of a scan without keys."""
    return (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32),
            np.empty(0, dtype=np.uint16))


@njit(**INLINE)
def _scan_simd(packed, qtable, nrows, scores, keys, offset, scale, norms, block_max,
               block_hist):
    """uint16 scores of every (padded) row into ``scores``; with ``keys``, the scores of
    rows < nrows are then replaced by their keys (:func:`_key_range`), block by block
    while they are in L1, and each block's largest key is stored in ``block_max`` and
    counted in ``block_hist`` (cleared here)."""
    inv_scale, lo, kscale = _key_setup(qtable, offset, scale, norms, block_hist, keys)
    npairs = packed.shape[1]
    for b in range(packed.shape[0]):
        words = zeros_u16x16()
        odd_rows = zeros_u16x16()
        code_at = b * npairs * BLOCK
        for j in range(npairs):
            codes = load_u8x32(packed, code_at + j * BLOCK)
            first = lookup_u8x32(load_table16(qtable, 32 * j), low_nibbles(codes))
            second = lookup_u8x32(load_table16(qtable, 32 * j + 16), high_nibbles(codes))
            words = add_words(add_words(words, first), second)
            odd_rows = add_high_bytes(add_high_bytes(odd_rows, first), second)
        store_u16x16(scores, b * BLOCK, row_sums_low(words, odd_rows))
        store_u16x16(scores, b * BLOCK + 16, row_sums_high(words, odd_rows))
        if keys:
            _key_block(scores, b, nrows, norms, inv_scale, offset, lo, kscale, block_max,
                       block_hist)


@njit(**INLINE)
def _scan_plain(packed, qtable, nrows, scores, keys, offset, scale, norms, block_max,
                block_hist):
    """:func:`_scan_simd` as a plain loop: the same integers."""
    inv_scale, lo, kscale = _key_setup(qtable, offset, scale, norms, block_hist, keys)
    npairs = packed.shape[1]
    for b in range(packed.shape[0]):
        block = packed[b]
        for i in range(BLOCK):
            s = 0
            for j in range(npairs):
                byte = block[j, i]
                s += np.int64(qtable[2 * j, byte & 15]) + np.int64(qtable[2 * j + 1, byte >> 4])
            scores[b * BLOCK + i] = np.uint16(s)
        if keys:
            _key_block(scores, b, nrows, norms, inv_scale, offset, lo, kscale, block_max,
                       block_hist)


@njit(**INLINE)
def _scan_queries(scan, packed, qtables, nrows, scores, nworkers):
    """uint16 ``scores[q]`` of every query by ``scan``; worker w takes queries w,
    w + nworkers, …"""
    nq = qtables.shape[0]
    nworkers = max(1, min(nworkers, nq))
    for w in prange(nworkers):
        hist, norms, block_max = _no_keys()  # unused: scores only
        for q in range(w, nq, nworkers):
            scan(packed, qtables[q], nrows, scores[q], False, np.float32(0.0), np.float32(1.0),
                 norms, block_max, hist)


@njit(**PJIT)
def fastscan_scan(packed, qtables, nrows, scores, nworkers):
    """uint16 ``scores[q, 32 · nblocks]`` = Σ_c ``qtables[q, c, code_c]`` of every packed
    row (AVX2), padding rows too (all codes 0); each of ``nworkers`` workers takes every
    ``nworkers``-th query."""
    _scan_queries(_scan_simd, packed, qtables, nrows, scores, nworkers)


@njit(**PJIT)
def fastscan_scan_plain(packed, qtables, nrows, scores, nworkers):
    """:func:`fastscan_scan` without SIMD: the same integers, any CPU."""
    _scan_queries(_scan_plain, packed, qtables, nrows, scores, nworkers)


# -- candidate selection and exact re-ranking --------------------------------------------

@njit(**INLINE)
def _cut(hist, rerank, floor):
    """The largest t ≥ floor with Σ_{u ≥ t} hist[u] ≥ rerank (``floor`` if none), and
    Σ_{u > t} hist[u]."""
    cum = 0
    t = hist.shape[0] - 1
    while True:
        cum += hist[t]
        if cum >= rerank or t == floor:
            return t, cum - hist[t]
        t -= 1


@njit(**INLINE)
def _select(scores, nrows, block_max, block_hist, hist, rerank, candidates):
    """The ``rerank`` candidate rows by their keys ``scores`` into ``candidates`` (ascending
    ids): every row whose key is above the cut, then rows at the cut in row order.

    A block whose largest key is ≥ t holds at least one row ≥ t, so the block-level cut
    t0 (from ``block_hist``) has at least ``rerank`` rows at or above it; only the blocks
    reaching t0 are then counted row by row (into ``hist``) to find the exact cut."""
    nblocks = (nrows + BLOCK - 1) // BLOCK
    floor, _ = _cut(block_hist, rerank, 0)
    hist[floor:] = 0
    for b in range(nblocks):
        if block_max[b] >= floor:
            base = b * BLOCK
            for i in range(min(BLOCK, nrows - base)):
                key = scores[base + i]
                if key >= floor:
                    hist[key] += 1
    cut, above = _cut(hist, rerank, floor)
    ties = rerank - above  # rows keyed exactly ``cut`` that are kept
    n = 0
    for b in range(nblocks):
        if block_max[b] >= cut:
            base = b * BLOCK
            for i in range(min(BLOCK, nrows - base)):
                key = np.int64(scores[base + i])
                if key > cut or (key == cut and ties > 0):
                    if key == cut:
                        ties -= 1
                    candidates[n] = base + i
                    n += 1
    return cut


@njit(**INLINE)
def _worse(s1, i1, s2, i2):
    """Whether (s1, i1) ranks below (s2, i2): lower score, or equal score and higher id."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@njit(**INLINE)
def _sift_down(heap_s, heap_i, size, at):
    while True:
        child = 2 * at + 1
        if child >= size:
            return
        if child + 1 < size and _worse(heap_s[child + 1], heap_i[child + 1], heap_s[child],
                                       heap_i[child]):
            child += 1
        if not _worse(heap_s[child], heap_i[child], heap_s[at], heap_i[at]):
            return
        heap_s[at], heap_s[child] = heap_s[child], heap_s[at]
        heap_i[at], heap_i[child] = heap_i[child], heap_i[at]
        at = child


@njit(**INLINE)
def _rerank(rows, x, candidates, rerank, k, heap_s, heap_i, out_pos, out_scores):
    """Exact scores of the candidates; the best k into out_pos/out_scores, best first.
    ``heap_*`` hold a min-heap (worst at the root) of the current best."""
    size = 0
    d = x.shape[0]
    for n in range(rerank):
        i = candidates[n]
        row = rows[i]
        s = np.float32(0.0)
        for t in range(d):
            s += row[t] * x[t]
        if size < k:
            at = size
            heap_s[at] = s
            heap_i[at] = i
            size += 1
            while at > 0:  # sift up
                parent = (at - 1) // 2
                if not _worse(heap_s[at], heap_i[at], heap_s[parent], heap_i[parent]):
                    break
                heap_s[at], heap_s[parent] = heap_s[parent], heap_s[at]
                heap_i[at], heap_i[parent] = heap_i[parent], heap_i[at]
                at = parent
        elif _worse(heap_s[0], heap_i[0], s, i):
            heap_s[0] = s
            heap_i[0] = i
            _sift_down(heap_s, heap_i, size, 0)
    for slot in range(size - 1, -1, -1):  # pop the worst into the last free slot
        out_scores[slot] = heap_s[0]
        out_pos[slot] = heap_i[0]
        size -= 1
        heap_s[0] = heap_s[size]
        heap_i[0] = heap_i[size]
        _sift_down(heap_s, heap_i, size, 0)


@njit(**INLINE)
def _search_scratch(nblocks, rerank, k):
    """Scores/keys, block maxima, the block and row histograms, candidates, the heap."""
    return (np.empty(nblocks * BLOCK, dtype=np.uint16), np.empty(nblocks, dtype=np.uint16),
            np.empty(HIST_BINS, dtype=np.int32), np.empty(HIST_BINS, dtype=np.int32),
            np.empty(rerank, dtype=np.int64), np.empty(k, dtype=np.float32),
            np.empty(k, dtype=np.int64))


@njit(**INLINE)
def _search_queries(scan, packed, nrows, qtables, offsets, scales, norms, rows, Q, k, rerank,
                    out_pos, out_scores, nworkers):
    """Top-k of every query with ``scan``; worker w takes queries w, w + nworkers, …"""
    nq = Q.shape[0]
    nworkers = max(1, min(nworkers, nq))
    for w in prange(nworkers):
        (scores, block_max, block_hist, hist, candidates, heap_s,
         heap_i) = _search_scratch(packed.shape[0], rerank, k)  # once per worker
        for q in range(w, nq, nworkers):
            scan(packed, qtables[q], nrows, scores, True, offsets[q], scales[q], norms,
                 block_max, block_hist)
            _select(scores, nrows, block_max, block_hist, hist, rerank, candidates)
            _rerank(rows, Q[q], candidates, rerank, k, heap_s, heap_i, out_pos[q],
                    out_scores[q])


@njit(**PJIT)
def fastscan_search(packed, nrows, qtables, offsets, scales, norms, rows, Q, k, rerank,
                    out_pos, out_scores, nworkers):
    """Approximate top-k by inner product of every query row of ``Q`` over the ``nrows``
    float ``rows`` (norms ``norms``, largest first) whose directions' PQ codes are
    ``packed`` (AVX2 scan; module docstring, step 3), with the query tables, offsets and
    scales of :func:`fastscan_tables_parallel`. Needs ``k ≤ rerank ≤ nrows``. Writes
    int64 ``out_pos[q, k]`` (row ids) and float32 ``out_scores[q, k]`` (exact
    ⟨rows[id], Q[q]⟩), best first, lower id first on ties. Each of ``nworkers`` workers
    takes every ``nworkers``-th query."""
    _search_queries(_scan_simd, packed, nrows, qtables, offsets, scales, norms, rows, Q, k,
                    rerank, out_pos, out_scores, nworkers)


@njit(**PJIT)
def fastscan_search_plain(packed, nrows, qtables, offsets, scales, norms, rows, Q, k, rerank,
                          out_pos, out_scores, nworkers):
    """:func:`fastscan_search` with the plain scan: the same results, any CPU."""
    _search_queries(_scan_plain, packed, nrows, qtables, offsets, scales, norms, rows, Q, k,
                    rerank, out_pos, out_scores, nworkers)
