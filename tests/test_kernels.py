"""Every kernel against its NumPy oracle in ``reference.py`` (hypothesis over shapes).

Integer results (codes, quantised tables, scan accumulators, co-occurrence counts)
must match bit for bit; float results to a bound derived from the number of float32
roundings. Parallel variants must give the same bits with 1 and 2 threads as the serial
variant.
"""

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from kernels import encode, lut, onehot, scan, split
from lutengine import _dispatch, datasets

EPS32 = np.finfo(np.float32).eps
EPS64 = np.finfo(np.float64).eps

# shapes: 1, primes, odd sizes, block boundaries, and anything else hypothesis picks
rows = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 31, 32, 33, 97, 257]), st.integers(1, 300))
ncodebooks = st.one_of(st.sampled_from([1, 2, 3, 5, 16, 17, 19, 32, 40]), st.integers(1, 40))
widths = st.one_of(st.sampled_from([1, 2, 3, 7, 10]), st.integers(1, 12))
outputs = st.one_of(st.sampled_from([1, 2, 3, 10, 17, 31, 32, 33, 100]), st.integers(1, 70))
block_rows = st.sampled_from([1, 3, 7, 32, 256, 1024])
seeds = st.integers(0, 2**32 - 1)

variant = pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])


def nthreads():
    """The worker count the dispatcher passes: the current Numba thread count."""
    return numba.get_num_threads()


def pick(module, name, parallel):
    return getattr(module, f"{name}_{'parallel' if parallel else 'serial'}")


def assert_within(actual, expected, bound):
    """``|actual - expected| <= bound`` elementwise, with the worst offender reported."""
    err = np.abs(np.asarray(actual, np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), f"error {err[worst]} > bound {np.broadcast_to(bound, err.shape)[worst]} at {worst}"


# ---------------------------------------------------------------------------------------
# input builders (seeded NumPy; hypothesis chooses shapes, seeds and modes)

def tree_inputs(rng, n, d, c, grid):
    """X (n, d) float32, split_dims (c, 4), heap thresholds (c, 16).

    ``grid``: X and thresholds on a coarse grid, so values equal to thresholds are common
    (they must go left).
    """
    if grid:
        X = (rng.integers(-3, 4, (n, d)) / 2).astype(np.float32)
        thresholds = (rng.integers(-3, 4, (c, 16)) / 2).astype(np.float32)
    else:
        X = rng.standard_normal((n, d)).astype(np.float32)
        thresholds = (0.7 * rng.standard_normal((c, 16))).astype(np.float32)
    split_dims = rng.integers(0, d, (c, 4)).astype(np.int64)
    return X, split_dims, thresholds


def contiguous_bounds(d, c):
    """First ``d % c`` subspaces one column wider (contiguous subspaces, as MADDNESS's)."""
    widths = np.full(c, d // c)
    widths[: d % c] += 1
    return np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)


def pq_inputs(rng, n, c, extra, permute):
    """X on a quarter grid (float32 distances are then exact, ties frequent), the
    partition and zero-padded centroids."""
    d = c + extra
    X = (rng.integers(-8, 9, (n, d)) / 4).astype(np.float32)
    cols = rng.permutation(d).astype(np.int64) if permute else np.arange(d, dtype=np.int64)
    bounds = contiguous_bounds(d, c)
    maxw = int(np.diff(bounds).max())
    centroids = np.zeros((c, 16, maxw), dtype=np.float32)
    for j in range(c):
        w = bounds[j + 1] - bounds[j]
        centroids[j, :, :w] = rng.integers(-8, 9, (16, w)) / 4
    return X, cols, bounds, centroids


def random_codes(rng, n, c):
    return rng.integers(0, 16, (n, c)).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# encode_tree

def fortran(X):
    """The kernel's ``columns_contiguous`` flag for a layout."""
    return X.flags.f_contiguous and not X.flags.c_contiguous


@variant
@given(n=rows, d=widths, c=ncodebooks, seed=seeds, block=block_rows, grid=st.booleans())
def test_encode_tree_matches_oracle(parallel, n, d, c, seed, block, grid):
    X, dims, thr = tree_inputs(np.random.default_rng(seed), n, d, c, grid)
    kernel = pick(encode, "encode_tree", parallel)
    expected = ref.ref_encode_tree(X, dims, thr)
    for layout in (np.ascontiguousarray(X), np.asfortranarray(X)):
        codes = np.full((n, c), 255, dtype=np.uint8)
        assert kernel(layout, dims, thr, codes, block, fortran(layout), nthreads()) == 0
        np.testing.assert_array_equal(codes, expected)


def test_encode_tree_code_is_msb_first_path():
    """One tree, hand-traced: right (1), left (0), right (1), right (1) gives 0b1011."""
    thr = np.zeros((1, 16), dtype=np.float32)
    thr[0, 0] = 0.0      # level 0, root
    thr[0, 2] = 5.0      # level 1, node 1
    thr[0, 5] = -1.0     # level 2, node 2
    thr[0, 7 + 5] = 2.0  # level 3, node 5
    X = np.array([[1.0, 5.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    dims = np.array([[0, 1, 2, 3]], dtype=np.int64)
    assert ref.ref_encode_tree(X, dims, thr).ravel().tolist() == [0b1011, 0]
    for parallel in (False, True):
        codes = np.empty((2, 1), dtype=np.uint8)
        pick(encode, "encode_tree", parallel)(X, dims, thr, codes, 1, False, nthreads())
        assert codes.ravel().tolist() == [0b1011, 0]


@variant
@given(n=rows, c=st.integers(1, 6), seed=seeds, block=block_rows,
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), fortran=st.booleans())
def test_encode_tree_reports_nonfinite_in_split_columns_only(parallel, n, c, seed, block, bad,
                                                             fortran):
    rng = np.random.default_rng(seed)
    d = 4 * c + 3
    X, _, thr = tree_inputs(rng, n, d, c, grid=False)
    dims = rng.permutation(d)[: 4 * c].reshape(c, 4).astype(np.int64)
    unused = np.setdiff1d(np.arange(d), dims)
    row = rng.integers(n)
    kernel = pick(encode, "encode_tree", parallel)
    order = np.asfortranarray if fortran else np.ascontiguousarray

    harmless = X.copy()
    harmless[row, rng.choice(unused)] = np.nan
    codes = np.empty((n, c), dtype=np.uint8)
    assert kernel(order(harmless), dims, thr, codes, block, fortran, nthreads()) == 0
    np.testing.assert_array_equal(codes, ref.ref_encode_tree(harmless, dims, thr))

    poisoned = X.copy()
    poisoned[row, dims[rng.integers(c), rng.integers(4)]] = bad
    assert ref.ref_nonfinite(poisoned, dims)
    assert kernel(order(poisoned), dims, thr, codes, block, fortran, nthreads()) != 0


def test_encode_tree_real_mnist(data_root, threads):
    """Pixel columns are mostly exact zeros and thresholds are taken from the data, so
    many values equal their threshold (they must go left)."""
    if datasets.find_dataset_dir("mnist", data_root) is None:
        pytest.skip("MNIST not found under LUTENGINE_DATA")
    X = datasets.load_mnist("test", data_home=data_root)[0][:3001]
    rng = np.random.default_rng(0)
    dims = rng.choice(np.flatnonzero(X.std(axis=0) > 0.2), (32, 4)).astype(np.int64)
    thr = X[rng.integers(0, X.shape[0], (32, 16)), dims[:, [0] + [1] * 2 + [2] * 4 + [3] * 9]]
    thr = np.ascontiguousarray(thr, dtype=np.float32)
    expected = ref.ref_encode_tree(X, dims, thr)
    assert len(np.unique(expected)) == 16
    for parallel in (False, True):
        for layout, block in ((np.ascontiguousarray(X), 32), (np.asfortranarray(X), 1024)):
            codes = np.empty(expected.shape, dtype=np.uint8)
            with threads(2):
                assert pick(encode, "encode_tree", parallel)(layout, dims, thr, codes, block,
                                                               fortran(layout), nthreads()) == 0
            np.testing.assert_array_equal(codes, expected)


# ---------------------------------------------------------------------------------------
# encode_pq

@variant
@given(n=rows, c=ncodebooks, extra=st.integers(0, 13), seed=seeds, block=block_rows,
       permute=st.booleans())
def test_encode_pq_matches_oracle(parallel, n, c, extra, seed, block, permute):
    X, cols, bounds, centroids = pq_inputs(np.random.default_rng(seed), n, c, extra, permute)
    kernel = pick(encode, "encode_pq", parallel)
    expected = ref.ref_encode_pq(X, cols, bounds, centroids)
    for layout in (np.ascontiguousarray(X), np.asfortranarray(X)):
        codes = np.full((n, c), 255, dtype=np.uint8)
        assert kernel(layout, cols, bounds, centroids, codes, block, nthreads()) == 0
        np.testing.assert_array_equal(codes, expected)


@variant
@given(n=rows, c=st.integers(1, 5), seed=seeds, bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_encode_pq_reports_nonfinite(parallel, n, c, seed, bad):
    rng = np.random.default_rng(seed)
    X, cols, bounds, centroids = pq_inputs(rng, n, c, 3, permute=True)
    X[rng.integers(n), rng.integers(X.shape[1])] = bad
    codes = np.empty((n, c), dtype=np.uint8)
    assert pick(encode, "encode_pq", parallel)(X, cols, bounds, centroids, codes, 7, nthreads()) != 0


# ---------------------------------------------------------------------------------------
# LUT build and quantisation

@given(c=ncodebooks, d=widths, m=outputs, seed=seeds)
def test_build_luts_matches_oracle(c, d, m, seed):
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((c, 16, d)).astype(np.float32)
    B = rng.standard_normal((d, m)).astype(np.float32)
    T = lut.build_luts(P, B)
    assert T.shape == (c, 16, m) and T.dtype == np.float32
    bound = 2 * (d + 1) * EPS32 * np.einsum("ckd,dm->ckm", np.abs(P), np.abs(B), dtype=np.float64)
    assert_within(T, ref.ref_build_luts(P, B), bound)


@st.composite
def lut_tables(draw):
    """float32 (C, 16, M) tables: random scale and shift, one output 25 times larger than
    the others, constant tables, integer tables whose largest range is a power of two (the
    top entry lands on 255.5)."""
    c, m, seed = draw(ncodebooks), draw(outputs), draw(seeds)
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["scaled", "outlier", "constant", "power_of_two_gap"]))
    if kind in ("scaled", "outlier"):
        T = rng.standard_normal((c, 16, m)) * 10.0 ** rng.uniform(-3, 3) + rng.uniform(-50, 50)
        if kind == "outlier":
            T[:, :, rng.integers(m)] *= 25
    elif kind == "constant":
        T = np.broadcast_to(rng.standard_normal((c, 1, m)), (c, 16, m))
    else:
        gap = 2 ** draw(st.integers(0, 6))
        T = rng.integers(0, gap + 1, (c, 16, m)).astype(np.float64)
        T[0, 0, :], T[0, -1, :] = 0, gap  # codebook 0 spans exactly gap in every output
        T += rng.integers(-9, 9, (c, 1, m))
    return np.ascontiguousarray(T, dtype=np.float32)


def quantize(kernel, T):
    C, _, M = T.shape
    q = np.full(T.shape, 7, dtype=np.uint8)
    offsets = np.full((C, M), np.nan, dtype=np.float32)
    scales = np.full(M, np.nan, dtype=np.float32)
    kernel(T, offsets, scales, q)
    return q, offsets, scales


@variant
@given(T=lut_tables())
def test_quantize_luts_matches_oracle(parallel, T):
    q, offsets, scales = quantize(pick(lut, "quantize_luts", parallel), T)
    q_ref, offsets_ref, scales_ref = ref.ref_quantize_luts(T)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(offsets.astype(np.float64), offsets_ref)
    # the spec's 255.5 - 1e-10 rounds to 255.5 in float32, so compare in float32
    np.testing.assert_array_equal(scales, scales_ref.astype(np.float32))
    log2 = np.log2(scales / 255.5)
    assert np.all((log2 == np.round(log2)) | (scales == 1.0))


@variant
@given(T=lut_tables())
def test_quantized_entries_within_half_a_quantum_of_their_output(parallel, T):
    """Each output keeps its own resolution: an entry is within half of that output's
    quantum (``1 / scales[m]`` ≤ its largest range / 127.75) of the float entry, however
    large the other outputs are."""
    q, offsets, scales = quantize(pick(lut, "quantize_luts", parallel), T)
    T64 = T.astype(np.float64)
    restored = q / scales.astype(np.float64) + offsets[:, None, :]
    gaps = (T64.max(axis=1) - T64.min(axis=1)).max(axis=0)
    assert np.all(1 / scales.astype(np.float64) <= np.maximum(gaps / 127.75, 1.0))
    assert_within(restored, T64, 0.5 / scales.astype(np.float64)
                  + 4 * EPS32 * (np.abs(T64) + np.abs(offsets)[:, None, :]))


# ---------------------------------------------------------------------------------------
# scans

def dequantize_inputs(rng, c, m, log_scales=(-8, 8)):
    """Per-output power-of-two scales, offset sums and output bias (float32, M each)."""
    scales = (2.0 ** rng.integers(*log_scales, m) * 255.5).astype(np.float32)
    offset_sums = rng.uniform(-100, 100, m).astype(np.float32)
    out_bias = rng.standard_normal(m).astype(np.float32)
    return scales, offset_sums, out_bias


@variant
@given(n=rows, c=ncodebooks, m=outputs, seed=seeds, block=block_rows, full=st.booleans())
def test_scan_quantized_accumulator_is_exact(parallel, n, c, m, seed, block, full):
    """With scale 1 and no offsets the output is the exact integer sum of the entries."""
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n, c)
    luts_q = np.full((c, 16, m), 255, np.uint8) if full else rng.integers(0, 256, (c, 16, m), np.uint8)
    out = np.full((n, m), np.nan, dtype=np.float32)
    pick(scan, "scan_quantized", parallel)(codes, luts_q, np.ones(m, np.float32),
                                         np.zeros(m, np.float32), out, block, nthreads())
    np.testing.assert_array_equal(out, ref.ref_accumulate(codes, luts_q))


@variant
@pytest.mark.parametrize("c", [16, 17, 255, 256])
def test_scan_quantized_uint16_accumulator_does_not_overflow(parallel, c):
    """All entries 255 at C = 256: the accumulator reaches 256 · 255 = 65280."""
    rng = np.random.default_rng(c)
    n, m = 37, 5
    codes = random_codes(rng, n, c)
    luts_q = np.full((c, 16, m), 255, dtype=np.uint8)
    out = np.empty((n, m), dtype=np.float32)
    pick(scan, "scan_quantized", parallel)(codes, luts_q, np.ones(m, np.float32),
                                         np.zeros(m, np.float32), out, 8, nthreads())
    assert np.all(out == 255 * c)


@variant
@given(n=rows, c=ncodebooks, m=outputs, seed=seeds, block=block_rows)
def test_scan_quantized_dequantises_per_output(parallel, n, c, m, seed, block):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n, c)
    luts_q = rng.integers(0, 256, (c, 16, m), dtype=np.uint8)
    scales, offset_sums, out_bias = dequantize_inputs(rng, c, m)
    out = np.empty((n, m), dtype=np.float32)
    pick(scan, "scan_quantized", parallel)(codes, luts_q,
                                         *_dispatch.lut.dequantization(scales, offset_sums, out_bias),
                                         out, block, nthreads())
    expected = ref.ref_scan_quantized(codes, luts_q, scales, offset_sums, out_bias)
    magnitude = 255.0 * c / scales + np.abs(offset_sums) + np.abs(out_bias)
    assert_within(out, expected, 4 * EPS32 * magnitude)


@given(T=lut_tables(), n=rows, seed=seeds)
def test_quantised_scan_within_half_a_quantum_per_codebook(T, n, seed):
    """quantize_luts then scan_quantized against the float sum of the tables: each output is
    off by at most C/2 of its own quanta, C · gap_m / 255.5 (plus float32 rounding), also
    next to an output 25 times larger."""
    C = T.shape[0]
    codes = random_codes(np.random.default_rng(seed), n, C)
    luts_q, offsets, scales = _dispatch.lut.quantize_luts(T)
    out_bias = np.zeros(T.shape[2], np.float32)
    got = _dispatch.lut.scan_quantized(codes, luts_q, scales,
                                 offsets.sum(axis=0, dtype=np.float64).astype(np.float32),
                                 out_bias)
    exact = ref.ref_scan_float(codes, T, out_bias)
    T64 = T.astype(np.float64)
    gaps = (T64.max(axis=1) - T64.min(axis=1)).max(axis=0)
    terms = (np.abs(T64[np.arange(C)[None, :], codes]).sum(axis=1)
             + np.abs(T64.min(axis=1)).sum(axis=0))
    assert_within(got, exact, C * gaps / 255.5 + 8 * (C + 1) * EPS32 * terms)


@variant
@given(n=rows, c=ncodebooks, m=outputs, seed=seeds, block=block_rows)
def test_scan_float_matches_oracle(parallel, n, c, m, seed, block):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n, c)
    luts = (rng.standard_normal((c, 16, m)) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
    out_bias = rng.standard_normal(m).astype(np.float32)
    out = np.full((n, m), np.nan, dtype=np.float32)
    pick(scan, "scan_float", parallel)(codes, luts, out_bias, out, block)
    terms = np.abs(luts[np.arange(c)[None, :], codes]).astype(np.float64).sum(axis=1) + np.abs(out_bias)
    assert_within(out, ref.ref_scan_float(codes, luts, out_bias), (c + 1) * EPS32 * terms)


# ---------------------------------------------------------------------------------------
# one-hot products

@variant
@given(n=rows, c=ncodebooks, seed=seeds, workers=st.integers(1, 9))
def test_onehot_gram_matches_oracle(parallel, n, c, seed, workers):
    codes = random_codes(np.random.default_rng(seed), n, c)
    gram = pick(onehot, "onehot_gram", parallel)(codes, workers)
    np.testing.assert_array_equal(gram, ref.ref_onehot_gram(codes))


@variant
@given(n=rows, c=ncodebooks, d=st.integers(1, 40), seed=seeds, workers=st.integers(1, 9))
def test_onehot_rowsum_matches_oracle(parallel, n, c, d, seed, workers):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n, c)
    A = rng.standard_normal((n, d)).astype(np.float32)
    rowsum = pick(onehot, "onehot_rowsum", parallel)(codes, A, workers)
    bound = 2 * n * EPS64 * (ref.ref_onehot(codes).T @ np.abs(A.astype(np.float64)))
    assert_within(rowsum, ref.ref_onehot_rowsum(codes, A), bound)


# ---------------------------------------------------------------------------------------
# thread-count invariance: parallel with 1 and 2 threads and serial give the same bits

def case_encode_tree(rng, n):
    X, dims, thr = tree_inputs(rng, n, 9, 7, grid=False)

    def run(kernel):
        codes = np.empty((n, 7), dtype=np.uint8)
        return kernel(X, dims, thr, codes, 16, False, nthreads()), codes
    return encode, "encode_tree", run


def case_encode_pq(rng, n):
    X, cols, bounds, centroids = pq_inputs(rng, n, 5, 4, permute=True)

    def run(kernel):
        codes = np.empty((n, 5), dtype=np.uint8)
        return kernel(X, cols, bounds, centroids, codes, 16, nthreads()), codes
    return encode, "encode_pq", run


def case_quantize_luts(rng, n):
    T = rng.standard_normal((19, 16, n % 23 + 1)).astype(np.float32)
    return lut, "quantize_luts", lambda kernel: quantize(kernel, T)


def case_scan_quantized(rng, n):
    codes = random_codes(rng, n, 19)
    luts_q = rng.integers(0, 256, (19, 16, 6), dtype=np.uint8)
    dequantization = _dispatch.lut.dequantization(*dequantize_inputs(rng, 19, 6))

    def run(kernel):
        out = np.empty((n, 6), dtype=np.float32)
        kernel(codes, luts_q, *dequantization, out, 16, nthreads())
        return (out,)
    return scan, "scan_quantized", run


def case_scan_float(rng, n):
    codes = random_codes(rng, n, 19)
    luts = rng.standard_normal((19, 16, 6)).astype(np.float32)
    out_bias = rng.standard_normal(6).astype(np.float32)

    def run(kernel):
        out = np.empty((n, 6), dtype=np.float32)
        kernel(codes, luts, out_bias, out, 16)
        return (out,)
    return scan, "scan_float", run


def case_onehot_gram(rng, n):
    codes = random_codes(rng, n, 5)
    return onehot, "onehot_gram", lambda kernel: (kernel(codes, nthreads()),)


def case_onehot_rowsum(rng, n):
    codes = random_codes(rng, n, 5)
    A = rng.standard_normal((n, 23)).astype(np.float32)  # column ranges 0..15, 16..22
    return onehot, "onehot_rowsum", lambda kernel: (kernel(codes, A, nthreads()),)


@pytest.mark.parametrize("case", [case_encode_tree, case_encode_pq, case_quantize_luts,
                                  case_scan_quantized, case_scan_float, case_onehot_gram,
                                  case_onehot_rowsum], ids=lambda f: f.__name__[5:])
@given(n=st.one_of(st.sampled_from([1, 17, 97, 1000]), st.integers(1, 700)), seed=seeds)
def test_results_do_not_depend_on_threads(threads, case, n, seed):
    module, name, run = case(np.random.default_rng(seed), n)
    with threads(1):
        one = run(pick(module, name, True))
    with threads(2):
        two = run(pick(module, name, True))
    serial = run(pick(module, name, False))
    for a, b, s in zip(one, two, serial):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, s)


# ---------------------------------------------------------------------------------------
# best_split

@st.composite
def split_buckets(draw):
    """X (float32), the bucket's row ids (a shuffled subset) and a column. Modes: few
    distinct values (ties in values and in losses), continuous, constant split column."""
    n_total, d, seed = draw(st.integers(1, 60)), draw(st.integers(1, 6)), draw(seeds)
    rng = np.random.default_rng(seed)
    mode = draw(st.sampled_from(["ties", "continuous", "constant"]))
    if mode == "continuous":
        X = rng.standard_normal((n_total, d)) * 10.0 ** rng.uniform(-2, 2, d)
    else:
        X = rng.integers(0, 4, (n_total, d)).astype(np.float64)
    dim = draw(st.integers(0, d - 1))
    if mode == "constant":
        X[:, dim] = rng.integers(-3, 3)
    n = draw(st.integers(0, n_total))
    rows = rng.permutation(n_total)[:n].astype(np.int64)
    return np.ascontiguousarray(X, dtype=np.float32), rows, dim


@given(bucket=split_buckets())
def test_best_split_matches_brute_force(bucket):
    X, rows, dim = bucket
    loss, threshold = split.best_split(X, rows, dim)
    loss_ref, threshold_ref, losses = ref.ref_best_split(X, rows, dim)
    scale = float((X[rows].astype(np.float64) ** 2).sum()) + 1.0
    tol = 1e-9 * scale
    assert loss == pytest.approx(loss_ref, abs=tol)
    if losses.size == 0:  # no cut: everything goes left
        assert threshold == threshold_ref
        return
    values = X[rows, dim]
    assert values.min() <= threshold < values.max()
    # the kernel's cut is optimal, and it is the oracle's cut when the optimum is clear
    assert ref.ref_split_loss(X, rows, dim, threshold) == pytest.approx(loss_ref, abs=tol)
    if np.sum(losses <= loss_ref + 1e3 * tol) == 1:
        np.testing.assert_array_equal(values > threshold, values > threshold_ref)
        assert abs(threshold - threshold_ref) <= abs(np.spacing(np.float32(threshold_ref)))


def test_best_split_adjacent_floats_keep_the_cut():
    """Two adjacent float32 values: their midpoint rounds onto one of them; the
    threshold must still separate them."""
    lo = np.float32(1.0)
    hi = np.nextafter(lo, np.float32(2.0))
    X = np.array([[lo], [hi], [lo], [hi]], dtype=np.float32)
    loss, threshold = split.best_split(X, np.arange(4, dtype=np.int64), 0)
    assert lo <= threshold < hi
    assert loss == pytest.approx(0.0, abs=1e-12)


def test_best_split_exact_tie_takes_first_cut():
    """Values 0, 4, 5, 9: cutting after 0 or after 5 both give SSE 14 exactly (in any
    float arithmetic); the first cut in sorted order wins, whatever the row order."""
    X = np.array([[9.0], [0.0], [5.0], [4.0]], dtype=np.float32)
    rows = np.arange(4, dtype=np.int64)
    loss_ref, threshold_ref, losses = ref.ref_best_split(X, rows, 0)
    assert losses.tolist() == [14.0, 16.0, 14.0] and threshold_ref == 2.0
    assert split.best_split(X, rows, 0) == (14.0, 2.0)
    assert split.best_split(X, rows[::-1].copy(), 0) == (14.0, 2.0)
