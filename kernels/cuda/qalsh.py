"""H2-ALSH queries on the GPU: one thread per query (grid-stride over queries), per-thread
scratch in global memory.

Each thread runs the CPU kernels' query, :func:`kernels.qalsh.query_top_k` (the ring loop
and early stops of H2-ALSH, Huang et al. KDD'18; QALSH collision counting with virtual
rehashing, Huang et al. VLDB'15), the same Python function compiled for the GPU, in the
same float64 arithmetic and order, so the results equal the CPU kernel's. Also here: the
query preparation and projections the CPU path does on the host (:func:`prepare_queries`,
:func:`project`), for device inputs.
"""

import math

from numba import cuda, float32, float64

from ..qalsh import query_top_k


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
    top_s, top_p = top_s_all[thread], top_p_all[thread]
    for qi in range(thread, Q.shape[0], cuda.gridsize(1)):
        count = query_top_k(qi, W, norms, Q, k, ring_bounds, ring_m, ring_l, proj_off,
                             key_off, query_keys, keys, ids, scale, width, c0, budget,
                             scan_size, x_all[thread], freq_all[thread], touched_all[thread],
                             kq_all[thread], left_all[thread], right_all[thread],
                             active_all[thread], exhausted_all[thread], gaps_all[thread],
                             top_s, top_p)
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
