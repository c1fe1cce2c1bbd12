"""LutMatmul / PQMatmul: the MADDNESS pipeline against independent NumPy computations,
accuracy on real MNIST, persistence, and the errors users see for bad input."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import clone

import lutengine as le
import reference as ref
from lutengine import _dispatch, matmul, trees
from lutengine.partition import contiguous


def _layer(n=600, d=37, m=7, seed=0):
    """Correlated, non-negative rows (like ReLU activations) and a random layer."""
    rng = np.random.default_rng(seed)
    A = np.maximum(rng.standard_normal((n, 6)) @ rng.standard_normal((6, d)), 0).astype(np.float32)
    A += 0.05 * rng.standard_normal(A.shape).astype(np.float32)
    B = rng.standard_normal((d, m)).astype(np.float32)
    return A, B


def _nmse(Y, E):
    return float(((Y - E) ** 2).mean() / E.var())


# -- the algorithm, step by step, against independent NumPy --------------------------------

def test_contiguous_partition_puts_the_extra_columns_first():
    cols, bounds = contiguous(10, 4)
    assert list(bounds) == [0, 3, 6, 8, 10]
    assert list(cols) == list(range(10))


def _brute_tree(X):
    """Greedy MADDNESS tree by brute force: every candidate column, every cut."""
    buckets = [np.arange(len(X))]
    dims, thresholds = [], []
    for _ in range(4):
        sse = sum(((X[b] - X[b].mean(0)) ** 2).sum(0) if len(b) else np.zeros(X.shape[1]) for b in buckets)
        best = None
        for dim in np.argsort(-sse, kind="stable")[:4]:
            loss, level_t = 0.0, []
            for b in buckets:
                v = np.sort(X[b, dim])
                options = [(((X[b] - X[b].mean(0)) ** 2).sum() if len(b) else 0.0, v[-1] if len(b) else np.inf)]
                for i in range(len(b) - 1):
                    if v[i] < v[i + 1]:
                        t = np.float32((np.float64(v[i]) + v[i + 1]) / 2)
                        left = X[b][X[b, dim] <= v[i]]
                        right = X[b][X[b, dim] > v[i]]
                        options.append((((left - left.mean(0)) ** 2).sum() + ((right - right.mean(0)) ** 2).sum(), t))
                loss_b, t_b = min(options, key=lambda o: o[0])
                loss += loss_b
                level_t.append(t_b)
            if best is None or loss < best[0] - 1e-9 * abs(best[0]):
                best = (loss, dim, level_t)
        dims.append(best[1])
        thresholds += best[2]
        buckets = [part for b, t in zip(buckets, best[2]) for part in (b[X[b, best[1]] <= t], b[X[b, best[1]] > t])]
    return np.array(dims), np.array(thresholds, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learn_tree_matches_brute_force_greedy_search(seed):
    rng = np.random.default_rng(seed)
    X = np.round(rng.standard_normal((70, 5)) * 3).astype(np.float32)  # ties included
    dims, thresholds, leaves, means = trees.learn_tree(X)
    ref_dims, ref_thresholds = _brute_tree(X)
    np.testing.assert_array_equal(dims, ref_dims)
    np.testing.assert_allclose(thresholds[:15], ref_thresholds, rtol=1e-6)
    # leaves are the MSB-first decision bits, and the leaf means are the leaves' means
    node = np.zeros(len(X), dtype=np.int64)
    for level in range(4):
        node = 2 * node + (X[:, dims[level]] > thresholds[2**level - 1 + node])
    np.testing.assert_array_equal(leaves, node)
    for leaf in np.unique(leaves):
        np.testing.assert_allclose(means[leaf], X[leaves == leaf].mean(0), rtol=1e-5, atol=1e-6)


def test_fit_is_ridge_toward_leaf_means_and_luts_are_prototypes_times_B():
    A, B = _layer()
    est = le.LutMatmul(ncodebooks=5, progress=False).fit(A, B)
    codes = est.transform(A)
    G = np.zeros((len(A), 16 * 5))
    G[np.arange(len(A))[:, None], 16 * np.arange(5) + codes] = 1.0
    P0 = np.zeros((5, 16, A.shape[1]))
    cols, bounds = contiguous(A.shape[1], 5)
    for c in range(5):
        sub = cols[bounds[c]:bounds[c + 1]]
        for k in range(16):
            rows = codes[:, c] == k
            if rows.any():
                P0[c, k, sub] = A[rows][:, sub].mean(0)
    # empty leaves inherit a parent's mean: take the learned P0 there (never hit by rows)
    used = G.sum(0).reshape(5, 16) > 0
    P_ref = np.linalg.solve(G.T @ G + np.eye(80), G.T @ A + P0.reshape(80, -1))
    np.testing.assert_allclose(est.prototypes_.reshape(80, -1)[used.ravel()], P_ref[used.ravel()],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(est.luts_, est.prototypes_ @ B, rtol=1e-4, atol=1e-4)


def test_float_tables_give_the_exact_sum_of_table_rows():
    A, B = _layer()
    bias = np.arange(B.shape[1], dtype=np.float32)
    est = le.LutMatmul(ncodebooks=4, quantize=False, progress=False).fit(A, B, bias=bias)
    codes = est.transform(A)
    ref = sum(est.luts_[c][codes[:, c]] for c in range(4)) + bias
    np.testing.assert_allclose(est.predict(A), ref, rtol=1e-5, atol=1e-4)


def test_quantized_scan_error_is_within_the_rounding_bound():
    """int8 tables round each entry by at most half a quantum of its output, and the scan
    sums them exactly: |quantised − float| of output m is at most C/2 / scale[m]."""
    A, B = _layer(n=2000, d=64, m=12)
    B[:, 5] *= 25  # an outlier output keeps its own quantum
    for C in (1, 2, 7, 8, 16, 32, 48):
        est = le.LutMatmul(C, progress=False).fit(A, B)
        quantized = est.predict(A)
        exact_tables = est.set_params(quantize=False).predict(A)
        bound = C / 2 / est.lut_scale_
        assert (np.abs(quantized - exact_tables).max(axis=0) <= bound * (1 + 1e-5) + 1e-4).all()


def test_error_falls_as_codebooks_grow():
    A, B = _layer(n=3000, d=64, m=10)
    errors = [_nmse(le.LutMatmul(C, progress=False).fit(A, B).predict(A), A @ B) for C in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.filterwarnings("ignore::lutengine.QuantizationWarning")  # near-exact tiny fits
@given(n=st.one_of(st.sampled_from([1, 2, 13, 97]), st.integers(1, 300)),
       d=st.one_of(st.sampled_from([1, 7, 31]), st.integers(1, 40)),
       m=st.one_of(st.sampled_from([1, 3, 33]), st.integers(1, 40)),
       c_frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1), fortran=st.booleans())
def test_predict_is_the_oracle_pipeline_on_the_fitted_state(n, d, m, c_frac, seed, fortran):
    """Any shape (1 row, 1 column, primes, D not divisible by C): predict equals the NumPy
    oracles of encoding and scan applied to the fitted arrays, and the tables are P·B."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)).astype(np.float32)
    B = rng.standard_normal((d, m)).astype(np.float32)
    C = 1 + int(c_frac * (d - 1))
    est = le.LutMatmul(C, progress=False).fit(A, B, bias=rng.standard_normal(m))
    X = np.asfortranarray(A) if fortran else A
    codes = ref.ref_encode_tree(A, est.split_dims_, est.thresholds_)
    np.testing.assert_array_equal(est.transform(X), codes)
    expected = ref.ref_scan_quantized(codes, est.luts_q_, est.lut_scale_,
                                    est.lut_offsets_.astype(np.float64).sum(0), est.bias_)
    np.testing.assert_allclose(est.predict(X), expected, rtol=1e-5,
                               atol=1e-5 * (np.abs(expected).max() + 1))
    q, offsets, scales = ref.ref_quantize_luts(est.luts_)
    np.testing.assert_array_equal(est.luts_q_, q)
    np.testing.assert_array_equal(est.lut_offsets_, offsets.astype(np.float32))
    np.testing.assert_allclose(est.lut_scale_, scales, rtol=1e-6)


# -- real data ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_linear_layer(data_root):
    """A ridge-regression linear classifier on MNIST pixels: a real 784×10 layer."""
    X, y = le.datasets.load_mnist("train", data_home=data_root)
    A, y_a = X[:8000], y[:8000]
    gram = A.T.astype(np.float64) @ A + 100.0 * np.eye(A.shape[1])
    W = np.linalg.solve(gram, A.T @ (np.eye(10)[y_a] - 0.1)).astype(np.float32)
    X_test, y_test = le.datasets.load_mnist("test", data_home=data_root)
    return A, W, X_test[:3000], y_test[:3000]


def test_mnist_layer_accuracy_kept(mnist_linear_layer):
    A, W, X_test, y_test = mnist_linear_layer
    exact = ((X_test @ W).argmax(1) == y_test).mean()
    results = {}
    for C in (16, 64):
        est = le.LutMatmul(C, progress=False).fit(A, W)
        Y = est.predict(X_test)
        results[C] = (_nmse(Y, X_test @ W), (Y.argmax(1) == y_test).mean() / exact)
    assert exact > 0.75
    assert results[64][0] < results[16][0] < 0.5
    assert results[64][1] > 0.95


def _channel_nmse(Y, E):
    """Each output's own ‖Ŷ − Y‖² / ‖Y‖²."""
    return ((Y - E) ** 2).sum(0) / (E.astype(np.float64) ** 2).sum(0)


@pytest.mark.parametrize("C", [16, 64])
def test_outlier_output_does_not_coarsen_the_others(mnist_linear_layer, C):
    """A real MNIST layer with one output scaled x25: per-output scales quantise every
    output on its own range, so the int8 tables stay within 1.25x of the float tables
    overall, and each other output within 1.1x of its own float error (one scale for all
    gives them the outlier's 25x coarser quantum: 1.2x at C = 16, 7x at C = 64)."""
    A, W, X_test, _ = mnist_linear_layer
    W = W.copy()
    W[:, 3] *= 25
    bias = np.linspace(-1, 1, W.shape[1]).astype(np.float32)
    est = le.LutMatmul(C, progress=False).fit(A, W, bias=bias)
    exact = X_test.astype(np.float64) @ W + bias
    quantized = est.predict(X_test)
    float_tables = est.set_params(quantize=False).predict(X_test)
    assert _nmse(quantized, exact) <= 1.25 * _nmse(float_tables, exact)
    per_output = _channel_nmse(quantized, exact) / _channel_nmse(float_tables, exact)
    assert np.delete(per_output, 3).max() <= 1.1, per_output
    assert est.quantization_nmse_ <= 1.25 * est.float_nmse_


def test_pq_baseline_on_mnist_layer(mnist_linear_layer):
    A, W, X_test, y_test = mnist_linear_layer
    est = le.PQMatmul(16, random_state=0, progress=False).fit(A, W)
    codes = est.transform(X_test)
    # nearest centroid per subspace, recomputed in NumPy
    cols, bounds = est.subspace_cols_, est.subspace_bounds_
    for c in (0, 7, 15):
        sub = X_test[:, cols[bounds[c]:bounds[c + 1]]]
        cent = est.centroids_[c, :, : sub.shape[1]]
        d = ((sub[:, None, :] - cent[None]) ** 2).sum(-1)
        ref = d.argmin(1)
        ties = np.isclose(np.take_along_axis(d, ref[:, None], 1)[:, 0],
                          np.take_along_axis(d, codes[:, c:c + 1].astype(np.int64), 1)[:, 0], rtol=1e-5, atol=1e-6)
        assert ties.all()
    assert _nmse(est.predict(X_test), X_test @ W) < 0.5


# -- ITLUMM options ------------------------------------------------------------------------

def test_permuted_partition_is_used_through_the_column_selection():
    A, B = _layer(d=24)
    perm = np.random.default_rng(3).permutation(24)
    est = le.LutMatmul(4, partition="r2", progress=False).fit(A, B)
    cols, bounds = est.subspace_cols_, est.subspace_bounds_
    assert sorted(cols) == list(range(24)) and list(bounds) == list(contiguous(24, 4)[1])
    # every tree splits only on the columns of its own subspace
    for c in range(4):
        assert set(est.split_dims_[c]) <= set(cols[bounds[c]:bounds[c + 1]])
    # the same model on permuted columns: permuting A's columns and B's rows changes nothing
    # but the summation order of the tables P·B (float rounding, carried by the offsets)
    moved = le.LutMatmul(4, partition="r2", progress=False).fit(A[:, perm], B[perm])
    np.testing.assert_array_equal(perm[moved.subspace_cols_], cols)
    np.testing.assert_array_equal(moved.transform(A[:, perm]), est.transform(A))
    np.testing.assert_array_equal(moved.prototypes_, est.prototypes_[:, :, perm])
    np.testing.assert_array_equal(moved.luts_q_, est.luts_q_)
    np.testing.assert_allclose(moved.predict(A[:, perm]), est.predict(A), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective, activation", [("mse", "relu"), ("mse", None),
                                                   ("kl", "softmax")])
def test_itlumm_tables_are_the_optimised_luts(objective, activation):
    from lutengine.lut_opt import optimize_luts
    A, B = _layer()
    bias = np.linspace(-1, 1, B.shape[1]).astype(np.float32)
    base = le.LutMatmul(4, quantize=False, progress=False).fit(A, B, bias=bias)
    est = le.LutMatmul(4, lut_objective=objective, activation=activation, quantize=False,
                       progress=False).fit(A, B, bias=bias)
    expected = optimize_luts(base.transform(A), A, B, bias, base.luts_, objective, activation,
                             progress=False)
    np.testing.assert_array_equal(est.luts_, expected)
    codes = est.transform(A)
    np.testing.assert_allclose(est.predict(A), ref.ref_scan_float(codes, expected, bias),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"lut_objective": "kl"}, r"activation \(with lut_objective='kl'\) must be one of \['softmax'\]"),
    ({"activation": "relu"}, r"activation \(with lut_objective='ridge'\) must be one of \[None\]"),
    ({"lut_objective": "cosine"}, "lut_objective must be one of"),
    ({"lut_lambda": -1.0}, "lut_lambda must be a finite number >= 0"),
    ({"partition": "magic"}, "partition must be one of"),
])
def test_itlumm_options_are_checked(kwargs, match):
    A, B = _layer()
    with pytest.raises(ValueError, match=match):
        le.LutMatmul(4, progress=False, **kwargs).fit(A, B)


# -- recorded errors and atomic fit -------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: le.LutMatmul(6, progress=False),
                                  lambda: le.PQMatmul(6, random_state=0, progress=False)])
def test_training_errors_are_the_nmse_of_both_tables(make, monkeypatch):
    A, B = _layer(n=900)
    bias = np.linspace(-2, 2, B.shape[1])
    est = make().fit(A, B, bias=bias)
    exact = A.astype(np.float64) @ B + bias
    float_tables = ref.ref_scan_float(est.transform(A), est.luts_, bias)
    int8_tables = est.predict(A)
    squared_norm = (exact ** 2).sum()
    assert est.float_nmse_ == pytest.approx(((float_tables - exact) ** 2).sum() / squared_norm,
                                            rel=1e-4)
    assert est.quantization_nmse_ == pytest.approx(
        ((int8_tables - exact) ** 2).sum() / squared_norm, rel=1e-4)
    assert 0 < est.float_nmse_ < 1
    # row chunks (here of a few rows) give the same sums
    monkeypatch.setattr(matmul, "ERROR_CHUNK_VALUES", 5 * (A.shape[1] + B.shape[1]))
    chunked = make().fit(A, B, bias=bias)
    assert chunked.float_nmse_ == pytest.approx(est.float_nmse_, rel=1e-9)
    assert chunked.quantization_nmse_ == pytest.approx(est.quantization_nmse_, rel=1e-9)


def test_quantization_warning_fires_on_a_bad_quantization_only(monkeypatch):
    A, B = _layer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", le.QuantizationWarning)
        est = le.LutMatmul(4, progress=False).fit(A, B)
        # 0/1 columns, one per codebook: exact float tables; int8 rounding below the floor
        binary = np.random.default_rng(0).integers(0, 2, (200, 8)).astype(np.float32)
        exact = le.LutMatmul(8, progress=False).fit(binary, B[:8])
    assert est.quantization_nmse_ <= 2 * est.float_nmse_
    assert exact.float_nmse_ < 1e-12 < exact.quantization_nmse_ < matmul.QUANTIZATION_NMSE_FLOOR

    quantize = _dispatch.lut.quantize_luts

    def coarse(luts):  # a 32x coarser quantum than the kernel's
        luts_q, offsets, scale = quantize(luts)
        return luts_q // 32, offsets, scale / 32

    monkeypatch.setattr(matmul._dispatch.lut, "quantize_luts", coarse)
    with pytest.warns(le.QuantizationWarning, match=r"quantize=False") as caught:
        bad = le.LutMatmul(4, progress=False).fit(A, B)
    assert bad.quantization_nmse_ > 2 * bad.float_nmse_
    message = str(caught[0].message)
    assert f"{bad.quantization_nmse_:.4g}" in message and f"{bad.float_nmse_:.4g}" in message
    with warnings.catch_warnings():  # float tables in use: nothing to warn about
        warnings.simplefilter("error", le.QuantizationWarning)
        le.LutMatmul(4, quantize=False, progress=False).fit(A, B)


@pytest.mark.parametrize("make", [lambda: le.LutMatmul(4, progress=False),
                                  lambda: le.PQMatmul(4, random_state=0, progress=False)])
def test_refit_that_fails_half_way_keeps_the_previous_model(make, monkeypatch):
    A8, B8 = _layer(d=8)
    A16, B16 = _layer(d=16, seed=1)
    est = make().fit(A8, B8)
    before = est.predict(A8)
    state = {name: getattr(est, name) for name in est._state_attrs}

    def fails(*args, **kwargs):
        raise RuntimeError("injected failure")

    # the last stage of fit: everything else of the new model is built by then
    monkeypatch.setattr(matmul._dispatch.lut, "scan_quantized", fails)
    with pytest.raises(RuntimeError, match="injected failure"):
        est.fit(A16, B16)
    monkeypatch.undo()
    assert est.n_features_in_ == 8
    np.testing.assert_array_equal(est.predict(A8), before)
    for name, value in state.items():
        assert getattr(est, name) is value, name


# -- conventions --------------------------------------------------------------------------

def test_layout_dtype_and_thread_count_do_not_change_results(threads):
    A, B = _layer(n=5000, d=40, m=9)
    est = le.LutMatmul(8, progress=False).fit(A, B)
    ref = est.predict(A)
    np.testing.assert_array_equal(est.predict(np.asfortranarray(A)), ref)
    np.testing.assert_array_equal(est.predict(A.astype(np.float64)), ref)
    np.testing.assert_array_equal(est.predict(A.tolist()), ref)
    for n in (1, 2):
        with threads(n):
            np.testing.assert_array_equal(est.predict(A), ref)


def test_refit_with_one_or_two_threads_is_identical(threads):
    A, B = _layer(n=9000, d=24, m=5)
    fits = []
    for n in (1, 2):
        with threads(n):
            fits.append(le.LutMatmul(4, progress=False).fit(A, B))
    np.testing.assert_array_equal(fits[0].prototypes_, fits[1].prototypes_)
    np.testing.assert_array_equal(fits[0].luts_q_, fits[1].luts_q_)


def test_params_and_clone():
    est = le.LutMatmul(ncodebooks=8, quantize=False)
    assert est.get_params()["ncodebooks"] == 8
    assert est.set_params(ncodebooks=4) is est and est.ncodebooks == 4
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(ValueError, match="invalid parameter 'foo'"):
        est.set_params(foo=1)


@pytest.mark.parametrize("make", [
    lambda: le.LutMatmul(6, progress=False), lambda: le.PQMatmul(6, progress=False),
    lambda: le.LutMatmul(6, partition="opq", lut_objective="kl", activation="softmax",
                         random_state=0, progress=False)])
def test_save_load_round_trip(make, tmp_path):
    A, B = _layer()
    est = make().fit(A, B, bias=np.ones(B.shape[1]))
    cls = type(est)
    est.save(tmp_path / "m.npz")
    back = le.load(tmp_path / "m.npz")
    assert type(back) is cls and back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.predict(A), est.predict(A))
    assert (back.float_nmse_, back.quantization_nmse_) == (est.float_nmse_, est.quantization_nmse_)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert "luts_q_" in f.files


# -- errors naming the argument -----------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    A, B = _layer()
    return le.LutMatmul(4, progress=False).fit(A, B), A, B


@pytest.mark.parametrize("A_bad, B_bad, kwargs, exc, match", [
    (np.zeros(5), None, {}, ValueError, "A_train must be 2-D"),
    (np.zeros((0, 37)), None, {}, ValueError, "A_train must not be empty"),
    (np.full((10, 37), np.nan), None, {}, ValueError, "A_train contains NaN"),
    (None, np.zeros((36, 7)), {}, ValueError, "B must have D = 37 rows"),
    (None, np.full((37, 7), np.inf), {}, ValueError, "B contains NaN or Inf"),
    (None, None, {"bias": np.zeros(3)}, ValueError, r"bias must have shape \(7,\)"),
    (np.array([["a"] * 37] * 5), None, {}, TypeError, "A_train must be a real numeric array"),
])
def test_fit_rejects_bad_input(A_bad, B_bad, kwargs, exc, match):
    A, B = _layer()
    with pytest.raises(exc, match=match):
        le.LutMatmul(4, progress=False).fit(A if A_bad is None else A_bad, B if B_bad is None else B_bad, **kwargs)


def test_pq_needs_sixteen_training_rows():
    A, B = _layer(n=15)
    with pytest.raises(ValueError, match="A_train must have at least 16 rows"):
        le.PQMatmul(2, progress=False).fit(A, B)


@pytest.mark.parametrize("C, exc, match", [
    (0, ValueError, "ncodebooks must be between 1 and"),
    (38, ValueError, "ncodebooks must be between 1 and min"),
    (2.5, TypeError, "ncodebooks must be an integer"),
])
def test_fit_rejects_bad_ncodebooks(C, exc, match):
    A, B = _layer()
    with pytest.raises(exc, match=match):
        le.LutMatmul(C, progress=False).fit(A, B)


def test_predict_rejects_bad_input(fitted):
    est, A, _ = fitted
    with pytest.raises(ValueError, match="A has 36 columns, but the estimator was fitted with 37"):
        est.predict(A[:, :36])
    with pytest.raises(ValueError, match="A must be 2-D"):
        est.predict(A[0])
    with pytest.raises(ValueError, match="A must not be empty"):
        est.predict(A[:0])
    bad = A.copy()
    bad[3, est.split_dims_[2, 1]] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        est.predict(bad)
    with pytest.raises(TypeError, match="codes must be a uint8 array"):
        est.predict_codes(est.transform(A).astype(np.int64))
    with pytest.raises(ValueError, match=r"codes must have shape \(n >= 1, 4\)"):
        est.predict_codes(np.zeros((3, 5), np.uint8))


def test_unfitted_estimator_says_so(tmp_path):
    est = le.LutMatmul(4)
    for call in (lambda: est.predict(np.ones((2, 8))), lambda: est.transform(np.ones((2, 8))),
                 lambda: est.save(tmp_path / "x.npz")):
        with pytest.raises(le.NotFittedError, match="not fitted yet"):
            call()


def test_load_rejects_foreign_and_truncated_files(fitted, tmp_path):
    est = fitted[0]
    est.save(tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable lutengine .npz"):
        le.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a lutengine model file"):
        le.load(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        le.load(tmp_path / "missing.npz")
