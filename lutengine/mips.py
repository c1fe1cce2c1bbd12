"""Maximum inner product search over the rows of a matrix (the MIPS paper, §3).

``MipsIndex(W).search(Q, k)`` returns, for each query x, the k rows w_i with the largest
⟨w_i, x⟩ (plus b_i when a bias is given), best first. Methods:

- ``"brute"``: one BLAS product per chunk of queries and ``argpartition`` (the baseline).
- ``"normscan"``: exact. Rows sorted by norm, scanned in growing blocks with BLAS; a query
  stops as soon as the next row's norm times ‖x‖ cannot beat its current k-th score
  (Cauchy–Schwarz). Pays when row norms are spread.
- ``"h2alsh"``: approximate. Norm rings with QALSH per ring (Huang et al. 2018;
  ``lutengine.h2alsh``).
- ``"fastscan"``: approximate. 4-bit product quantisation scanned with AVX2 table
  shuffles, the best ``rerank`` candidates re-scored exactly (``lutengine.fastscan``).
- ``"auto"``: ``normscan`` when a probe predicts it stops early, else ``brute`` (see
  :func:`_normscan_pays`).

Every parameter is checked before anything is built (:func:`check_params`): a method takes
only its own options ("auto", "brute" and "normscan" take none), each in its range. A
loaded index is checked whole (``MipsIndex._check_state``) before any kernel reads it.
Searching one index from several threads at once is safe: the drivers and kernels allocate
their scratch per call (and per worker), and nothing in the index is written after the
build (with Numba's "omp" or "tbb" threading layer; "workqueue" forbids concurrent
parallel launches).
"""

import numbers

import numpy as np

from . import _cuda, _dispatch, _persist, config, fastscan, h2alsh
from ._validation import (
    as_float_matrix, as_float_vector, as_queries, check_all_finite, check_array, check_bool,
    check_choice, check_k, check_random_state,
)

METHODS = ("auto", "brute", "normscan", "h2alsh", "fastscan")
#: the methods with a state of their own: their module (build, search, check_state)
STATEFUL = {"h2alsh": h2alsh, "fastscan": fastscan}
#: the options each method takes ("auto" resolves to "brute" or "normscan": none)
METHOD_OPTIONS = {"auto": (), "brute": (), "normscan": (), "h2alsh": h2alsh.OPTIONS,
                  "fastscan": fastscan.OPTIONS}
#: every option name of :class:`MipsIndex`
OPTIONS = h2alsh.OPTIONS + fastscan.OPTIONS


def _sorted_best_first(scores, ids):
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def _row_scores(rows, positions, Q):
    """``<rows[positions[q, j]], Q[q]>`` recomputed one row at a time (kernels.topk.rows_dot):
    the returned scores then depend on the row and the query only, not on the shape of the
    product that found them (BLAS rounds by its blocking), so an index over a shard of W
    (lutengine.dask.ShardedMipsIndex) returns the same bits as one over all of W."""
    return _dispatch.search.rows_dot(rows, positions, Q)


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
        _dispatch.search.merge_topk(Q[active] @ rows[start:stop].T, start, active, top_scores,
                                    top_ids)
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


def check_params(method, random_state, options, n_cols):
    """The parameters of an index over rows of ``n_cols`` columns (the bias column
    included), checked together before anything is built and again on load: ``method``
    one of :data:`METHODS`, ``random_state`` None, a seed >= 0 or a
    ``np.random.Generator``, ``options`` (name -> value, None for the method's default)
    only names of :data:`OPTIONS` and, when not None, only the method's own
    (:data:`METHOD_OPTIONS`), each in its range (:func:`lutengine.h2alsh.check_options`,
    :func:`lutengine.fastscan.check_options`). Returns ``(random_state, options)``: the
    seed as int, the options given (not None) as int or float."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {list(METHODS)}, got {method!r}")
    check_choice(method, "method", set(METHODS))
    random_state = check_random_state(random_state)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown options {unknown}: MipsIndex takes {list(h2alsh.OPTIONS)} "
                         f"(method 'h2alsh') and {list(fastscan.OPTIONS)} (method 'fastscan')")
    given = {name: value for name, value in options.items() if value is not None}
    unused = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if unused:
        takes = list(METHOD_OPTIONS[method]) or "none"
        raise ValueError(f"method {method!r} does not use the options {unused} "
                         f"({', '.join(f'{name}={given[name]!r}' for name in unused)}); "
                         f"its options: {takes}")
    if method == "h2alsh":
        given = h2alsh.check_options(given)
    elif method == "fastscan":
        given = fastscan.check_options(given, n_cols)
    return random_state, given


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
    random_state : None, int >= 0 or np.random.Generator
        Seeds the probe of ``"auto"``, the projections of ``"h2alsh"`` and the k-means of
        ``"fastscan"``. An index built with a Generator cannot be saved (a file holds a
        seed).
    **options
        Options of ``"h2alsh"`` (c0, c, b, max_ring, scan_threshold, candidates,
        scan_size; see :func:`lutengine.h2alsh.build` and, for their ranges,
        :func:`lutengine.h2alsh.check_options`; reference defaults otherwise) or of
        ``"fastscan"`` (ncodebooks, default 3d/8; rerank, default 1000, at search time
        at least k and at most N; train_rows; see :func:`lutengine.fastscan.build`), where
        d counts the bias column. A value of None is the default; an option the method
        does not take raises ValueError (see :func:`check_params`).

    Attributes
    ----------
    method_ : the method used ("auto" resolved).
    order_ : int64 (N,), row ids by decreasing (augmented) norm.
    method, random_state, and one per option name (None when not given) : the parameters,
        as :meth:`get_params` returns them.
    """

    _param_names = ("method", "random_state") + OPTIONS
    _state_attrs = ("method_", "order_", "rows_", "norms_", "n_features_") + tuple(
        f"{name}_{key}" for name, module in STATEFUL.items() for key in module.STATE_KEYS)

    def __init__(self, W, method="auto", bias=None, random_state=None, **options):
        W = as_float_matrix(W, "W")
        if bias is not None:
            bias = as_float_vector(bias, "bias", W.shape[0])
        random_state, given = check_params(method, random_state, options,
                                           W.shape[1] + (bias is not None))
        self.method, self.random_state = method, random_state
        for name in OPTIONS:
            setattr(self, name, given.get(name))
        if bias is not None:
            W = np.hstack([W, bias[:, None]])
        self.n_features_ = W.shape[1] - (bias is not None)
        norms = np.linalg.norm(W.astype(np.float64), axis=1)
        self.order_ = np.argsort(-norms, kind="stable")
        self.rows_ = np.ascontiguousarray(W[self.order_])
        self.norms_ = norms[self.order_].astype(np.float32)
        if method == "auto":
            method = "normscan" if _normscan_pays(self.rows_, self.norms_, random_state) else "brute"
        self.method_ = method
        for name, module in STATEFUL.items():
            state = (module.build(self.rows_, self.norms_, rng=random_state, **given)
                     if name == method else dict.fromkeys(module.STATE_KEYS, np.zeros(0)))
            for key, value in state.items():
                setattr(self, f"{name}_{key}", value)

    def get_params(self):
        """The parameters, every option included (None: not given), as int, float or str:
        ``MipsIndex(W, bias=bias, **index.get_params())`` builds the same index."""
        return {name: getattr(self, name) for name in self._param_names}

    def _state(self, name):
        """The state dict of the method ``name`` ("h2alsh" or "fastscan")."""
        return {key: getattr(self, f"{name}_{key}") for key in STATEFUL[name].STATE_KEYS}

    def _check_state(self):
        """Raise ValueError naming the first parameter or fitted attribute (of an index
        read from a file) that this class cannot produce, before any kernel reads it:
        ``rows_`` (N, d) float32 C-contiguous finite; ``norms_`` its row norms (float32,
        non-increasing); ``order_`` an int64 permutation of 0..N-1; ``n_features_`` d or
        d − 1 (a bias column); ``method_`` a method, the one of ``method`` ("auto": brute
        or normscan); the parameters as :func:`check_params` accepts them; the state of
        ``method_`` as its module's ``check_state`` accepts it, every other state empty."""
        rows = check_array(self.rows_, "rows_", np.float32, (None, None))
        if 0 in rows.shape:
            raise ValueError(f"rows_ must not be empty, got shape {rows.shape}")
        check_all_finite(rows, "rows_")
        N, d = rows.shape
        norms = check_array(self.norms_, "norms_", np.float32, (N,))
        exact = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))  # no float64 copy
        if not (np.allclose(norms, exact, rtol=1e-5, atol=0) and np.all(np.diff(norms) <= 0)):
            raise ValueError("norms_ must be the norms of the rows of rows_, non-increasing")
        order = check_array(self.order_, "order_", np.int64, (N,))
        if not np.array_equal(np.sort(order), np.arange(N)):
            raise ValueError(f"order_ must be a permutation of the row ids 0..{N - 1}")
        n_features = self.n_features_
        if isinstance(n_features, (bool, np.bool_)) or not isinstance(
                n_features, numbers.Integral) or n_features < 1 or n_features not in (d, d - 1):
            raise ValueError(f"n_features_ must be the {d} columns of rows_ or one less (a bias "
                             f"column), got {n_features!r}")
        if not isinstance(self.method_, str) or self.method_ not in METHODS[1:]:
            raise ValueError(f"method_ must be one of {list(METHODS[1:])}, got {self.method_!r}")
        try:
            check_params(self.method, self.random_state,
                         {name: getattr(self, name) for name in OPTIONS}, d)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
        if self.method_ != self.method and not (
                self.method == "auto" and self.method_ in ("brute", "normscan")):
            raise ValueError(f"method_ {self.method_!r} cannot come from method {self.method!r}")
        for name, module in STATEFUL.items():
            if name == self.method_:
                module.check_state(self._state(name), N, d, prefix=f"{name}_")
            else:
                for key, value in self._state(name).items():
                    if np.size(value) != 0:
                        raise ValueError(f"{name}_{key} must be empty for method_ "
                                         f"{self.method_!r}, got size {np.size(value)}")

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
        Q = self._host_queries(Q, check_bool(largest, "largest"))
        if self.method_ == "brute":
            positions, scores = brute_search(self.rows_, Q, k)
        elif self.method_ == "normscan":
            positions, scores = normscan_search(self.rows_, self.norms_, Q, k)
        else:
            positions, scores = STATEFUL[self.method_].search(
                self._state(self.method_), self.rows_, self.norms_, Q, k,
                _dispatch.choice.threads())
        return _sorted_best_first(_row_scores(self.rows_, positions, Q), self.order_[positions])

    def _host_queries(self, Q, largest):
        """Q validated, with the bias column's 1 and negated for ``largest=False``."""
        Q = as_queries(Q, "Q", self.n_features_)
        if self.rows_.shape[1] > self.n_features_:  # bias column: the query gets a 1
            Q = np.hstack([Q, np.ones((Q.shape[0], 1), np.float32)])
        return Q if largest else -Q

    def save(self, path):
        """Write the index to ``path`` (.npz, readable with allow_pickle=False)."""
        if isinstance(self.random_state, np.random.Generator):
            raise TypeError("random_state is a numpy.random.Generator, which a file cannot "
                            "hold: build the index with an integer seed (or None) to save it")
        _persist.save(self, path)
