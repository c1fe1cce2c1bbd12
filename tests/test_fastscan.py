"""4-bit PQ fast-scan MIPS (kernels/fastscan.py, lutengine/fastscan.py, MipsIndex "fastscan")
against the NumPy oracles of tests/reference.py and brute force. SIMD cases skip without
AVX2; the plain scan is the fallback and must give the same integers. Every kernel runs
with 1 and 2 workers."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lutengine as le
from kernels import fastscan as kfs
from kernels import simd
from lutengine import config, fastscan

import reference

needs_avx2 = pytest.mark.skipif(not simd.has_avx2(), reason="the CPU has no AVX2")

#: (AVX2 scan?, workers): every kernel serial and parallel
VARIANTS = [(False, 1), (False, 2), (True, 1), (True, 2)]


def _recall(ids, W, Q, k):
    S = Q.astype(np.float64) @ W.T.astype(np.float64)
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    return float((np.take_along_axis(S, ids, 1) >= kth[:, None] - 1e-6).mean())


def _random_index(rng, N, d, C):
    """Rows sorted by norm with random centroids and codes: kernels' inputs, no k-means."""
    W = (rng.standard_normal((N, d)) * rng.lognormal(0, 1, (N, 1))).astype(np.float32)
    norms = np.linalg.norm(W.astype(np.float64), axis=1)
    order = np.lexsort((np.arange(N), -norms))
    W, norms = np.ascontiguousarray(W[order]), norms[order].astype(np.float32)
    bounds = fastscan.subspace_bounds(d, C)
    centroids = rng.standard_normal((C, 16, int(np.diff(bounds).max()))).astype(np.float32)
    codes = rng.integers(0, 16, (N, C), dtype=np.uint8)
    return W, norms, bounds, centroids, codes


@given(st.integers(1, 100), st.integers(1, 9), st.integers(0, 2**16))
def test_pack_codes_matches_the_reference_layout(N, C, seed):
    codes = np.random.default_rng(seed).integers(0, 16, (N, C), dtype=np.uint8)
    packed = fastscan.pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.flags.c_contiguous
    np.testing.assert_array_equal(packed, reference.ref_pack_codes(codes))


@pytest.mark.parametrize("kernel", [kfs.fastscan_tables_serial, kfs.fastscan_tables_parallel])
@given(nq=st.integers(1, 4), d=st.integers(1, 40), seed=st.integers(0, 2**16),
       spread=st.sampled_from([0.0, 1.0, 1e3]))
def test_tables_match_the_reference_and_bound_the_error(kernel, nq, d, seed, spread):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(1, d + 1))
    bounds = fastscan.subspace_bounds(d, C)
    centroids = rng.standard_normal((C, 16, int(np.diff(bounds).max()))).astype(np.float32)
    Q = (rng.standard_normal((nq, d)) * spread).astype(np.float32)
    qtables = np.empty((nq, C + C % 2, 16), np.uint8)
    offsets, scales = np.empty(nq, np.float32), np.empty(nq, np.float32)
    kernel(Q, centroids, bounds, qtables, offsets, scales, 2)
    ref_q, ref_off, ref_scales = reference.ref_fastscan_tables(Q, centroids, bounds)
    assert np.abs(qtables.astype(int) - ref_q).max() <= 1  # float32 vs float64 rounding
    np.testing.assert_allclose(scales, ref_scales, rtol=1e-5)
    np.testing.assert_allclose(offsets, ref_off, rtol=1e-4, atol=1e-4 * (1 + spread))
    assert not qtables[:, C:].any()
    # a row's sum cannot overflow uint16
    assert (qtables.astype(np.int64).max(axis=2).sum(axis=1) < 2**16).all()
    # dequantised sums are the float sums up to C/2 quanta (plus float32 rounding)
    codes = rng.integers(0, 16, (50, C))
    T = np.stack([Q.astype(np.float64)[:, bounds[c]:bounds[c + 1]]
                  @ centroids[c, :, :bounds[c + 1] - bounds[c]].T for c in range(C)], axis=1)
    exact = sum(T[:, c, codes[:, c]] for c in range(C))  # (nq, 50)
    quantised = sum(qtables[:, c, codes[:, c]].astype(np.float64) for c in range(C))
    approx = quantised / scales[:, None] + offsets[:, None]
    bound = (C / 2 + 1) / scales[:, None] + 1e-4 * (np.abs(T).sum(axis=(1, 2))[:, None] + 1)
    assert (np.abs(approx - exact) <= bound).all()


@pytest.mark.parametrize("uses_simd, nworkers", VARIANTS)
@given(N=st.integers(1, 200), C=st.integers(1, 11), nq=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_scan_matches_the_reference(uses_simd, nworkers, N, C, nq, seed):
    if uses_simd and not simd.has_avx2():
        pytest.skip("the CPU has no AVX2")
    rng = np.random.default_rng(seed)
    packed = fastscan.pack_codes(rng.integers(0, 16, (N, C), dtype=np.uint8))
    qtables = rng.integers(0, 256, (nq, C + C % 2, 16)).astype(np.uint8)
    qtables[:, C:] = 0
    scores = np.empty((nq, packed.shape[0] * 32), np.uint16)
    scan = kfs.fastscan_scan if uses_simd else kfs.fastscan_scan_plain
    scan(packed, qtables, N, scores, nworkers)
    np.testing.assert_array_equal(scores[:, :N], reference.ref_fastscan_scan(packed, qtables, N))


def _search(uses_simd):
    return kfs.fastscan_search if uses_simd else kfs.fastscan_search_plain


def _search_inputs(N, d, C, nq, seed):
    rng = np.random.default_rng(seed)
    W, norms, bounds, centroids, codes = _random_index(rng, N, d, C)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    qtables = np.empty((nq, C + C % 2, 16), np.uint8)
    offsets, scales = np.empty(nq, np.float32), np.empty(nq, np.float32)
    kfs.fastscan_tables_serial(Q, centroids, bounds, qtables, offsets, scales, 1)
    return fastscan.pack_codes(codes), qtables, offsets, scales, norms, W, Q


@given(N=st.integers(1, 150), d=st.integers(1, 12), nq=st.integers(1, 4),
       seed=st.integers(0, 2**16), data=st.data())
def test_search_kernels_match_the_reference_and_each_other(N, d, nq, seed, data):
    C = data.draw(st.integers(1, d))
    rerank = data.draw(st.integers(1, N))
    k = data.draw(st.integers(1, rerank))
    packed, qtables, offsets, scales, norms, W, Q = _search_inputs(N, d, C, nq, seed)
    ref_pos, ref_scores = reference.ref_fastscan_search(packed, N, qtables, offsets, scales,
                                                        norms, W, Q, k, rerank)
    for uses_simd, nworkers in VARIANTS:
        if uses_simd and not simd.has_avx2():
            continue
        pos = np.empty((nq, k), np.int64)
        scores = np.empty((nq, k), np.float32)
        _search(uses_simd)(packed, N, qtables, offsets, scales, norms, W, Q, k, rerank, pos,
                           scores, nworkers)
        np.testing.assert_array_equal(pos, ref_pos, err_msg=f"{uses_simd=} {nworkers=}")
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


@needs_avx2
def test_simd_and_plain_search_are_identical_on_a_larger_set():
    packed, qtables, offsets, scales, norms, W, Q = _search_inputs(5001, 24, 7, 5, 3)
    results = []
    for uses_simd, nworkers in VARIANTS:
        pos = np.empty((5, 20), np.int64)
        scores = np.empty((5, 20), np.float32)
        _search(uses_simd)(packed, 5001, qtables, offsets, scales, norms, W, Q, 20, 300, pos,
                           scores, nworkers)
        results.append((pos, scores))
    for pos, scores in results[1:]:
        np.testing.assert_array_equal(pos, results[0][0])
        np.testing.assert_array_equal(scores, results[0][1])


def _brute(W, Q, k, b=None):
    S = Q.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
    order = np.lexsort((np.broadcast_to(np.arange(W.shape[0]), S.shape), -S), axis=1)[:, :k]
    return order, np.take_along_axis(S, order, 1)


@pytest.mark.parametrize("mode", ["off", pytest.param("on", marks=needs_avx2)])
def test_rerank_of_every_row_is_exact_with_bias_and_bottom_k(monkeypatch, mode):
    monkeypatch.setattr(config, "SIMD", mode)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((500, 21)).astype(np.float32)
    b = rng.standard_normal(500).astype(np.float32)
    Q = rng.standard_normal((6, 21)).astype(np.float32)
    for bias in (None, b):
        index = le.MipsIndex(W, method="fastscan", bias=bias, ncodebooks=5, rerank=10**6,
                             random_state=0)
        for largest in (True, False):
            ids, scores = index.search(Q, 7, largest=largest)
            want, want_scores = _brute(W, Q if largest else -Q, 7,
                                       None if bias is None else (b if largest else -b))
            np.testing.assert_array_equal(ids, want)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    single = index.search(Q[0], 7)  # a 1-D query is a batch of one
    np.testing.assert_array_equal(single[0], index.search(Q[:1], 7)[0])


@needs_avx2
def test_index_results_identical_with_simd_on_and_off(monkeypatch):
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((3001, 32)) * rng.lognormal(0, 1, (3001, 1))).astype(np.float32)
    Q = rng.standard_normal((9, 32)).astype(np.float32)
    index = le.MipsIndex(W, method="fastscan", ncodebooks=11, rerank=50, random_state=0)
    out = {}
    for mode in ("on", "off"):
        monkeypatch.setattr(config, "SIMD", mode)
        out[mode] = index.search(Q, 10), index.search(Q[:1], 10)
    for got, want in zip(out["on"], out["off"]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def _items(rng, N, d, norms):
    W = rng.standard_normal((N, d)).astype(np.float32)
    if norms == "lognormal":
        W *= np.exp(rng.standard_normal((N, 1))).astype(np.float32)
    return W


@pytest.mark.parametrize("norms", ["gaussian", "lognormal"])
def test_recall_on_synthetic_sets(norms):
    """20 000 rows, d = 64, k = 10, default codebooks (24), rerank 400 (2 %): measured
    recall 0.9925 on both (rerank 200: 0.95 / 0.985; rerank 20: 0.57 / 0.85)."""
    rng = np.random.default_rng(5)
    W = _items(rng, 20000, 64, norms)
    Q = rng.standard_normal((40, 64)).astype(np.float32)
    index = le.MipsIndex(W, method="fastscan", rerank=400, random_state=0)
    ids, scores = index.search(Q, 10)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", W[ids], Q), rtol=1e-4, atol=1e-4)
    assert all(len(set(row)) == 10 for row in ids) and np.all(np.diff(scores, axis=1) <= 0)
    high = _recall(ids, W, Q, 10)
    assert high >= 0.95, high
    index.fastscan_rerank = np.int64(20)  # read at search time
    assert _recall(index.search(Q, 10)[0], W, Q, 10) <= high


def test_recall_on_a_trained_mnist_layer(data_root):
    """First layer (784 units, rows with their bias: d = 785) of an MLP trained 2 epochs
    on 10k MNIST rows; 200 test images, top-10 and bottom-10, rerank 50 of the 784 rows:
    measured recall 0.988 / 0.996 (rerank 20: 0.857 / 0.888)."""
    from sklearn.neural_network import MLPClassifier

    X, y = le.datasets.load_mnist("train", data_home=data_root)
    Xte, _ = le.datasets.load_mnist("test", data_home=data_root)
    X = X.reshape(len(X), -1)[:10000].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((784,), max_iter=2, random_state=0).fit(X, y[:10000])
    W = np.ascontiguousarray(mlp.coefs_[0].T, dtype=np.float32)
    b = mlp.intercepts_[0].astype(np.float32)
    Q = np.ascontiguousarray(Xte.reshape(len(Xte), -1)[:200], dtype=np.float32)
    index = le.MipsIndex(W, method="fastscan", bias=b, rerank=50, random_state=0)
    recalls = []
    for largest in (True, False):
        ids, _ = index.search(Q, 10, largest=largest)
        want, _ = _brute(W, Q if largest else -Q, 10, b if largest else -b)
        recalls.append(np.mean([len(set(i) & set(w)) / 10 for i, w in zip(ids, want)]))
    assert min(recalls) >= 0.95, recalls


def test_topklinear_accepts_fastscan():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((300, 16)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    X = rng.standard_normal((4, 16)).astype(np.float32)
    exact = le.TopKLinear(W, b, 5, method="brute")
    layer = le.TopKLinear(W, b, 5, method="fastscan", ncodebooks=4, rerank=300,
                          random_state=0)
    Y, mask = layer(X, return_active=True)
    np.testing.assert_array_equal(mask, exact.active(X))
    np.testing.assert_allclose(Y, exact(X), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((700, 12)).astype(np.float32)
    Q = rng.standard_normal((3, 12)).astype(np.float32)
    index = le.MipsIndex(W, method="fastscan", ncodebooks=5, rerank=40, random_state=0)
    index.save(tmp_path / "f.npz")
    back = le.load(tmp_path / "f.npz")
    assert back.method_ == "fastscan" and int(back.fastscan_rerank) == 40
    for got, want in zip(back.search(Q, 4), index.search(Q, 4)):
        np.testing.assert_array_equal(got, want)


def test_defaults_and_small_inputs():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((5, 128)).astype(np.float32)  # fewer rows than centroids
    index = le.MipsIndex(W, method="fastscan", random_state=0)
    assert index.fastscan_bounds.shape == (48 + 1,) and int(index.fastscan_rerank) == 1000
    ids, _ = index.search(rng.standard_normal((2, 128)).astype(np.float32), 5)
    assert sorted(ids[0]) == list(range(5))  # rerank clamps to N: exact
    same = le.MipsIndex(W, method="fastscan", random_state=0)
    np.testing.assert_array_equal(same.fastscan_packed, index.fastscan_packed)


@pytest.mark.parametrize("options, error, match", [
    ({"ncodebooks": 0}, ValueError, "ncodebooks"),
    ({"ncodebooks": 9}, ValueError, "ncodebooks"),
    ({"ncodebooks": 2.5}, TypeError, "ncodebooks"),
    ({"rerank": 0}, ValueError, "rerank"),
    ({"rerank": "many"}, TypeError, "rerank"),
    ({"candidates": 3}, ValueError, r"method 'fastscan' does not use the options \['candidates'\]"),
    ({"train_rows": True}, TypeError, "train_rows must be an integer"),
])
def test_bad_options_are_named(options, error, match):
    W = np.ones((40, 8), np.float32)
    with pytest.raises(error, match=match):
        le.MipsIndex(W, method="fastscan", **options)


def test_check_state_accepts_a_build_and_names_what_the_kernels_would_misread():
    """The state of a build (also after np.savez) passes; bounds that do not tile the d
    columns, codes for another row count and too few centroids are named."""
    rng = np.random.default_rng(6)
    W = rng.standard_normal((70, 10)).astype(np.float32)
    index = le.MipsIndex(W, method="fastscan", ncodebooks=3, rerank=8, random_state=0)
    state = {key: getattr(index, "fastscan_" + key) for key in fastscan.STATE_KEYS}
    fastscan.check_state(state, 70, 10)
    np.testing.assert_array_equal(state["bounds"], [0, 4, 7, 10])
    for key, value, match in [
        ("bounds", np.array([0, 4, 7, 9], np.int64), "bounds must be subspace_bounds"),
        ("bounds", np.array([0], np.int64), "bounds must be subspace_bounds"),
        ("packed", state["packed"][:2], r"packed must have shape \(3, 2, 32\)"),
        ("centroids", state["centroids"][:, :15], r"centroids must have shape \(3, 16, 4\)"),
        ("rerank", np.int64(0), "rerank must be between 1 and"),
    ]:
        with pytest.raises(ValueError, match=match):
            fastscan.check_state({**state, key: value}, 70, 10)
    with pytest.raises(ValueError, match="packed must have shape"):
        fastscan.check_state(state, 100, 10)  # rows the codes do not cover


def test_default_codebooks_stay_within_the_uint16_scores():
    assert fastscan.default_ncodebooks(128) == 48 and fastscan.default_ncodebooks(1) == 1
    assert fastscan.default_ncodebooks(10**6) == fastscan.MAX_CODEBOOKS == 65534
    with pytest.raises(ValueError, match="ncodebooks must be between 1 and 65534"):
        fastscan.check_options({"ncodebooks": 65535}, 10**6)
