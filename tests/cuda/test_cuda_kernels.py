"""The kernels.cuda twins against the CPU kernels and the NumPy oracles."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from lutengine import LutMatmul, MipsIndex, PQMatmul, TopKLinear, _cuda, _dispatch, h2alsh

cuda = pytest.importorskip("numba.cuda")

FEW = settings(max_examples=4)


def _grid_values(rng, shape, step=8, span=2):
    """float32 multiples of 1/step in [-span, span]: every float64 sum of their products
    is exact, so dot products and norms cannot depend on the summation order."""
    return (rng.integers(-span * step, span * step + 1, shape) / step).astype(np.float32)


def _tree_state(rng, D, C):
    split_dims = rng.integers(0, D, (C, 4)).astype(np.int64)
    thresholds = rng.normal(0, 0.5, (C, 16)).astype(np.float32)
    return split_dims, thresholds


@FEW
@given(N=st.sampled_from([1, 7, 13]), D=st.integers(1, 9), C=st.sampled_from([1, 3, 16, 64]),
       fortran=st.booleans(), seed=st.integers(0, 2**16))
def test_encode_matches_cpu_and_reference(N, D, C, fortran, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype(np.float32)
    X = np.asfortranarray(X) if fortran else X
    split_dims, thresholds = _tree_state(rng, D, C)
    encode = _cuda._kernels()[0]
    codes = cuda.device_array((N, C), dtype=np.uint8)
    flag = cuda.to_device(np.zeros(1, np.int32))
    encode.encode_tree[_cuda._grid(N * C)](cuda.to_device(X), cuda.to_device(split_dims),
                                           cuda.to_device(thresholds), codes, flag)
    expected, nonfinite = _dispatch.lut.encode_tree(X, split_dims, thresholds)
    np.testing.assert_array_equal(codes.copy_to_host(), expected)
    np.testing.assert_array_equal(expected, reference.ref_encode_tree(X, split_dims, thresholds))
    assert flag.copy_to_host()[0] == nonfinite == 0


def test_encode_flags_nonfinite_and_sends_nan_left():
    X = np.zeros((5, 3), np.float32)
    X[2, 1] = np.nan
    split_dims = np.ones((2, 4), np.int64)
    thresholds = np.full((2, 16), -1.0, np.float32)
    codes = cuda.device_array((5, 2), dtype=np.uint8)
    flag = cuda.to_device(np.zeros(1, np.int32))
    _cuda._kernels()[0].encode_tree[2, 4](cuda.to_device(X), cuda.to_device(split_dims),
                                          cuda.to_device(thresholds), codes, flag)
    assert flag.copy_to_host()[0] == 1
    assert codes.copy_to_host()[2].tolist() == [0, 0]  # NaN > t is false: always left
    assert codes.copy_to_host()[0].tolist() == [15, 15]


def _scan_inputs(rng, N, C, M):
    codes = rng.integers(0, 16, (N, C)).astype(np.uint8)
    luts_q = rng.integers(0, 256, (C, 16, M)).astype(np.uint8)
    scales = rng.uniform(0.2, 5.0, M).astype(np.float32)  # one per output
    offset_sums = rng.normal(0, 10, M).astype(np.float32)
    out_bias = rng.normal(0, 3, M).astype(np.float32)
    return codes, luts_q, scales, offset_sums, out_bias


def _cuda_scan(codes, luts_q, scales, offset_sums, out_bias):
    out = _cuda.scan_quantized(cuda.to_device(codes), cuda.to_device(luts_q),
                             _dispatch.lut.dequantization(scales, offset_sums, out_bias))
    return out.copy_to_host()


@FEW
@given(N=st.sampled_from([1, 5, 9]), C=st.sampled_from([1, 3, 16, 21, 64]),
       M=st.sampled_from([1, 2, 7, 15, 37, 64]), seed=st.integers(0, 2**16))
def test_scan_bit_identical_to_cpu(N, C, M, seed):
    """Every width M: the CPU's scalar and vectorised columns and the GPU compute the same
    single multiply-add."""
    args = _scan_inputs(np.random.default_rng(seed), N, C, M)
    got = _cuda_scan(*args)
    np.testing.assert_array_equal(got, _dispatch.lut.scan_quantized(*args))
    np.testing.assert_allclose(got, reference.ref_scan_quantized(*args), rtol=1e-5, atol=1e-4)


def test_scan_wide_outputs_match_the_fused_formula_exactly():
    """Any M: exactly fma(float32(acc), 1/scales[m], shift[m]) with the oracle's integer
    sums and the dispatcher's per-output scale and shift, and the CPU to the bit."""
    rng = np.random.default_rng(3)
    codes, luts_q, scales, offset_sums, out_bias = args = _scan_inputs(rng, 3, 5, 37)
    got = _cuda_scan(*args)
    acc = reference.ref_accumulate(codes, luts_q).astype(np.float64)
    inv_scale, shift = _dispatch.lut.dequantization(scales, offset_sums, out_bias)
    fused = acc * inv_scale.astype(np.float64) + shift.astype(np.float64)
    np.testing.assert_array_equal(got, fused.astype(np.float32))
    np.testing.assert_array_equal(got, _dispatch.lut.scan_quantized(*args))


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((120, 11)).astype(np.float32)
    B = rng.standard_normal((11, 5)).astype(np.float32)
    return LutMatmul(ncodebooks=3, progress=False).fit(A, B), A


def test_predict_host_and_device_inputs(fitted):
    est, A = fitted
    X = A[:9]
    expected = est.predict(X)
    got = est.predict(X, device="cuda")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    on_device = est.predict(cuda.to_device(np.asfortranarray(X)), device="auto")
    assert _cuda.is_device_array(on_device)  # stays on the device, no host round trip
    np.testing.assert_array_equal(on_device.copy_to_host(), expected)
    np.testing.assert_array_equal(est.transform(X, device="cuda"), est.transform(X))


def test_device_state_is_moved_once_and_refreshed_on_refit(fitted):
    est, A = fitted
    est.predict(A[:2], device="cuda")
    first = est._device_state[1]
    est.predict(A[:2], device="cuda")
    assert est._device_state[1] is first
    refit = LutMatmul(ncodebooks=3, progress=False).fit(A, np.ones((11, 5), np.float32))
    refit._device_state = est._device_state  # stale arrays from another fit
    np.testing.assert_array_equal(refit.predict(A[:3], device="cuda"), refit.predict(A[:3]))
    assert refit._device_state[1] is not first


def test_device_input_errors(fitted):
    est, A = fitted
    with pytest.raises(TypeError, match="A on the GPU must be float32"):
        est.predict(cuda.to_device(A[:3].astype(np.float64)), device="cuda")
    with pytest.raises(ValueError, match="A has 2 columns"):
        est.predict(cuda.to_device(np.ascontiguousarray(A[:3, :2])), device="cuda")
    bad = A[:4].copy()
    bad[1, :] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        est.predict(cuda.to_device(bad), device="cuda")


def test_unsupported_estimators_name_the_alternative(fitted):
    _, A = fitted
    B = np.ones((11, 2), np.float32)
    with pytest.raises(ValueError, match="quantize=True"):
        LutMatmul(ncodebooks=2, quantize=False, progress=False).fit(A, B).predict(
            A[:2], device="cuda")
    with pytest.raises(ValueError, match="LutMatmul only"):
        PQMatmul(ncodebooks=2, progress=False).fit(A, B).predict(A[:2], device="cuda")


def _sorted_rows(W):
    norms = np.linalg.norm(W.astype(np.float64), axis=1)
    order = np.lexsort((np.arange(W.shape[0]), -norms))
    return np.ascontiguousarray(W[order]), norms[order].astype(np.float32)


@FEW
@given(N=st.sampled_from([41, 77]), d=st.integers(1, 6), k=st.sampled_from([1, 4]),
       scan_threshold=st.sampled_from([0, 12]), nq=st.sampled_from([1, 5]),
       seed=st.integers(0, 2**16))
def test_h2alsh_kernel_equals_cpu(N, d, k, scan_threshold, nq, seed):
    """Indexed rings (QALSH with virtual rehashing) and scanned rings: ids and scores equal."""
    rng = np.random.default_rng(seed)
    W, norms = _sorted_rows(_grid_values(rng, (N, d)) * rng.integers(1, 4, (N, 1)))
    Q = _grid_values(rng, (nq, d))
    state = h2alsh.build(W, norms, max_ring=30, scan_threshold=scan_threshold, candidates=5,
                         rng=seed)
    index = MipsIndex(W, method="brute")  # a shell holding the sorted rows and the state
    index.rows_, index.norms_, index.order_ = W, norms, np.arange(N, dtype=np.int64)
    index.method_, index.n_features_ = "h2alsh", d
    for key, value in state.items():
        setattr(index, "h2alsh_" + key, value)
    expected = h2alsh.search(state, W, norms, Q, k, 1)
    ids, scores = _cuda.search(index, Q, k, largest=True)
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(scores, expected[1])


def test_h2alsh_exact_when_every_ring_is_scanned():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((60, 4)).astype(np.float32)
    Q = rng.standard_normal((3, 4)).astype(np.float32)
    index = MipsIndex(W, method="h2alsh", random_state=0)  # 60 rows < scan_threshold
    ids, scores = index.search(Q, 3, device="cuda")
    ref_pos, ref_scores = reference.ref_h2alsh_search(index.rows_, Q, 3)
    np.testing.assert_array_equal(ids, index.order_[ref_pos])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)


def test_search_device_queries_and_bias():
    rng = np.random.default_rng(1)
    W = _grid_values(rng, (50, 5))
    bias = _grid_values(rng, 50)
    Q = _grid_values(rng, (4, 5))
    index = MipsIndex(W, method="h2alsh", bias=bias, scan_threshold=10, candidates=5,
                      max_ring=20, random_state=0)
    for largest in (True, False):
        expected = index.search(Q, 3, largest=largest)
        ids, scores = index.search(cuda.to_device(Q), 3, largest=largest, device="auto")
        assert _cuda.is_device_array(ids) and _cuda.is_device_array(scores)
        np.testing.assert_array_equal(ids.copy_to_host(), expected[0])
        np.testing.assert_array_equal(scores.copy_to_host(), expected[1])
    with pytest.raises(ValueError, match="Q contains NaN"):
        index.search(cuda.to_device(np.full((1, 5), np.nan, np.float32)), 3, device="cuda")
    with pytest.raises(ValueError, match="method='h2alsh' only.*'brute'"):
        MipsIndex(W, method="brute").search(Q, 3, device="cuda")


def test_topk_linear_on_the_device():
    rng = np.random.default_rng(2)
    W = _grid_values(rng, (40, 6))
    b = _grid_values(rng, 40)
    X = _grid_values(rng, (3, 6))
    layer = TopKLinear(W, b, k=3, scan_threshold=10, candidates=5, max_ring=20,
                       random_state=0)
    Y, active = layer(X, return_active=True)
    Y_gpu, active_gpu = layer(X, return_active=True, device="cuda")
    np.testing.assert_array_equal(active_gpu, active)
    np.testing.assert_array_equal(Y_gpu, Y)  # grid values: every float32 sum is exact
    on_device = layer(cuda.to_device(X), device="auto")
    np.testing.assert_array_equal(on_device.copy_to_host(), Y)


@pytest.mark.runs_without_cuda
@pytest.mark.parametrize("bad", ["gpu", None, "CUDA"])
def test_bad_device_names_the_argument(fitted_cpu, bad):
    est, A = fitted_cpu
    with pytest.raises(ValueError, match="device must be one of"):
        est.predict(A[:2], device=bad)
    with pytest.raises(ValueError, match="device must be one of"):
        MipsIndex(A, method="brute").search(A[:1], 1, device=bad)


@pytest.fixture(scope="module")
def fitted_cpu():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 6)).astype(np.float32)
    return LutMatmul(ncodebooks=2, progress=False).fit(A, np.ones((6, 2), np.float32)), A


@pytest.mark.runs_without_cuda
def test_auto_stays_on_the_cpu_without_a_gpu(fitted_cpu, monkeypatch):
    est, A = fitted_cpu
    monkeypatch.setattr(_cuda, "gpu_present", lambda: False)
    assert _cuda.resolve("auto", A) == "cpu"
    np.testing.assert_array_equal(est.predict(A[:3], device="auto"), est.predict(A[:3]))


def test_error_without_gpu_or_simulator(fitted_cpu, monkeypatch):
    est, A = fitted_cpu
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no usable NVIDIA GPU.*NUMBA_ENABLE_CUDASIM=1"):
        est.predict(A[:2], device="cuda")


@pytest.mark.runs_without_cuda
def test_error_without_numba_cuda(fitted_cpu, monkeypatch):
    est, A = fitted_cpu
    import numba
    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    with pytest.raises(ImportError, match=r"pip install lutengine\[cuda\]"):
        est.predict(A[:2], device="cuda")
    assert _cuda.resolve("auto", A) == "cpu"
