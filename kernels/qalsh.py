"""H2-ALSH queries: norm rings visited by decreasing max norm, QALSH inside indexed rings.

The ring loop with its early stops (H2-ALSH, Huang et al. KDD'18) and, in indexed rings,
QALSH collision counting with virtual rehashing (Huang et al. VLDB'15). The index is flat
arrays built by ``lutengine.h2alsh.build`` (no bounds are checked here: an index read from
a file is checked by ``lutengine.h2alsh.check_state`` first):

* rows are sorted by norm, descending; ring ``g`` owns positions
  ``ring_bounds[g]:ring_bounds[g + 1]`` (``n_g`` rows, max norm ``norms[ring_bounds[g]]``);
* ``ring_m[g]`` projections (0 for a ring scanned exactly) with threshold ``ring_l[g]``;
  its projection vectors are rows ``proj_off[g]:proj_off[g] + m`` of the index's ``proj``
  (d + 1 columns), and the caller passes ``query_keys`` = Q · proj[:, :d]ᵀ, the projections
  of the whole query batch as one matrix product (the (d+1)-th coordinate of Q_g(x) is 0);
  table ``j`` of the ring is ``keys/ids[key_off[g] + j*n_g : key_off[g] + (j+1)*n_g]``,
  keys ascending, ids local to the ring (0..n_g-1);
* all QALSH geometry is in units of the global max norm ``scale``.

Conventions: a row enters the top-k if its score is larger than the k-th, or equal with a
smaller position (the ordering is total, so results do not depend on the visiting order of
equal scores); pruning tests use ``<=`` (a row whose bound only ties the k-th is skipped:
ties aside). A row becomes a candidate when it collides in ``>= l`` tables, i.e. the
moment its counter reaches ``l`` — counters grow by one and a table never shows an id twice,
so this happens once per row and no separate "checked" flag is needed. Slots left empty
(impossible when k <= N and the inputs are finite) hold position -1 and score -inf.

One query, two targets: :func:`query_top_k` and its helpers are ``register_jitable``
(Numba's generic target), compiled for whichever target calls them: here inside the CPU
kernels (inheriting their fast-math flags and error model), and as device functions of the
CUDA kernel :func:`kernels.cuda.qalsh.h2alsh_search`. So they use ``math`` and Numba scalar
types, no NumPy functions.
"""

import math

import numpy as np
from numba import float64, njit, prange
from numba.extending import register_jitable

from ._flags import INLINE, JIT, PJIT

@register_jitable
def _better(s, p, s_other, p_other):
    return s > s_other or (s == s_other and p < p_other)


@register_jitable
def _kth(top_s, count, k):
    return top_s[k - 1] if count == k else -math.inf


@register_jitable
def _insert(top_s, top_p, count, k, s, p):
    """Insert (s, p) into the best-first list of ``count`` <= k entries; return the new count."""
    if count == k:
        if not _better(s, p, top_s[k - 1], top_p[k - 1]):
            return count
        i = k - 1
    else:
        i = count
        count += 1
    while i > 0 and _better(s, p, top_s[i - 1], top_p[i - 1]):
        top_s[i] = top_s[i - 1]
        top_p[i] = top_p[i - 1]
        i -= 1
    top_s[i] = s
    top_p[i] = p
    return count


@register_jitable
def _dot(W, i, x):
    acc = 0.0
    for t in range(x.shape[0]):
        acc += float64(W[i, t]) * x[t]
    return acc


@register_jitable
def _half_range(Mg, lam, kth, scale, width):
    """R·w/2 with R = sqrt(2(M_g² − λ·kth)) in scaled units (the range cap); +inf while
    the top list is not full."""
    if kth == -math.inf:
        return math.inf
    return math.sqrt(max(2.0 * (Mg * Mg - lam * kth / scale), 0.0)) * width / 2.0


@register_jitable
def _median(values, n):
    """Median (upper middle) of values[:n], sorting them in place (n is ~2m ≤ a few hundred)."""
    for i in range(1, n):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v
    return values[n // 2]


@register_jitable
def _search_ring(W, norms, x, xn, k, start, n, m, l, xkeys, p0, keys, ids, k0, scale, width, c0,
                 budget, scan_size, freq, touched, kq, left, right, active, exhausted, gaps,
                 top_s, top_p, count):
    """QALSH on one indexed ring: returns the new length of the top list."""
    Mg = norms[start] / scale
    lam = Mg / xn
    # keys of Q_g(x) = [λx; 0]: λ times the batch projections of x
    ngaps = 0
    for j in range(m):
        q = lam * float64(xkeys[p0 + j])
        kq[j] = q
        base = k0 + j * n
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[base + mid] < q:
                lo = mid + 1
            else:
                hi = mid
        left[j] = lo - 1
        right[j] = lo
        exhausted[j] = 0
        if lo > 0:
            gaps[ngaps] = q - keys[base + lo - 1]
            ngaps += 1
        if lo < n:
            gaps[ngaps] = keys[base + lo] - q
            ngaps += 1
    # start radius from the median nearest gap, on the grid c0^i
    g = _median(gaps, ngaps)
    if g > 0.0:
        radius = c0 ** float64(math.ceil(math.log(2.0 * g / width) / math.log(c0)))
    else:
        radius = 1e-6
    kth = _kth(top_s, count, k)
    hr = _half_range(Mg, lam, kth, scale, width)
    ntouched = 0
    emitted = 0
    nexhausted = 0
    while True:
        hw = radius * width / 2.0
        lim = min(hw, hr)
        nactive = 0
        for j in range(m):
            active[j] = 1 - exhausted[j]
            nactive += active[j]
        while nactive > 0 and emitted < budget:
            for j in range(m):
                if active[j] == 0 or emitted >= budget:
                    continue
                base = k0 + j * n
                for side in range(2):
                    steps = 0
                    while steps < scan_size and emitted < budget:
                        if side == 0:
                            p = left[j]
                            if p < 0 or kq[j] - keys[base + p] > lim:
                                break
                            left[j] = p - 1
                        else:
                            p = right[j]
                            if p >= n or keys[base + p] - kq[j] > lim:
                                break
                            right[j] = p + 1
                        steps += 1
                        local = ids[base + p]
                        f = freq[local] + 1
                        freq[local] = f
                        if f == 1:
                            touched[ntouched] = local
                            ntouched += 1
                        if f == l:
                            emitted += 1
                            pos = start + local
                            if norms[pos] * xn > kth:
                                count = _insert(top_s, top_p, count, k, _dot(W, pos, x), pos)
                                if count == k and top_s[k - 1] != kth:
                                    kth = top_s[k - 1]
                                    hr = _half_range(Mg, lam, kth, scale, width)
                                    lim = min(hw, hr)
                lp, rp = left[j], right[j]
                left_out = lp < 0 or kq[j] - keys[base + lp] > lim
                right_out = rp >= n or keys[base + rp] - kq[j] > lim
                if left_out and right_out:
                    active[j] = 0
                    nactive -= 1
                    if (lp < 0 or kq[j] - keys[base + lp] > hr) and \
                            (rp >= n or keys[base + rp] - kq[j] > hr):
                        exhausted[j] = 1
                        nexhausted += 1
        if emitted >= budget or nexhausted == m:
            break
        radius *= c0  # virtual rehashing: the same tables, wider windows
    for i in range(ntouched):
        freq[touched[i]] = 0
    return count


@register_jitable
def query_top_k(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys,
                keys, ids, scale, width, c0, budget, scan_size, x, freq, touched, kq, left,
                right, active, exhausted, gaps, top_s, top_p):
    """The best-first top list of query ``qi`` over the rings in ``top_s``/``top_p``; returns
    its length (k unless the rings hold fewer rows)."""
    xn2 = 0.0
    for t in range(x.shape[0]):
        x[t] = Q[qi, t]
        xn2 += x[t] * x[t]
    xn = math.sqrt(xn2)
    count = 0
    if xn == 0.0:
        # every score is 0: the first k positions win the ties
        for i in range(k):
            top_s[i] = 0.0
            top_p[i] = i
        count = k
    for g in range(ring_bounds.shape[0] - 1 if xn > 0.0 else 0):
        start, stop = ring_bounds[g], ring_bounds[g + 1]
        kth = _kth(top_s, count, k)
        if norms[start] * xn <= kth:
            break  # ring-level stop: later rings have smaller max norms
        if ring_m[g] == 0:
            for i in range(start, stop):
                if norms[i] * xn <= kth:
                    break
                count = _insert(top_s, top_p, count, k, _dot(W, i, x), i)
                kth = _kth(top_s, count, k)
        else:
            count = _search_ring(W, norms, x, xn, k, start, stop - start, ring_m[g], ring_l[g],
                                 query_keys[qi], proj_off[g], keys, ids, key_off[g], scale,
                                 width, c0, budget, scan_size, freq, touched, kq, left, right,
                                 active, exhausted, gaps, top_s, top_p, count)
    return count


@njit(**JIT)
def _query(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys, keys,
           ids, scale, width, c0, budget, scan_size, out_pos, out_scores, scratch):
    """Top-k of one query over the rings, written to row ``qi`` of the outputs."""
    x, freq, touched, kq, left, right, active, exhausted, gaps, top_s, top_p = scratch
    count = query_top_k(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off,
                        query_keys, keys, ids, scale, width, c0, budget, scan_size, x, freq,
                        touched, kq, left, right, active, exhausted, gaps, top_s, top_p)
    for i in range(k):
        if i < count:
            out_pos[qi, i] = top_p[i]
            out_scores[qi, i] = np.float32(top_s[i])
        else:
            out_pos[qi, i] = -1
            out_scores[qi, i] = -np.inf


@njit(**INLINE)
def _scratch_sizes(ring_bounds, ring_m):
    max_ring, max_m = 1, 1
    for g in range(ring_m.shape[0]):
        if ring_m[g] > 0:
            max_ring = max(max_ring, ring_bounds[g + 1] - ring_bounds[g])
            max_m = max(max_m, ring_m[g])
    return max_ring, max_m


@njit(**INLINE)
def _scratch(d, ring_bounds, ring_m, k):
    """A worker's query scratch: the query, collision counters (zero) and the list of ids
    they touched (sized to the largest indexed ring), per-table state, the top-k."""
    max_ring, max_m = _scratch_sizes(ring_bounds, ring_m)
    return (np.empty(d, dtype=np.float64), np.zeros(max_ring, dtype=np.int32),
            np.empty(max_ring, dtype=np.int32), np.empty(max_m, dtype=np.float64),
            np.empty(max_m, dtype=np.int64), np.empty(max_m, dtype=np.int64),
            np.empty(max_m, dtype=np.uint8), np.empty(max_m, dtype=np.uint8),
            np.empty(2 * max_m, dtype=np.float64), np.empty(k, dtype=np.float64),
            np.empty(k, dtype=np.int64))


@njit(**JIT)
def h2alsh_search_serial(W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off,
                         query_keys, keys, ids, scale, width, c0, budget, scan_size, out_pos,
                         out_scores, nworkers):
    """Serial twin of :func:`h2alsh_search_parallel` (``nworkers`` is ignored)."""
    scratch = _scratch(W.shape[1], ring_bounds, ring_m, k)
    for qi in range(Q.shape[0]):
        _query(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys,
               keys, ids, scale, width, c0, budget, scan_size, out_pos, out_scores, scratch)


@njit(**PJIT)
def h2alsh_search_parallel(W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off,
                           query_keys, keys, ids, scale, width, c0, budget, scan_size,
                           out_pos, out_scores, nworkers):
    """Approximate top-k rows of W (sorted by norm, descending) for every row of Q.

    ``query_keys`` (nq, total m) float32 holds Q · proj[:, :d]ᵀ. Writes positions (int64)
    and scores (float32) best first into ``out_pos[q]`` and ``out_scores[q]``.
    ``budget`` = candidates + k − 1 per indexed ring; ``scan_size`` = entries
    read per pointer per visit. Each of ``nworkers`` workers takes every ``nworkers``-th
    query with scratch of its own, allocated once: collision counters sized to the largest
    indexed ring, reset through the list of ids they touched.
    """
    nq = Q.shape[0]
    nworkers = max(1, min(nworkers, nq))
    for wk in prange(nworkers):
        scratch = _scratch(W.shape[1], ring_bounds, ring_m, k)  # once per worker
        for qi in range(wk, nq, nworkers):
            _query(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys,
                   keys, ids, scale, width, c0, budget, scan_size, out_pos, out_scores, scratch)
