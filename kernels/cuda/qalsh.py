"""H2-ALSH queries on the GPU: the twin of ``kernels.qalsh.h2alsh_search_*``, one thread per
query (grid-stride over queries), per-thread scratch in global memory.

The algorithm, the index layout and the conventions are those of :mod:`kernels.qalsh` (the
ring loop and early stops of H2-ALSH, Huang et al. KDD'18; QALSH collision counting with
virtual rehashing and its start radius, Huang et al. VLDB'15), in the same float64
arithmetic and the same order, so the results equal the CPU kernel's. Also here: the query preparation and projections the CPU
path does on the host (:func:`prepare_queries`, :func:`project`), for device inputs.
"""

import math

from numba import cuda, float32, float64


@cuda.jit(device=True)
def _better(s, p, s_other, p_other):
    return s > s_other or (s == s_other and p < p_other)


@cuda.jit(device=True)
def _kth(top_s, count, k):
    return top_s[k - 1] if count == k else -math.inf


@cuda.jit(device=True)
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


@cuda.jit(device=True)
def _dot(W, i, x):
    acc = 0.0
    for t in range(x.shape[0]):
        acc += float64(W[i, t]) * x[t]
    return acc


@cuda.jit(device=True)
def _half_range(Mg, lam, kth, scale, width):
    """R·w/2 with R = sqrt(2(M_g² − λ·kth)) in scaled units (§2.6 step 4b); +inf while
    the top list is not full."""
    if kth == -math.inf:
        return math.inf
    return math.sqrt(max(2.0 * (Mg * Mg - lam * kth / scale), 0.0)) * width / 2.0


@cuda.jit(device=True)
def _median(values, n):
    """Median (upper middle) of values[:n], insertion-sorting them in place."""
    for i in range(1, n):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v
    return values[n // 2]


@cuda.jit(device=True)
def _search_ring(W, norms, x, xn, k, start, n, m, l, xkeys, p0, keys, ids, k0, scale, width, c0,
                 budget, scan_size, freq, touched, kq, left, right, active, exhausted, gaps,
                 top_s, top_p, count):
    """QALSH on one indexed ring (§3.4): returns the new length of the top list."""
    Mg = norms[start] / scale
    lam = Mg / xn
    ngaps = 0
    for j in range(m):  # keys of Q_g(x) = [λx; 0], and each table's insertion point
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
    g = _median(gaps, ngaps)  # start radius on the grid c0^i (§3.6)
    radius = c0 ** float64(math.ceil(math.log(2.0 * g / width) / math.log(c0))) if g > 0.0 \
        else 1e-6
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


@cuda.jit
def h2alsh_search(W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys,
                  keys, ids, scale, width, c0, budget, scan_size, order, out_ids, out_scores,
                  x_all, freq_all, touched_all, kq_all, left_all, right_all, active_all,
                  exhausted_all, gaps_all, top_s_all, top_p_all):
    """Approximate top-k rows of W (sorted by norm, descending) for every row of Q; writes
    ``order[position]`` (the caller's row ids) and float32 scores, best first.

    Arguments as :func:`kernels.qalsh.h2alsh_search_parallel`; the ``*_all`` arrays hold
    one scratch row per launched thread (``freq_all`` zeroed: counters are reset through
    the ids they touched).
    """
    thread = cuda.grid(1)
    x, top_s, top_p = x_all[thread], top_s_all[thread], top_p_all[thread]
    for qi in range(thread, Q.shape[0], cuda.gridsize(1)):
        xn2 = 0.0
        for t in range(x.shape[0]):
            x[t] = Q[qi, t]
            xn2 += x[t] * x[t]
        xn = math.sqrt(xn2)
        count = 0
        if xn == 0.0:  # every score is 0: the first k positions win the ties
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
                count = _search_ring(
                    W, norms, x, xn, k, start, stop - start, ring_m[g], ring_l[g],
                    query_keys[qi], proj_off[g], keys, ids, key_off[g], scale, width, c0, budget,
                    scan_size, freq_all[thread], touched_all[thread], kq_all[thread],
                    left_all[thread], right_all[thread], active_all[thread],
                    exhausted_all[thread], gaps_all[thread], top_s, top_p, count)
        for i in range(k):
            out_ids[qi, i] = order[top_p[i]] if i < count else -1
            out_scores[qi, i] = float32(top_s[i]) if i < count else -math.inf


@cuda.jit
def prepare_queries(Q, sign, out, nonfinite):
    """``out = sign · Q``, or ``sign · [Q, 1]`` when out has one more column (the index's
    bias column); ``nonfinite[0] = 1`` when Q holds NaN/Inf."""
    nq, d = Q.shape
    for item in range(cuda.grid(1), nq * out.shape[1], cuda.gridsize(1)):
        qi = item // out.shape[1]
        t = item - qi * out.shape[1]
        if t < d:
            v = Q[qi, t]
            if not math.isfinite(v):
                nonfinite[0] = 1
            out[qi, t] = sign * v
        else:
            out[qi, t] = sign


@cuda.jit
def project(Q, proj, out):
    """``out = Q · proj[:, :d]ᵀ`` (float32, accumulated in float64): every ring's query
    keys at once (the (d+1)-th coordinate of Q_g(x) is 0)."""
    nq, d = Q.shape
    for item in range(cuda.grid(1), nq * proj.shape[0], cuda.gridsize(1)):
        qi = item // proj.shape[0]
        j = item - qi * proj.shape[0]
        acc = 0.0
        for t in range(d):
            acc += float64(Q[qi, t]) * float64(proj[j, t])
        out[qi, j] = float32(acc)
