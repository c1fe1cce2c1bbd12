"""MipsIndex and TopKLinear: exact methods against NumPy brute force, the top-k kernels
against their oracles, real MNIST weights, persistence and the errors users see."""

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
    assert numba.get_num_threads() >= 1
