"""H2-ALSH index (Huang et al., KDD'18): norm rings, per-ring QNF transforms, in-memory
QALSH (Huang et al., VLDB'15).

The build side; the query runs in :mod:`kernels.qalsh`. Inputs are already validated and
sorted by the caller (``lutengine.mips``): rows of ``W_sorted`` (float32, C-contiguous) by
norm, descending, with ``norms_sorted`` their norms, and the options checked by
:func:`check_options`. The state is a dict of NumPy arrays (scalars as 0-d arrays),
savable with ``np.savez``; :func:`check_state` checks one read from a file.
"""

import math

import numpy as np

from . import _dispatch
from ._validation import check_array, check_int, check_real

#: keys of the state dict, in a fixed order (for save/load)
STATE_KEYS = ("ring_bounds", "ring_m", "ring_l", "proj_off", "key_off", "proj", "keys", "ids",
              "scale", "width", "c0", "b", "candidates", "scan_size")

#: the real options of :func:`build` and their ranges (low, high, closed). QALSH needs
#: c0 > 1; its m ∝ 1/(p1 − p2)² tables per ring grow without bound as c0 → 1 (5444 at
#: c0 = 1.1 for a ring of 10⁶ rows and 1 candidate, 20750 at 1.05), and above c0 = 100
#: the ring ratio b = ring_ratio(c0, c) is within 3·10⁻⁹ of 1 (rings of one norm).
REAL_OPTIONS = {"c0": (1.1, 100.0, True), "c": (0.0, 1.0, False), "b": (0.0, 1.0, False)}
#: the integer options of :func:`build` and their least values
INT_OPTIONS = {"max_ring": 1, "scan_threshold": 0, "candidates": 1, "scan_size": 1}
#: the options of ``MipsIndex(method="h2alsh")``: the keywords of :func:`build`
OPTIONS = tuple(REAL_OPTIONS) + tuple(INT_OPTIONS)
#: the largest value of an integer option (ids within a ring are int32)
MAX_COUNT = 2**31 - 1


def qalsh_params(n, c0=2.0, candidates=100, delta=1 / math.e):
    """QALSH bucket width, collision probabilities and table counts for n points (QALSH).

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
    """w = sqrt(8c0² ln c0/(c0² − 1)), the width maximising p1 − p2 (QALSH)."""
    return math.sqrt(8.0 * c0 * c0 * math.log(c0) / (c0 * c0 - 1.0))


def ring_ratio(c0=2.0, c=0.5):
    """b = sqrt((c0⁴ − 1)/(c0⁴ − c)): the norm ratio of one ring (H2-ALSH)."""
    return math.sqrt((c0**4 - 1.0) / (c0**4 - c))


def cut_rings(norms_sorted, b, max_ring):
    """Ring bounds (G + 1,) int64 over norms sorted descending (H2-ALSH's
    homocentric hypersphere partition).

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
    (H2-ALSH's QNF transform): float64 (n_g, d + 1), every row of norm
    M_g = norms_ring[0]/scale."""
    rows = np.asarray(W_ring, dtype=np.float64) / scale
    Mg = norms_ring[0] / scale
    tail = np.sqrt(np.maximum(Mg * Mg - np.einsum("ij,ij->i", rows, rows), 0.0))
    return np.hstack([rows, tail[:, None]])


def check_options(options, prefix=""):
    """The given options of :func:`build` (name -> value, names from :data:`OPTIONS`),
    each in its range (:data:`REAL_OPTIONS`, :data:`INT_OPTIONS`, at most
    :data:`MAX_COUNT`), as float or int; ``c`` and ``b`` not both (c only sets b).
    Errors name ``prefix + name``."""
    checked = {}
    for name, value in options.items():
        if name in REAL_OPTIONS:
            low, high, closed = REAL_OPTIONS[name]
            checked[name] = check_real(value, prefix + name, low, high, closed=closed)
        else:
            checked[name] = check_int(value, prefix + name, INT_OPTIONS[name], MAX_COUNT)
    if "c" in checked and "b" in checked:
        raise ValueError(f"give {prefix}c or {prefix}b, not both: c only sets the ring ratio "
                         f"b = ring_ratio(c0, c)")
    return checked


def build(W_sorted, norms_sorted, c0=2.0, c=0.5, b=None, max_ring=5000, scan_threshold=400,
          candidates=100, scan_size=64, rng=None):
    """Index rows sorted by norm (descending): rings, and QALSH tables for large rings.

    ``c0`` the QALSH approximation ratio, ``c`` the MIPS ratio (only through b), ``b`` the
    ring ratio (default :func:`ring_ratio`), ``max_ring`` the ring size cap,
    ``scan_threshold`` the ring size up to which a ring is scanned exactly, ``candidates``
    β·n_g, ``scan_size`` entries read per pointer per visit (all as :func:`check_options`
    accepts them), ``rng`` a seed or ``np.random.Generator`` for the Gaussian projections.
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


def check_state(state, n_rows, n_cols, prefix=""):
    """Raise ValueError naming (``prefix + key``) the first entry of ``state`` that the query
    (:mod:`kernels.qalsh`, which checks no bounds) could not safely read for ``n_rows``
    sorted rows of ``n_cols`` columns, or that :func:`build` cannot produce: dtypes and
    shapes; rings of at least one row from 0 to n_rows; an indexed ring's m tables
    (m ≤ :data:`MAX_COUNT`), threshold 1 ≤ l ≤ m (else no row is ever a candidate),
    projections and keys at the running offsets, finite, and each table's ids a
    permutation of the ring's rows (so every row can become a candidate); the scalars
    as :func:`check_options` accepts them, ``width`` = :func:`bucket_width` (c0)."""
    def named(key):
        return prefix + key

    bounds = check_array(state["ring_bounds"], named("ring_bounds"), np.int64, (None,))
    if bounds.size < 2 or bounds[0] != 0 or bounds[-1] != n_rows or np.any(np.diff(bounds) < 1):
        raise ValueError(f"{named('ring_bounds')} must rise strictly from 0 to the number of "
                         f"rows {n_rows} (rings of at least one row)")
    G, sizes = bounds.size - 1, np.diff(bounds)
    ring_m = check_array(state["ring_m"], named("ring_m"), np.int64, (G,))
    if ring_m.min() < 0 or ring_m.max() > MAX_COUNT:
        raise ValueError(f"{named('ring_m')} must hold table counts between 0 and {MAX_COUNT}")
    ring_l = check_array(state["ring_l"], named("ring_l"), np.int64, (G,))
    indexed = ring_m > 0
    if np.any(np.where(indexed, (ring_l < 1) | (ring_l > ring_m), ring_l != 0)):
        raise ValueError(f"{named('ring_l')} must be between 1 and {named('ring_m')} for an "
                         f"indexed ring and 0 for a scanned one")
    for key, counts in (("proj_off", ring_m), ("key_off", ring_m * sizes)):
        offsets = check_array(state[key], named(key), np.int64, (G + 1,))
        if offsets[0] != 0 or not np.array_equal(np.diff(offsets), counts):
            raise ValueError(f"{named(key)} must start at 0 and grow by each ring's "
                             + ("tables" if key == "proj_off" else "tables · rows"))
    n_proj, n_keys = int(ring_m.sum()), int((ring_m * sizes).sum())
    for key, dtype, shape in (("proj", np.float32, (n_proj, n_cols + 1)),
                              ("keys", np.float32, (n_keys,)), ("ids", np.int32, (n_keys,))):
        value = check_array(state[key], named(key), dtype, shape)
        if key != "ids" and not np.isfinite(value).all():
            raise ValueError(f"{named(key)} contains NaN or Inf values")
    ids, key_off = state["ids"], state["key_off"]
    for g in np.flatnonzero(indexed):
        m, n = int(ring_m[g]), int(sizes[g])
        tables = ids[key_off[g]:key_off[g + 1]].reshape(m, n)
        seen = np.zeros((m, n), dtype=bool)
        if tables.min() >= 0 and tables.max() < n:
            seen[np.arange(m)[:, None], tables] = True
        if not seen.all():
            raise ValueError(f"{named('ids')}: each table of ring {g} must be a permutation "
                             f"of its rows 0..{n - 1}")
    scalars = {}
    for key, dtype in (("scale", np.float64), ("width", np.float64), ("c0", np.float64),
                       ("b", np.float64), ("candidates", np.int64), ("scan_size", np.int64)):
        scalars[key] = check_array(np.asarray(state[key]), named(key), dtype, ())[()]
    check_options({key: scalars[key] for key in ("c0", "b", "candidates", "scan_size")}, prefix)
    check_real(scalars["scale"], named("scale"), 0.0, math.inf)
    if scalars["width"] != bucket_width(scalars["c0"]):
        raise ValueError(f"{named('width')} must be bucket_width({named('c0')}) = "
                         f"{bucket_width(scalars['c0'])}, got {scalars['width']}")


def search(state, W_sorted, norms_sorted, Q, k, nworkers):
    """Approximate top-k by inner product for every row of Q (nq, d) float32.

    Returns (positions in the sorted order int64 (nq, k), scores float32 (nq, k)), best
    first (equal scores: smaller position first). ``nworkers`` > 1 runs the parallel
    kernel with that many workers.
    """
    query_keys = Q @ state["proj"][:, :Q.shape[1]].T  # every ring's projections: one product
    return _dispatch.search.h2alsh_search(state, W_sorted, norms_sorted, Q, query_keys, k,
                                          nworkers)
