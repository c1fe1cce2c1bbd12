"""MipsIndex and TopKLinear: exact methods against NumPy brute force, the top-k kernels
against their oracles, real MNIST weights, persistence, the errors users see (every
parameter of every method), damaged saved states, and one index shared by threads."""

import copy
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lutengine as le
import reference as ref
from kernels import topk

EXACT = ["brute", "normscan"]


def _items(n, d, spread, seed):
    """Rows with norms log-normal (σ = spread) or Gaussian, and Gaussian queries."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, d)) * np.exp(spread * rng.standard_normal((n, 1)))
    return W.astype(np.float32), rng.standard_normal((7, d)).astype(np.float32)


def _assert_exact(ids, scores, S, k):
    """ids/scores are a best-first top-k of the score matrix S (ties aside)."""
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    got = np.take_along_axis(S, ids, 1)
    np.testing.assert_allclose(scores, got, rtol=1e-5, atol=1e-5 * np.abs(S).max())
    assert np.all(got >= kth[:, None] - 1e-5 * np.abs(S).max())   # every returned row is a top-k row
    assert np.all(np.diff(scores, axis=1) <= 0)                       # best first
    assert all(len(set(row)) == k for row in ids)


@pytest.mark.parametrize("method", EXACT)
@given(n=st.one_of(st.sampled_from([1, 2, 17, 257]), st.integers(1, 3000)),
       d=st.integers(1, 40), k_frac=st.floats(0, 1), spread=st.sampled_from([0.0, 1.0, 3.0]),
       seed=st.integers(0, 2**32 - 1), with_bias=st.booleans())
def test_exact_methods_equal_brute_force(method, n, d, k_frac, spread, seed, with_bias):
    W, Q = _items(n, d, spread, seed)
    b = np.random.default_rng(seed).standard_normal(n).astype(np.float32) if with_bias else None
    k = 1 + int(k_frac * (n - 1))
    index = le.MipsIndex(W, method=method, bias=b)
    S = Q.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
    _assert_exact(*index.search(Q, k), S, k)
    _assert_exact(*index.search(Q, k, largest=False), -S, k)   # bottom-k: the k smallest


def test_normscan_stops_early_on_spread_norms():
    W, Q = _items(50_000, 32, 1.0, 0)
    index = le.MipsIndex(W, method="auto", random_state=0)
    assert index.method_ == "normscan"
    W_flat, _ = _items(50_000, 32, 0.0, 0)
    assert le.MipsIndex(W_flat, method="auto", random_state=0).method_ == "brute"


def test_real_mnist_layer(data_root):
    """The first layer of an MLP trained on MNIST: rows are its 256 neurons."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    X, y = le.datasets.load_mnist("train", data_home=data_root)
    with pytest.warns(ConvergenceWarning):
        mlp = MLPClassifier((256,), max_iter=2, random_state=0).fit(X[:5000], y[:5000])
    W, b = mlp.coefs_[0].T.astype(np.float32), mlp.intercepts_[0].astype(np.float32)
    Xt = le.datasets.load_mnist("test", data_home=data_root)[0][:200]
    S = Xt.astype(np.float64) @ W.T.astype(np.float64) + b
    for method in EXACT:
        index = le.MipsIndex(W, method=method, bias=b)
        _assert_exact(*index.search(Xt, 20), S, 20)
        _assert_exact(*index.search(Xt, 20, largest=False), -S, 20)
    layer = le.TopKLinear(W, b, k=20, method="normscan")
    Y, mask = layer(Xt), layer.active(Xt)
    assert (mask.sum(1) == 40).all()
    np.testing.assert_allclose(Y[mask], S[mask], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(Y[~mask], np.broadcast_to(b, Y.shape)[~mask])


@pytest.mark.parametrize("bottom", [False, True])
def test_topk_linear_computes_exactly_the_selected_outputs(bottom):
    W, X = _items(300, 12, 1.0, 3)
    b = np.linspace(-1, 1, 300).astype(np.float32)
    layer = le.TopKLinear(W, b, k=7, method="brute", bottom=bottom)
    S = X.astype(np.float64) @ W.T.astype(np.float64) + b
    top = np.argsort(-S, axis=1)[:, :7]
    expected_mask = np.zeros(S.shape, bool)
    np.put_along_axis(expected_mask, top, True, 1)
    if bottom:
        np.put_along_axis(expected_mask, np.argsort(S, axis=1)[:, :7], True, 1)
    np.testing.assert_array_equal(layer.active(X), expected_mask)
    Y, mask = layer(X, return_active=True)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(layer(X), Y)
    np.testing.assert_allclose(Y, np.where(expected_mask, S, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(X[0]), Y[:1], rtol=1e-6)   # a vector is one query


def test_save_load(tmp_path):
    W, Q = _items(500, 9, 1.0, 1)
    index = le.MipsIndex(W, method="normscan", bias=np.ones(500))
    index.save(tmp_path / "i.npz")
    back = le.load(tmp_path / "i.npz")
    assert isinstance(back, le.MipsIndex) and back.method_ == "normscan"
    for a, b in zip(back.search(Q, 5), index.search(Q, 5)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, exc, match", [
    (lambda W: le.MipsIndex(W).search(np.ones(8), 0), ValueError, "k must be between 1 and"),
    (lambda W: le.MipsIndex(W).search(np.ones(8), 51), ValueError, "k must be between 1 and the number of rows N = 50"),
    (lambda W: le.MipsIndex(W).search(np.ones(8), 2.0), TypeError, "k must be an integer"),
    (lambda W: le.MipsIndex(W).search(np.ones(7), 3), ValueError, "Q has 7 columns"),
    (lambda W: le.MipsIndex(W).search(np.full(8, np.nan), 3), ValueError, "Q contains NaN"),
    (lambda W: le.MipsIndex(W[:0]), ValueError, "W must not be empty"),
    (lambda W: le.MipsIndex(np.where(W > 1, np.inf, W)), ValueError, "W contains NaN or Inf"),
    (lambda W: le.MipsIndex(W, method="lsh"), ValueError, "method must be one of"),
    (lambda W: le.MipsIndex(W, bias=np.ones(3)), ValueError, r"bias must have shape \(50,\)"),
    (lambda W: le.TopKLinear(W, np.zeros(50), k=51), ValueError, "k must be between 1 and"),
    (lambda W: le.TopKLinear(W, np.zeros(50), k=3, method="brute")(np.ones((2, 9))), ValueError,
     "X has 9 columns"),
])
def test_bad_input_is_named(call, exc, match):
    W = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(exc, match=match):
        call(W)


# -- parameters: every option of every method checked up front ----------------------------------

BAD_PARAMS = [
    # options a method does not take, and unknown names
    ("brute", {"rerank": 5}, ValueError, r"method 'brute' does not use the options \['rerank'\]"),
    ("normscan", {"c0": 2.0}, ValueError, "method 'normscan' does not use the options"),
    ("auto", {"scan_threshold": 10}, ValueError, "method 'auto' does not use the options"),
    ("h2alsh", {"ncodebooks": 4}, ValueError, "method 'h2alsh' does not use the options"),
    ("fastscan", {"candidates": 3}, ValueError, "method 'fastscan' does not use the options"),
    ("h2alsh", {"cO": 2.0}, ValueError, r"unknown options \['cO'\]"),
    ("brute", {"foo": None}, ValueError, r"unknown options \['foo'\]"),
    # H2-ALSH: ranges (max_ring=0, scan_size=0 and candidates=0 used to loop forever)
    ("h2alsh", {"max_ring": 0}, ValueError, "max_ring must be between 1 and"),
    ("h2alsh", {"max_ring": 2**40}, ValueError, "max_ring must be between 1 and 2147483647"),
    ("h2alsh", {"scan_size": 0}, ValueError, "scan_size must be between 1 and"),
    ("h2alsh", {"scan_size": np.int64(-3)}, ValueError, "scan_size must be between 1 and"),
    ("h2alsh", {"candidates": 0}, ValueError, "candidates must be between 1 and"),
    ("h2alsh", {"scan_threshold": -1}, ValueError, "scan_threshold must be between 0 and"),
    ("h2alsh", {"c0": 1.0}, ValueError, r"c0 must be a finite number in \[1.1, 100.0\], got 1.0"),
    ("h2alsh", {"c0": 0.5}, ValueError, "c0 must be a finite number"),
    ("h2alsh", {"c0": 1e6}, ValueError, "c0 must be a finite number"),
    ("h2alsh", {"c0": float("nan")}, ValueError, "c0 must be a finite number"),
    ("h2alsh", {"c0": np.inf}, ValueError, "c0 must be a finite number"),
    ("h2alsh", {"c": 0.0}, ValueError, r"c must be a finite number in \(0.0, 1.0\)"),
    ("h2alsh", {"c": 1.0}, ValueError, "c must be a finite number"),
    ("h2alsh", {"b": 1.0}, ValueError, r"b must be a finite number in \(0.0, 1.0\)"),
    ("h2alsh", {"b": -0.5}, ValueError, "b must be a finite number"),
    ("h2alsh", {"c": 0.5, "b": 0.9}, ValueError, "give c or b, not both"),
    # types: bool is not a number, strings and floats are not counts
    ("h2alsh", {"max_ring": True}, TypeError, "max_ring must be an integer, got True"),
    ("h2alsh", {"candidates": 10.0}, TypeError, "candidates must be an integer"),
    ("h2alsh", {"c0": "2"}, TypeError, "c0 must be a real number"),
    ("h2alsh", {"b": False}, TypeError, "b must be a real number"),
    # fast scan (d = 8 columns, 9 with TopKLinear's bias column)
    ("fastscan", {"ncodebooks": 0}, ValueError, "ncodebooks must be between 1 and [89]"),
    ("fastscan", {"ncodebooks": 10}, ValueError, "ncodebooks must be between 1 and [89]"),
    ("fastscan", {"ncodebooks": 2.5}, TypeError, "ncodebooks must be an integer"),
    ("fastscan", {"rerank": 0}, ValueError, "rerank must be between 1 and"),
    ("fastscan", {"rerank": "many"}, TypeError, "rerank must be an integer"),
    ("fastscan", {"train_rows": 0}, ValueError, "train_rows must be between 1 and"),
    # random_state and method
    ("brute", {"random_state": -1}, ValueError, "random_state must be at least 0"),
    ("h2alsh", {"random_state": 1.5}, TypeError, "random_state must be None, an integer"),
    ("fastscan", {"random_state": True}, TypeError, "random_state must be None, an integer"),
    ("auto", {"random_state": np.random.RandomState(0)}, TypeError, "random_state must be"),
    (3, {}, TypeError, "method must be a string"),
    (["brute"], {}, TypeError, "method must be a string"),
]


@pytest.mark.parametrize("method, params, exc, match", BAD_PARAMS,
                         ids=[f"{m}-{'-'.join(p) or 'method'}" for m, p, _, _ in BAD_PARAMS])
def test_every_bad_parameter_is_named_before_anything_is_built(method, params, exc, match):
    """Each raises at once (an option that used to loop forever included): the checks run
    before the rows are sorted or any method is built; TopKLinear forwards to them."""
    W = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(exc, match=match):
        le.MipsIndex(W, method=method, **params)
    with pytest.raises(exc, match=match):
        le.TopKLinear(W, np.zeros(50), k=3, method=method, **params)


@pytest.mark.parametrize("call, exc, match", [
    (lambda W: le.TopKLinear(W, np.zeros(50), k=3, bottom=1), TypeError,
     "bottom must be True or False, got 1"),
    (lambda W: le.TopKLinear(W, np.zeros(50), k=3, bottom="no"), TypeError, "bottom must be"),
    (lambda W: le.TopKLinear(W, np.zeros(50), k=0), ValueError, "k must be between 1 and"),
    (lambda W: le.TopKLinear(W, np.zeros(50), k=True), TypeError, "k must be an integer"),
    (lambda W: le.MipsIndex(W).search(W, 3, largest="no"), TypeError, "largest must be True"),
])
def test_topk_linear_and_search_flags_are_checked(call, exc, match):
    W = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(exc, match=match):
        call(W)


BUILT = {
    "brute": {},
    "normscan": {},
    "auto": {"random_state": 3},
    "h2alsh": {"random_state": 0, "max_ring": np.int64(200), "scan_threshold": 50,
               "b": np.float32(0.5), "c0": 2.5},
    "fastscan": {"random_state": 0, "ncodebooks": 3, "rerank": 20, "train_rows": 256},
}


@pytest.fixture(scope="module")
def built():
    """One small index per method (h2alsh with scanned and indexed rings), their rows and
    bias."""
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((600, 7)) * rng.lognormal(0, 1, (600, 1))).astype(np.float32)
    bias = rng.standard_normal(600).astype(np.float32)
    indexes = {method: le.MipsIndex(W, method=method, bias=bias if method != "brute" else None,
                                    **options)
               for method, options in BUILT.items()}
    ring_m = indexes["h2alsh"].h2alsh_ring_m
    assert ring_m.any() and not ring_m.all()
    return W, bias, indexes


@pytest.mark.parametrize("method", list(BUILT))
def test_get_params_round_trips_through_the_constructor_and_a_file(built, method, tmp_path):
    W, bias, indexes = built
    index = indexes[method]
    params = index.get_params()
    assert set(params) == set(le.MipsIndex._param_names)
    given = {name: value for name, value in params.items() if value is not None}
    assert given == {"method": method, **BUILT[method]}
    assert all(type(value) in (str, int, float) for value in given.values())  # JSON types
    again = le.MipsIndex(W, bias=bias if method != "brute" else None, **params)
    assert again.get_params() == params
    for name in le.MipsIndex._state_attrs:
        np.testing.assert_array_equal(getattr(again, name), getattr(index, name), err_msg=name)
    index._check_state()
    index.save(tmp_path / "i.npz")
    back = le.load(tmp_path / "i.npz")
    assert back.get_params() == params and back.method_ == index.method_


def test_an_index_seeded_by_a_generator_is_not_saved(tmp_path):
    W = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    index = le.MipsIndex(W, method="h2alsh", random_state=np.random.default_rng(1))
    with pytest.raises(TypeError, match="random_state is a numpy.random.Generator"):
        index.save(tmp_path / "i.npz")


# -- a loaded state is checked whole before any kernel reads it ----------------------------------

_OTHER_DTYPE = {np.dtype(np.float32): np.float64, np.dtype(np.float64): np.float32,
                np.dtype(np.int64): np.int32, np.dtype(np.int32): np.int64,
                np.dtype(np.uint8): np.int8}


def _corruptions(name, value):
    """(kind, damaged copy) of a fitted attribute: another shape, another dtype, an index
    out of range, a NaN."""
    if name == "method_":
        yield from (("value", "nope"), ("value", "fastscan" if value != "fastscan" else "brute"),
                    ("dtype", np.array(3)))
    value = np.asarray(value)
    yield "shape", value[None]
    if value.dtype in _OTHER_DTYPE:
        yield "dtype", value.astype(_OTHER_DTYPE[value.dtype])
    if value.dtype.kind == "f":
        bad = value.copy()
        bad.reshape(-1)[0] = np.nan
        yield "nan", bad
    if value.dtype.kind == "i":
        high = 2**31 - 1 if value.dtype == np.int32 else 2**40
        for new in (-1, high) if name != "fastscan_rerank" else (-1, 0):
            bad = value.copy()
            bad.reshape(-1)[0] = new
            yield f"index {new}", bad


STATE_CASES = [(method, name) for method in ("brute", "normscan", "h2alsh", "fastscan")
               for name in ("rows_", "norms_", "order_", "n_features_", "method_") + tuple(
                   f"{method}_{key}" for key in (le.mips.STATEFUL[method].STATE_KEYS
                                                 if method in le.mips.STATEFUL else ()))]


@pytest.mark.parametrize("method, name", STATE_CASES)
def test_every_damaged_attribute_of_a_state_is_named(built, method, name):
    """Each attribute in turn: another shape, another dtype, an index out of range and a
    NaN are each rejected with a ValueError naming it; the undamaged state passes."""
    index = built[2][method]
    index._check_state()
    cases = list(_corruptions(name, getattr(index, name)))
    assert cases
    for kind, value in cases:
        bad = copy.copy(index)
        setattr(bad, name, value)
        try:
            bad._check_state()
        except ValueError as exc:
            assert name in str(exc), (kind, str(exc))
        else:
            pytest.fail(f"{name}: {kind} was not rejected")


def test_specific_inconsistencies_are_rejected(built):
    """Damage that keeps every dtype and shape: rows and norms that disagree, an order
    that is not a permutation, the state of another method left in, a ring that is empty,
    an id twice in one QALSH table, subspaces that do not tile the columns."""
    W, bias, indexes = built
    h2, fs, brute = indexes["h2alsh"], indexes["fastscan"], indexes["brute"]
    g = int(np.flatnonzero(h2.h2alsh_ring_m)[0])
    ids = h2.h2alsh_ids.copy()
    start = h2.h2alsh_key_off[g]
    ids[start] = ids[start + 1]
    bounds = h2.h2alsh_ring_bounds.copy()
    bounds[1] = bounds[0]
    cases = [
        (brute, "norms_", brute.norms_ * np.float32(1.5)),
        (brute, "norms_", brute.norms_[::-1].copy()),
        (brute, "order_", np.zeros_like(brute.order_)),
        (brute, "n_features_", brute.rows_.shape[1] - 2),
        (brute, "h2alsh_keys", np.zeros(3, np.float32)),
        (h2, "fastscan_rerank", np.int64(5)),
        (h2, "h2alsh_ids", ids),
        (h2, "h2alsh_ring_bounds", bounds),
        (h2, "h2alsh_width", h2.h2alsh_width * 2),
        (h2, "h2alsh_ring_l", np.where(h2.h2alsh_ring_m > 0, h2.h2alsh_ring_m + 1, 0)),
        (fs, "fastscan_bounds", np.array([0, 2, 4, 8], np.int64)),
        (fs, "fastscan_packed", np.zeros((1, 2, 32), np.uint8)),
    ]
    for index, name, value in cases:
        bad = copy.copy(index)
        setattr(bad, name, value)
        with pytest.raises(ValueError, match=name):
            bad._check_state()


@pytest.mark.parametrize("method, name, value", [
    ("h2alsh", "method", "nope"), ("h2alsh", "method", 3), ("h2alsh", "method", "brute"),
    ("auto", "method", "fastscan"), ("normscan", "random_state", -1),
    ("normscan", "random_state", [1]), ("h2alsh", "random_state", True),
    ("brute", "rerank", 5), ("h2alsh", "ncodebooks", 2), ("fastscan", "c0", 2.0),
    ("h2alsh", "max_ring", 0), ("h2alsh", "c0", 1.0), ("h2alsh", "scan_size", "x"),
    ("fastscan", "ncodebooks", 9), ("fastscan", "rerank", 2.5),
])
def test_damaged_parameters_are_named(built, method, name, value):
    """The parameters a file holds go through the constructor's checks (type errors
    included, as ValueError)."""
    bad = copy.copy(built[2][method])
    setattr(bad, name, value)
    with pytest.raises(ValueError, match=name):
        bad._check_state()


# -- one index, several threads ------------------------------------------------------------------

@pytest.mark.parametrize("method, options", [
    ("brute", {}), ("normscan", {}),
    ("h2alsh", {"scan_threshold": 100, "max_ring": 500, "random_state": 0}),
    ("fastscan", {"ncodebooks": 4, "rerank": 40, "random_state": 0}),
])
def test_threads_sharing_one_index_get_the_serial_results(method, options):
    """4 threads, 6 rounds of 12 calls on one TopKLinear and its index: top-k, bottom-k
    and the layer's outputs equal those of serial calls, bit for bit (each thread runs
    the parallel kernels too: Numba's thread count is per thread)."""
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((2000, 16)) * rng.lognormal(0, 1, (2000, 1))).astype(np.float32)
    b = rng.standard_normal(2000).astype(np.float32)
    batches = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 7, 40)]
    layer = le.TopKLinear(W, b, k=9, method=method, **options)

    def run(X):
        return (*layer.index.search(X, 10), *layer.index.search(X, 10, largest=False), layer(X))

    serial = [run(X) for X in batches]  # with 2+ threads, this launched parallel kernels
    if numba.get_num_threads() > 1 and numba.threading_layer() == "workqueue":
        pytest.skip("Numba's workqueue threading layer aborts on concurrent parallel launches")
    with ThreadPoolExecutor(4) as pool:
        for _ in range(6):
            calls = [i % len(batches) for i in range(12)]
            for i, got in zip(calls, pool.map(lambda i: run(batches[i]), calls)):
                for g, want in zip(got, serial[i]):
                    np.testing.assert_array_equal(g, want)


# -- kernels --------------------------------------------------------------------------------

def _best_first(scores, ids):
    order = np.lexsort((ids, -np.asarray(scores, np.float64)), axis=1)
    return np.take_along_axis(scores, order, 1).astype(np.float64), np.take_along_axis(ids, order, 1)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@given(nq=st.integers(1, 20), k=st.integers(1, 9), width=st.integers(1, 50), seed=st.integers(0, 2**32 - 1),
       rounds=st.integers(1, 3))
def test_merge_topk_matches_oracle(parallel, nq, k, width, seed, rounds):
    rng = np.random.default_rng(seed)
    top_scores = np.full((nq + 3, k), -np.inf, np.float32)
    top_ids = np.full((nq + 3, k), -1, np.int64)
    kernel = topk.merge_topk_parallel if parallel else topk.merge_topk_serial
    for r in range(rounds):
        rows = rng.permutation(nq + 3)[:nq].astype(np.int64)
        scores = rng.integers(-3, 4, (nq, width)).astype(np.float32)  # many ties
        expected = ref.ref_merge_topk(scores, r * width, rows, top_scores, top_ids)
        kernel(scores, r * width, rows, top_scores, top_ids)
        for got, want in zip(_best_first(top_scores, top_ids), _best_first(*expected)):
            np.testing.assert_array_equal(got, want)


def test_rows_dot_matches_oracle_for_any_thread_count(threads):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 13)).astype(np.float32)
    X = rng.standard_normal((300, 13)).astype(np.float32)
    ids = rng.integers(0, 40, (300, 6)).astype(np.int64)
    results = []
    for kernel, n in ((topk.rows_dot_serial, 1), (topk.rows_dot_parallel, 1), (topk.rows_dot_parallel, 2)):
        out = np.empty(ids.shape, np.float32)
        with threads(n):
            kernel(W, ids, X, out)
        results.append(out)
        np.testing.assert_allclose(out, ref.ref_rows_dot(W, ids, X), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(results[1], results[2])
