"""H2-ALSH index (Huang et al., KDD'18): norm rings, per-ring QNF transforms, in-memory QALSH.

Build side of h2alsh.md §2.2–2.5 and §3.2; the query runs in :mod:`kernels.qalsh`.
Inputs are already validated and sorted by the caller (``lutengine.mips``): rows of
``W_sorted`` (float32, C-contiguous) by norm, descending, with ``norms_sorted`` their norms.
The state is a dict of NumPy arrays (scalars as 0-d arrays), savable with ``np.savez``.
"""

import math

import numpy as np

from kernels import qalsh as _qalsh

#: keys of the state dict, in a fixed order (for save/load)
STATE_KEYS = ("ring_bounds", "ring_m", "ring_l", "proj_off", "key_off", "proj", "keys", "ids",
              "scale", "width", "c0", "b", "candidates", "scan_size")


def qalsh_params(n, c0=2.0, candidates=100, delta=1 / math.e):
    """QALSH bucket width, collision probabilities and table counts for n points (§3.2).

    Returns ``(w, p1, p2, m, l)``: w maximises p1 − p2 for the (1, c0, p1, p2)-sensitive
    family h(v) = a·v; m tables and threshold l follow from Hoeffding bounds with
    false-positive budget β = candidates/n (at most 1: a ring of ≤ ``candidates`` rows
    is then indexed as if it had that many) and failure probability ``delta``.
    """
    w = bucket_width(c0)
    p1 = math.erf(w / (2.0 * math.sqrt(2.0)))
    p2 = math.erf(w / (2.0 * math.sqrt(2.0) * c0))
    beta = min(candidates / n, 1.0)
    far, near = math.log(2.0 / beta), math.log(1.0 / delta)
    m = math.ceil((math.sqrt(far) + math.sqrt(near)) ** 2 / (2.0 * (p1 - p2) ** 2))
    eta = math.sqrt(far / near)
    alpha = (eta * p1 + p2) / (1.0 + eta)
    return w, p1, p2, m, math.ceil(alpha * m)


def bucket_width(c0=2.0):
    """w = sqrt(8c0² ln c0/(c0² − 1)), the width maximising p1 − p2 (§3.2)."""
    return math.sqrt(8.0 * c0 * c0 * math.log(c0) / (c0 * c0 - 1.0))


def ring_ratio(c0=2.0, c=0.5):
    """b = sqrt((c0⁴ − 1)/(c0⁴ − c)): the norm ratio of one ring (§2.3, §2.4)."""
    return math.sqrt((c0**4 - 1.0) / (c0**4 - c))


def cut_rings(norms_sorted, b, max_ring):
    """Ring bounds (G + 1,) int64 over norms sorted descending (§2.3).

    A ring starts at the largest unassigned norm M_g and takes the following rows while
    their norm is > b·M_g, at most ``max_ring`` of them. Rows of norm 0 (M_g = 0) form
    rings of their own, cut by the size cap only.
    """
    norms = np.asarray(norms_sorted, dtype=np.float64)
    ascending = -norms
    bounds = [0]
    start = 0
    while start < norms.shape[0]:
        top = norms[start]
        stop = norms.shape[0] if top == 0 else int(np.searchsorted(ascending, -b * top, side="left"))
        start = min(max(stop, start + 1), start + max_ring, norms.shape[0])
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def transformed_rows(W_ring, norms_ring, scale):
    """P_g(w) = [w; sqrt(M_g² − ‖w‖²)] of the rows of one ring, in units of ``scale``
    (§2.4, §2.8): float64 (n_g, d + 1), every row of norm M_g = norms_ring[0]/scale."""
    rows = np.asarray(W_ring, dtype=np.float64) / scale
    Mg = norms_ring[0] / scale
    tail = np.sqrt(np.maximum(Mg * Mg - np.einsum("ij,ij->i", rows, rows), 0.0))
    return np.hstack([rows, tail[:, None]])


def build(W_sorted, norms_sorted, c0=2.0, c=0.5, b=None, max_ring=5000, scan_threshold=400,
          candidates=100, scan_size=64, rng=None):
    """Index rows sorted by norm (descending): rings, and QALSH tables for large rings.

    Parameters follow h2alsh.md §2.7: ``c0`` the QALSH ratio, ``c`` the MIPS ratio (only
    through b), ``b`` the ring ratio (default :func:`ring_ratio`), ``max_ring`` the ring
    size cap, ``scan_threshold`` the ring size up to which a ring is scanned exactly,
    ``candidates`` β·n_g, ``scan_size`` entries read per pointer per visit, ``rng`` a
    seed or ``np.random.Generator`` for the Gaussian projections.
    Returns the state dict (:data:`STATE_KEYS`).
    """
    rng = np.random.default_rng(rng)
    b = ring_ratio(c0, c) if b is None else float(b)
    norms = np.asarray(norms_sorted, dtype=np.float64)
    N, d = W_sorted.shape
    scale = float(norms[0]) if N and norms[0] > 0 else 1.0
    bounds = cut_rings(norms, b, max_ring)
    G = bounds.shape[0] - 1
    ring_m = np.zeros(G, dtype=np.int64)
    ring_l = np.zeros(G, dtype=np.int64)
    proj_off = np.zeros(G + 1, dtype=np.int64)
    key_off = np.zeros(G + 1, dtype=np.int64)
    projs, keys, ids = [], [], []
    width = bucket_width(c0)
    for g in range(G):
        start, stop = bounds[g], bounds[g + 1]
        n = stop - start
        if n > scan_threshold and norms[start] > 0:
            _, _, _, m, l = qalsh_params(n, c0, candidates)
            ring_m[g], ring_l[g] = m, l
            A = rng.standard_normal((m, d + 1)).astype(np.float32)
            P = transformed_rows(W_sorted[start:stop], norms[start:stop], scale)
            table = P @ A.T.astype(np.float64)  # (n, m)
            order = np.argsort(table, axis=0, kind="stable")
            projs.append(A)
            keys.append(np.take_along_axis(table, order, axis=0).T.astype(np.float32).ravel())
            ids.append(order.T.astype(np.int32).ravel())
        proj_off[g + 1] = proj_off[g] + ring_m[g]
        key_off[g + 1] = key_off[g] + ring_m[g] * n
    return {
        "ring_bounds": bounds, "ring_m": ring_m, "ring_l": ring_l,
        "proj_off": proj_off, "key_off": key_off,
        "proj": np.concatenate(projs) if projs else np.zeros((0, d + 1), dtype=np.float32),
        "keys": np.concatenate(keys) if keys else np.zeros(0, dtype=np.float32),
        "ids": np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32),
        "scale": np.float64(scale), "width": np.float64(width), "c0": np.float64(c0),
        "b": np.float64(b), "candidates": np.int64(candidates), "scan_size": np.int64(scan_size),
    }


def search(state, W_sorted, norms_sorted, Q, k, nworkers):
    """Approximate top-k by inner product for every row of Q (nq, d) float32.

    Returns (positions in the sorted order int64 (nq, k), scores float32 (nq, k)), best
    first (equal scores: smaller position first). ``nworkers`` > 1 runs the parallel
    kernel with that many workers.
    """
    nq, d = Q.shape
    query_keys = Q @ state["proj"][:, :d].T  # every ring's projections: one matrix product
    out_pos = np.empty((nq, k), dtype=np.int64)
    out_scores = np.empty((nq, k), dtype=np.float32)
    kernel = _qalsh.h2alsh_search_parallel if nworkers > 1 and nq > 1 else _qalsh.h2alsh_search_serial
    kernel(W_sorted, np.asarray(norms_sorted, dtype=np.float32), Q, k,
           state["ring_bounds"], state["ring_m"], state["ring_l"], state["proj_off"],
           state["key_off"], query_keys, state["keys"], state["ids"],
           float(state["scale"]), float(state["width"]), float(state["c0"]),
           int(state["candidates"]) + k - 1, int(state["scan_size"]), out_pos, out_scores,
           int(nworkers))
    return out_pos, out_scores
