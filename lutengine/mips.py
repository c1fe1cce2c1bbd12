"""Maximum inner product search over the rows of a matrix (the MIPS paper, §3; h2alsh.md).

``MipsIndex(W).search(Q, k)`` returns, for each query x, the k rows w_i with the largest
⟨w_i, x⟩ (plus b_i when a bias is given), best first. Methods:

- ``"brute"``: one BLAS product per chunk of queries and ``argpartition`` (the baseline).
- ``"normscan"``: exact. Rows sorted by norm, scanned in growing blocks with BLAS; a query
  stops as soon as the next row's norm times ‖x‖ cannot beat its current k-th score
  (Cauchy–Schwarz). Pays when row norms are spread (h2alsh.md §5.2).
- ``"h2alsh"``: approximate. Norm rings with QALSH per ring (Huang et al. 2018;
  ``lutengine.h2alsh``).
- ``"fastscan"``: approximate. 4-bit product quantisation scanned with AVX2 table
  shuffles, the best ``rerank`` candidates re-scored exactly (``lutengine.fastscan``).
- ``"auto"``: ``normscan`` when a probe predicts it stops early, else ``brute`` (see
  :func:`_normscan_pays`).
"""

import numba
import numpy as np

from . import _cuda, _persist, config, fastscan, h2alsh
from ._validation import (
    as_float_matrix, as_float_vector, as_queries, check_choice, check_k,
)
from kernels import topk

METHODS = ("auto", "brute", "normscan", "h2alsh", "fastscan")


def _merge(scores, offset, rows, top_scores, top_ids):
    kernel = topk.merge_topk_parallel if rows.shape[0] > 1 else topk.merge_topk_serial
    kernel(np.ascontiguousarray(scores), offset, rows, top_scores, top_ids)


def _sorted_best_first(scores, ids):
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def _row_scores(rows, positions, Q):
    """``<rows[positions[q, j]], Q[q]>`` recomputed one row at a time (kernels.topk.rows_dot):
    the returned scores then depend on the row and the query only, not on the shape of the
    product that found them (BLAS rounds by its blocking), so an index over a shard of W
    (lutengine.dask.ShardedMipsIndex) returns the same bits as one over all of W."""
    out = np.empty(positions.shape, dtype=np.float32)
    kernel = topk.rows_dot_parallel if numba.get_num_threads() > 1 else topk.rows_dot_serial
    kernel(rows, positions, Q, out)
    return out


def brute_search(rows, Q, k):
    """Exact top-k by full products; returns (positions, scores), best first."""
    nq, N = Q.shape[0], rows.shape[0]
    chunk = max(1, config.MIPS_SCORE_BUDGET // N)
    ids = np.empty((nq, k), dtype=np.int64)
    scores = np.empty((nq, k), dtype=np.float32)
    for start in range(0, nq, chunk):
        S = Q[start:start + chunk] @ rows.T
        if k < N:
            part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(N), S.shape)
        ids[start:start + chunk] = part
        scores[start:start + chunk] = np.take_along_axis(S, part, 1)
    return _sorted_best_first(scores, ids)


def normscan_search(rows, norms, Q, k):
    """Exact top-k over rows sorted by decreasing norm; returns (positions, scores)."""
    nq, N = Q.shape[0], rows.shape[0]
    qnorms = np.linalg.norm(Q.astype(np.float64), axis=1)
    top_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    top_ids = np.full((nq, k), -1, dtype=np.int64)
    active = np.arange(nq, dtype=np.int64)
    start, block = 0, max(config.NORMSCAN_FIRST_BLOCK, k)
    while start < N and active.size:
        stop = min(N, start + block)
        _merge(Q[active] @ rows[start:stop].T, start, active, top_scores, top_ids)
        start, block = stop, min(2 * block, config.NORMSCAN_MAX_BLOCK)
        if start < N:
            kth = top_scores[active].min(axis=1).astype(np.float64)
            # slack of 1e-5 relative: a float32 product may round just above its bound
            bound = norms[start] * qnorms[active] * (1 + 1e-5)
            active = active[bound > kth]
    return _sorted_best_first(top_scores, top_ids)


def _normscan_pays(rows, norms, random_state):
    """The cost model of ``"auto"``: probe 8 random Gaussian query directions (k = 10) and
    take ``normscan`` when, on average, fewer than half the rows would be scanned."""
    rng = np.random.default_rng(random_state)
    U = rng.standard_normal((8, rows.shape[1])).astype(np.float32)
    S = U @ rows.T
    k = min(10, rows.shape[0])
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    unit_norms = np.linalg.norm(U, axis=1)
    scanned = [(norms * u > t).mean() for u, t in zip(unit_norms, kth)]
    return float(np.mean(scanned)) < 0.5


@_persist.savable
class MipsIndex:
    """Top-k maximum inner product search over the rows of ``W`` (N, d).

    Parameters
    ----------
    W : array (N, d)
        The items, one per row (e.g. a layer's weight rows).
    method : {"auto", "brute", "normscan", "h2alsh", "fastscan"}
    bias : array (N,), optional
        Rank by ⟨w_i, x⟩ + b_i: rows are augmented with b_i, queries with 1.
    random_state : int, optional
        Seeds the probe of ``"auto"``, the projections of ``"h2alsh"`` and the k-means of
        ``"fastscan"``.
    **options
        Parameters of ``"h2alsh"`` (c0, c, b, max_ring, scan_threshold, candidates,
        scan_size; see :func:`lutengine.h2alsh.build`; reference defaults otherwise) or of
        ``"fastscan"`` (ncodebooks, default 3d/8; rerank, default 1000, at search time
        at least k and at most N; train_rows; see :func:`lutengine.fastscan.build`), where
        d counts the bias column.

    Attributes
    ----------
    method_ : the method used ("auto" resolved).
    order_ : int64 (N,), row ids by decreasing (augmented) norm.
    """

    _state_attrs = ("method_", "order_", "rows_", "norms_", "n_features_") + tuple(
        "h2alsh_" + key for key in h2alsh.STATE_KEYS) + tuple(
        "fastscan_" + key for key in fastscan.STATE_KEYS)

    def __init__(self, W, method="auto", bias=None, random_state=None, **options):
        check_choice(method, "method", set(METHODS))
        W = as_float_matrix(W, "W")
        self.method, self.random_state, self.options = method, random_state, dict(options)
        if bias is not None:
            bias = as_float_vector(bias, "bias", W.shape[0])
            W = np.hstack([W, bias[:, None]])
        self.n_features_ = W.shape[1] - (bias is not None)
        norms = np.linalg.norm(W.astype(np.float64), axis=1)
        self.order_ = np.argsort(-norms, kind="stable")
        self.rows_ = np.ascontiguousarray(W[self.order_])
        self.norms_ = norms[self.order_].astype(np.float32)
        if method == "auto":
            method = "normscan" if _normscan_pays(self.rows_, self.norms_, random_state) else "brute"
        self.method_ = method
        state = (h2alsh.build(self.rows_, self.norms_, rng=np.random.default_rng(random_state),
                              **options) if method == "h2alsh"
                 else dict.fromkeys(h2alsh.STATE_KEYS, np.zeros(0)))
        for key, value in state.items():
            setattr(self, "h2alsh_" + key, value)
        state = (fastscan.build(self.rows_, self.norms_, rng=random_state, **options)
                 if method == "fastscan" else dict.fromkeys(fastscan.STATE_KEYS, np.zeros(0)))
        for key, value in state.items():
            setattr(self, "fastscan_" + key, value)

    def get_params(self):
        return {"method": self.method, "random_state": self.random_state, "options": self.options}

    @property
    def n_items(self):
        return self.rows_.shape[0]

    def search(self, Q, k, largest=True, device="cpu"):
        """The k best rows for each query: ``(ids (nq, k) int64, scores (nq, k) float32)``,
        best first, equal scores by smaller id; the scores are recomputed row by row, so
        they do not depend on how W was split. ``largest=False`` gives the k smallest
        ⟨w_i, x⟩ (+ b_i) instead
        (scores are then negated: the search runs on −x). ``device``: "cpu", "cuda"
        (method "h2alsh" only; NumPy or device-array Q, the results where Q was) or "auto"
        (cuda for a device array or when a GPU is present; see :mod:`lutengine._cuda`)."""
        if _cuda.resolve(device, Q) == "cuda":
            return _cuda.search(self, Q, k, largest)
        k = check_k(k, self.n_items)
        Q = self._host_queries(Q, largest)
        if self.method_ == "brute":
            positions, scores = brute_search(self.rows_, Q, k)
        elif self.method_ == "normscan":
            positions, scores = normscan_search(self.rows_, self.norms_, Q, k)
        elif self.method_ == "fastscan":
            state = {key: getattr(self, "fastscan_" + key) for key in fastscan.STATE_KEYS}
            positions, scores = fastscan.search(state, self.rows_, self.norms_, Q, k,
                                                numba.get_num_threads())
        else:
            state = {key: getattr(self, "h2alsh_" + key) for key in h2alsh.STATE_KEYS}
            positions, scores = h2alsh.search(state, self.rows_, self.norms_, Q, k,
                                              numba.get_num_threads())
        return _sorted_best_first(_row_scores(self.rows_, positions, Q), self.order_[positions])

    def _host_queries(self, Q, largest):
        """Q validated, with the bias column's 1 and negated for ``largest=False``."""
        Q = as_queries(Q, "Q", self.n_features_)
        if self.rows_.shape[1] > self.n_features_:  # bias column: the query gets a 1
            Q = np.hstack([Q, np.ones((Q.shape[0], 1), np.float32)])
        return Q if largest else -Q

    def save(self, path):
        """Write the index to ``path`` (.npz, readable with allow_pickle=False)."""
        _persist.save(self, path)
