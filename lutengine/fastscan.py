"""4-bit PQ fast-scan MIPS index (the "fast scan" of FAISS ``IndexPQFastScan``, André et al.
VLDB'15, and of ScaNN, Guo et al. ICML'20).

Build: every row w is split into its norm ‖w‖ and direction u = w / ‖w‖, and the
directions are product-quantised: ``ncodebooks`` contiguous subspaces (widths differ by at
most one column), 16 k-means centroids each (scikit-learn, fitted on at most
``train_rows`` sampled rows), every row's nearest centroid per subspace stored two codes
per byte in the packed layout of :mod:`kernels.packed`. Search (:mod:`kernels.fastscan`):
a uint8 table per query and subspace, the SIMD scan of every row, its uint16 score turned
into the approximate inner product ‖w‖ · ⟨û, x⟩ and into a 16-bit key counted in a
histogram, the ``rerank`` best candidates re-scored exactly with the float rows, the best
k returned.

Why directions: PQ of the raw rows spends its centroids on the bulk of the rows, and
with spread (log-normal) norms the rare long rows, the ones that win inner products, are
quantised worst. Measured at N = 10^6, d = 128, k = 10, 64 codebooks, rerank 1000:
recall@10 0.88 with PQ of the raw rows against 0.994 with PQ of the directions on
log-normal norms (σ = 1); 1.00 either way on Gaussian rows.

Inputs are validated and sorted by the caller (``lutengine.mips``), the options checked by
:func:`check_options`. The state is a dict of NumPy arrays (scalars as 0-d arrays), savable
with ``np.savez``; :func:`check_state` checks one read from a file.
"""

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from . import _dispatch
from ._validation import check_array, check_int

#: keys of the state dict, in a fixed order (for save/load)
STATE_KEYS = ("packed", "centroids", "bounds", "rerank")
#: the options of ``MipsIndex(method="fastscan")``: the keywords of :func:`build`
OPTIONS = ("ncodebooks", "rerank", "train_rows")
#: the most codebooks: a row's uint16 score sums C table entries, whose quantisation
#: leaves 65535 − C quanta to share (:mod:`kernels.fastscan`, step 1)
MAX_CODEBOOKS = 65534
#: the largest ``rerank`` or ``train_rows`` (the state holds rerank as int64)
MAX_COUNT = int(np.iinfo(np.int64).max)


def subspace_bounds(d, ncodebooks):
    """int64 (ncodebooks + 1,): contiguous subspaces of d columns, the first ``d % C``
    one column wider."""
    sizes = np.full(ncodebooks, d // ncodebooks, dtype=np.int64)
    sizes[:d % ncodebooks] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def pack_codes(codes):
    """Codes (N, C) uint8 < 16 in the packed layout ``[ceil(N/32), ceil(C/2), 32]``."""
    N, C = codes.shape
    padded = np.zeros((-(-N // 32) * 32, -(-C // 2) * 2), dtype=np.uint8)
    padded[:N, :C] = codes
    blocks = padded.reshape(-1, 32, padded.shape[1] // 2, 2)
    return np.ascontiguousarray((blocks[..., 0] | (blocks[..., 1] << 4)).transpose(0, 2, 1))


#: rows per chunk when encoding (the directions of a chunk are a temporary copy)
ENCODE_CHUNK = 1 << 16


def _directions(W, norms):
    """Rows divided by their norms (rows of norm 0 stay 0), float64."""
    W = np.asarray(W, dtype=np.float64)
    return W / np.where(norms > 0, norms, 1.0)[:, None]


def default_ncodebooks(d):
    """3d/8 codebooks (48 at d = 128), at least 1 and at most :data:`MAX_CODEBOOKS`: at
    N = 10^6, d = 128, k = 10 and rerank 1000, d/4 = 32 codebooks gave recall@10 0.80 on
    Gaussian rows (0.96 on log-normal norms), 48 gave 0.975 (0.994) at 13–14× the speed
    of brute force (one thread)."""
    return min(max(1, 3 * d // 8), MAX_CODEBOOKS)


def check_options(options, n_cols, prefix=""):
    """The given options of :func:`build` (name -> value, names from :data:`OPTIONS`) for
    rows of ``n_cols`` columns, as ints: ``ncodebooks`` between 1 and min(d,
    :data:`MAX_CODEBOOKS`), ``rerank`` and ``train_rows`` between 1 and :data:`MAX_COUNT`.
    Errors name ``prefix + name``."""
    return {name: check_int(value, prefix + name, 1,
                            min(n_cols, MAX_CODEBOOKS) if name == "ncodebooks" else MAX_COUNT)
            for name, value in options.items()}


def build(W_sorted, norms_sorted, ncodebooks=None, rerank=1000, train_rows=65536, rng=None):
    """Encode the rows (largest norm first; ``norms_sorted`` their norms): the state dict
    (:data:`STATE_KEYS`).

    ``ncodebooks`` (default :func:`default_ncodebooks` of the row width d) subspaces;
    ``rerank`` candidates are re-scored exactly per query (at search time at least k and
    at most N); k-means runs on at most ``train_rows`` rows sampled with ``rng`` (a seed
    or ``np.random.Generator``, which also seeds k-means). The options are as
    :func:`check_options` accepts them.
    """
    N, d = W_sorted.shape
    C = default_ncodebooks(d) if ncodebooks is None else ncodebooks
    rng = np.random.default_rng(rng)
    bounds = subspace_bounds(d, C)
    sample = np.sort(rng.choice(N, train_rows, replace=False)) if N > train_rows else \
        np.arange(N)
    X = np.asarray(W_sorted[sample], dtype=np.float64)
    seeds = rng.integers(2**31 - 1, size=C)
    norms = np.asarray(norms_sorted, dtype=np.float64)
    X = _directions(X, norms[sample])
    centroids = np.zeros((C, 16, int(np.diff(bounds).max())), dtype=np.float32)
    from sklearn.cluster import KMeans  # here, not at import: sklearn takes ~2 s to load
    # many small k-means: BLAS threads only add overhead; few distinct rows leave clusters
    # empty or duplicated (ConvergenceWarning), harmless here
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        for c in range(C):
            sub = X[:, bounds[c]:bounds[c + 1]]
            km = KMeans(n_clusters=min(16, len(sub)), n_init=1, random_state=int(seeds[c]))
            km.fit(sub)
            centers = km.cluster_centers_.astype(np.float32)
            centroids[c, :len(centers), :sub.shape[1]] = centers
            centroids[c, len(centers):, :sub.shape[1]] = centers[0]  # never strictly nearer
    codes = np.empty((N, C), dtype=np.uint8)
    cols = np.arange(d, dtype=np.int64)
    for start in range(0, N, ENCODE_CHUNK):  # directions a chunk at a time
        stop = min(N, start + ENCODE_CHUNK)
        U = _directions(W_sorted[start:stop], norms[start:stop]).astype(np.float32)
        codes[start:stop] = _dispatch.lut.encode_pq(U, cols, bounds, centroids)[0]
    return {"packed": pack_codes(codes), "centroids": centroids, "bounds": bounds,
            "rerank": np.int64(rerank)}


def check_state(state, n_rows, n_cols, prefix=""):
    """Raise ValueError naming (``prefix + key``) the first entry of ``state`` that the
    kernels (:mod:`kernels.fastscan`, which check no bounds) could not safely read for
    ``n_rows`` sorted rows of ``n_cols`` columns, or that :func:`build` cannot produce:
    ``bounds`` the :func:`subspace_bounds` of d = n_cols in C codebooks (1 ≤ C ≤
    min(d, :data:`MAX_CODEBOOKS`)), ``centroids`` (C, 16, widest subspace) finite,
    ``packed`` (ceil(N/32), ceil(C/2), 32) (any byte is two 4-bit codes), ``rerank`` as
    :func:`check_options` accepts it."""
    bounds = check_array(state["bounds"], prefix + "bounds", np.int64, (None,))
    C = bounds.size - 1
    if not (1 <= C <= min(n_cols, MAX_CODEBOOKS)
            and np.array_equal(bounds, subspace_bounds(n_cols, C))):
        raise ValueError(f"{prefix}bounds must be subspace_bounds(d, C) of the d = {n_cols} "
                         f"columns in 1 to {min(n_cols, MAX_CODEBOOKS)} codebooks C")
    centroids = check_array(state["centroids"], prefix + "centroids", np.float32,
                            (C, 16, int(np.diff(bounds).max())))
    if not np.isfinite(centroids).all():
        raise ValueError(f"{prefix}centroids contains NaN or Inf values")
    check_array(state["packed"], prefix + "packed", np.uint8,
                (-(-n_rows // 32), -(-C // 2), 32))
    rerank = check_array(np.asarray(state["rerank"]), prefix + "rerank", np.int64, ())[()]
    check_options({"rerank": rerank}, n_cols, prefix)


def query_tables(state, Q, nworkers):
    """uint8 tables (nq, Cpad, 16), float32 offsets and scales (nq,) of the queries."""
    return _dispatch.search.fastscan_tables(Q, state["centroids"], state["bounds"],
                                            state["packed"].shape[1], nworkers)


def effective_rerank(state, k, nrows):
    """Candidates re-scored per query: ``rerank``, at least k, at most N."""
    return min(max(int(state["rerank"]), k), nrows)


def search(state, W_sorted, norms_sorted, Q, k, nworkers):
    """Approximate top-k by inner product for every row of Q (nq, d) float32, over the
    rows ``W_sorted`` with norms ``norms_sorted`` (largest first).

    Returns (positions in the sorted order int64 (nq, k), exact scores float32 (nq, k)),
    best first (equal scores: smaller position first). The AVX2 scan runs where
    :func:`lutengine._dispatch.use_simd` says so, the plain one otherwise (same results);
    ``nworkers`` > 1 runs the parallel kernel over queries.
    """
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    N = W_sorted.shape[0]
    return _dispatch.search.fastscan_search(
        state["packed"], N, query_tables(state, Q, nworkers),
        np.ascontiguousarray(norms_sorted, dtype=np.float32), W_sorted, Q, k,
        effective_rerank(state, k, N), nworkers)
