"""The AVX2 path (kernels/simd, kernels/packed.py) against NumPy oracles.

Primitives: intrinsic == NumPy oracle, bit for bit (the dequantising store == the same
expression in ordinary Numba code). Packed MADDNESS: the encoder against
``ref_encode_tree_packed``; the scan bit-identical to the plain quantised scan
(kernels/scan.py) on odd shapes. Dispatch: ``config.SIMD`` / ``LUTENGINE_SIMD`` and
``LutMatmul.predict`` with SIMD forced on and off. Cases needing AVX2 skip without it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

import lutengine as le
import reference as ref
from kernels import packed, scan, simd
from kernels._flags import FASTMATH
from lutengine import _dispatch, config
from test_kernels import fortran, nthreads, pick, seeds, tree_inputs, variant

needs_avx2 = pytest.mark.skipif(not simd.has_avx2(), reason="the CPU has no AVX2")

# N around the 32-row blocks, odd codebook counts, M = 1 and M not a multiple of 16 or 32
rows = st.one_of(st.sampled_from([1, 2, 31, 32, 33, 63, 65, 97, 257]), st.integers(1, 300))
ncodebooks = st.one_of(st.sampled_from([1, 2, 3, 5, 15, 16, 17, 31, 33, 255, 256]),
                       st.integers(1, 40))
outputs = st.one_of(st.sampled_from([1, 2, 15, 16, 17, 31, 33, 100]), st.integers(1, 70))
block_rows = st.sampled_from([32, 64, 256, 1024])


# ---------------------------------------------------------------------------------------
# primitives: a jitted harness per set, its NumPy twin step by step

@njit(fastmath=set(FASTMATH))
def _run_shuffle(table, codes, acc, repeats, affine, out8, out16, out32):
    """Every byte-shuffle primitive once, results in arrays (compiled with the kernels'
    fast-math flags, which decide how the dequantising multiply-add rounds)."""
    tab = simd.load_table16(table, 3)
    v = simd.load_u8x32(codes, 1)
    low = simd.lookup_u8x32(tab, simd.low_nibbles(v))
    high = simd.lookup_u8x32(tab, simd.high_nibbles(v))
    raw = simd.lookup_u8x32(simd.load_u8x32(table, 0), v)  # any index byte: lanes, bit 7
    simd.store_u8x32(out8, 0, low)
    simd.store_u8x32(out8, 32, high)
    simd.store_u8x32(out8, 64, raw)
    simd.store_u8x32(out8, 96, simd.add_u8x32(v, raw))
    simd.store_u8x32(out8, 128, simd.add_u8x32(simd.zeros_u8x32(), v))
    a = simd.load_u8x32(acc, 0)
    words = odd = simd.zeros_u16x16()
    for _ in range(repeats):  # up to 257 vectors of 255: the byte sums reach 65535
        words = simd.add_words(simd.add_words(words, a), raw)
        odd = simd.add_high_bytes(simd.add_high_bytes(odd, a), raw)
    simd.store_u16x16(out16, 0, words)
    simd.store_u16x16(out16, 16, odd)
    simd.store_u16x16(out16, 32, simd.row_sums_low(words, odd))
    simd.store_u16x16(out16, 48, simd.row_sums_high(words, odd))
    simd.store_dequantized(out32, 3, simd.row_sums_high(words, odd), affine[0], affine[1])


@njit(fastmath=set(FASTMATH))
def _dequantize_in_numba(v, inv_scale, shift):
    """``float32(v) * inv_scale + shift`` as ordinary Numba code with the kernels' flags."""
    out = np.empty(v.shape[0], np.float32)
    for i in range(v.shape[0]):
        out[i] = np.float32(v[i]) * inv_scale + shift
    return out


@njit(fastmath=set(FASTMATH))
def _run_tree(values, out8, out32):
    """The tree-encoding primitives: four tree_steps (nodes 0..15) from x = values[1:9],
    [3:11], [5:13], [7:15] against thresholds values[12:20], narrowed and nibble-packed into
    out8; the poison of values[0:16] and of values[16:24] into out32."""
    table = simd.load_f32x8(values, 12)
    n1 = simd.tree_step(simd.zeros_i32x8(), simd.load_f32x8(values, 1), table)
    n2 = simd.tree_step(n1, simd.load_f32x8(values, 3), table)
    n3 = simd.tree_step(n2, simd.load_f32x8(values, 5), table)
    n4 = simd.tree_step(n3, simd.load_f32x8(values, 7), table)
    simd.store_u8x32(out8, 0, simd.narrow_u8x32(n1, n2, n3, n4))
    simd.store_u8x32(out8, 32, simd.pack_nibbles(simd.narrow_u8x32(n4, n3, n2, n1),
                                                 simd.narrow_u8x32(n2, n4, n1, n3)))
    finite = simd.add_times_zero(simd.add_times_zero(simd.zeros_f32x8(),
                                                     simd.load_f32x8(values, 0)),
                                 simd.load_f32x8(values, 8))
    out32[0] = simd.sum_f32x8(finite)
    out32[1] = simd.sum_f32x8(simd.add_times_zero(finite, simd.load_f32x8(values, 16)))


def _reference_tree_run(values, out8, out32):
    table = ref.ref_load_f32x8(values, 12)
    nodes = [ref.ref_zeros_i32x8()]
    for at in (1, 3, 5, 7):
        nodes.append(ref.ref_tree_step(nodes[-1], ref.ref_load_f32x8(values, at), table))
    n1, n2, n3, n4 = nodes[1:]
    out8[:32] = ref.ref_narrow_u8x32(n1, n2, n3, n4)
    out8[32:] = ref.ref_pack_nibbles(ref.ref_narrow_u8x32(n4, n3, n2, n1),
                                     ref.ref_narrow_u8x32(n2, n4, n1, n3))
    finite = ref.ref_add_times_zero(ref.ref_add_times_zero(ref.ref_zeros_f32x8(),
                                                           ref.ref_load_f32x8(values, 0)),
                                    ref.ref_load_f32x8(values, 8))
    out32[0] = ref.ref_sum_f32x8(finite)
    out32[1] = ref.ref_sum_f32x8(ref.ref_add_times_zero(finite, ref.ref_load_f32x8(values, 16)))


def _tree_outputs(run, seed, nonfinite):
    """Outputs of a tree harness; values[16:24] hold ``nonfinite`` at a random place."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(24).astype(np.float32)
    values[rng.integers(16, 24)] = nonfinite
    out8, out32 = np.zeros(64, np.uint8), np.zeros(2, np.float32)
    run(values, out8, out32)
    return out8, out32


def _reference_run(table, codes, acc, repeats, affine, out8, out16, out32):
    tab = ref.ref_load_table16(table, 3)
    v = ref.ref_load_u8x32(codes, 1)
    low = ref.ref_lookup_u8x32(tab, ref.ref_low_nibbles(v))
    high = ref.ref_lookup_u8x32(tab, ref.ref_high_nibbles(v))
    raw = ref.ref_lookup_u8x32(ref.ref_load_u8x32(table, 0), v)
    for k, x in enumerate((low, high, raw, ref.ref_add_u8x32(v, raw),
                           ref.ref_add_u8x32(ref.ref_zeros_u8x32(), v))):
        ref.ref_store_u8x32(out8, 32 * k, x)
    a = ref.ref_load_u8x32(acc, 0)
    words = odd = ref.ref_zeros_u16x16()
    for _ in range(repeats):
        words = ref.ref_add_words(ref.ref_add_words(words, a), raw)
        odd = ref.ref_add_high_bytes(ref.ref_add_high_bytes(odd, a), raw)
    ref.ref_store_u16x16(out16, 0, words)
    ref.ref_store_u16x16(out16, 16, odd)
    rows = np.concatenate([ref.ref_row_sums_low(words, odd), ref.ref_row_sums_high(words, odd)])
    ref.ref_store_u16x16(out16, 32, rows[:16])
    ref.ref_store_u16x16(out16, 48, rows[16:])
    # the byte sums themselves, independently of the accumulators
    np.testing.assert_array_equal(rows, repeats * (a.astype(np.int64) + raw))
    ref.ref_store_dequantized(out32, 3, rows[16:], *affine)


def _affine(seed):
    """1 / scale and shift of the dequantising store."""
    return (np.random.default_rng(seed + 1).standard_normal(2) * [0.01, 1]).astype(np.float32)


def _primitive_outputs(run, seed, repeats):
    rng = np.random.default_rng(seed)
    inputs = (rng.integers(0, 256, 40, dtype=np.uint8), rng.integers(0, 256, 40, dtype=np.uint8),
              rng.integers(0, 256, 32, dtype=np.uint8), repeats, _affine(seed))
    outputs = (np.zeros(160, np.uint8), np.zeros(64, np.uint16), np.zeros((2, 13), np.float32))
    run(*inputs, *outputs)
    return outputs


#: how many times the harness adds its two vectors: 0, small, and up to the uint16 limit
repeats = st.sampled_from([0, 1, 2, 16, 128])


@needs_avx2
@given(seed=seeds, repeats=repeats)
def test_shuffle_intrinsics_match_oracle(seed, repeats):
    got8, got16, got32 = _primitive_outputs(_run_shuffle, seed, repeats)
    expected8, expected16, expected32 = _primitive_outputs(_reference_run, seed, repeats)
    np.testing.assert_array_equal(got8, expected8)
    np.testing.assert_array_equal(got16, expected16)
    got32, expected32 = got32.reshape(-1), expected32.reshape(-1)
    inv_scale, shift = _affine(seed)
    # out32[3:19] holds out16[48:] dequantised: the same bits as the expression in Numba ...
    np.testing.assert_array_equal(got32[3:19], _dequantize_in_numba(got16[48:], inv_scale, shift))
    # ... which may fuse the multiply-add (fast-math "contract"), NumPy does not: the two
    # differ by at most a rounding of each term
    terms = np.abs(got16[48:].astype(np.float32) * inv_scale) + np.abs(shift)
    assert np.all(np.abs(got32[3:19] - expected32[3:19]) <= 2 * np.finfo(np.float32).eps * terms)
    np.testing.assert_array_equal(np.delete(got32, range(3, 19)), 0)


nonfinite_values = st.sampled_from([np.nan, np.inf, -np.inf, 1.0])


@needs_avx2
@given(seed=seeds, nonfinite=nonfinite_values)
def test_tree_intrinsics_match_oracle(seed, nonfinite):
    for got, expected in zip(_tree_outputs(_run_tree, seed, nonfinite),
                             _tree_outputs(_reference_tree_run, seed, nonfinite)):
        np.testing.assert_array_equal(got, expected)


def test_cpu_features_are_llvm_names():
    features = simd.cpu_features()
    assert isinstance(features, frozenset)
    assert simd.has_avx2() == ("avx2" in features)
    assert simd.has_avx512bw() == ("avx512bw" in features)


# ---------------------------------------------------------------------------------------
# packed MADDNESS

@needs_avx2
@variant
@given(n=rows, c=ncodebooks, seed=seeds, block=block_rows, grid=st.booleans())
def test_encode_tree_packed_matches_oracle(parallel, n, c, seed, block, grid):
    X, dims, thr = tree_inputs(np.random.default_rng(seed), n, 11, c, grid)
    expected = ref.ref_encode_tree_packed(X, dims, thr)
    kernel = pick(packed, "encode_tree_packed", parallel)
    for layout in (np.ascontiguousarray(X), np.asfortranarray(X)):
        codes = np.full(expected.shape, 255, dtype=np.uint8)
        assert kernel(layout, dims, thr, codes, block, fortran(layout), nthreads()) == 0
        np.testing.assert_array_equal(codes, expected)


@needs_avx2
@variant
@given(fortran=st.booleans(), bad=st.sampled_from([np.nan, np.inf]), seed=seeds)
def test_encode_tree_packed_reports_nonfinite(parallel, fortran, bad, seed):
    rng = np.random.default_rng(seed)
    X, dims, thr = tree_inputs(rng, 70, 9, 3, grid=False)
    X[rng.integers(70), dims[rng.integers(3), rng.integers(4)]] = bad
    codes = np.empty((3, 2, 32), dtype=np.uint8)
    layout = np.asfortranarray(X) if fortran else X
    assert pick(packed, "encode_tree_packed", parallel)(layout, dims, thr, codes, 32, fortran,
                                                       nthreads()) != 0


@needs_avx2
@variant
@given(n=rows, c=ncodebooks, m=outputs, seed=seeds, block=block_rows)
def test_scan_quantized_packed_bit_identical_to_plain_scan(parallel, n, c, m, seed, block):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (n, c), dtype=np.uint8)
    luts_q = rng.integers(0, 256, (c, 16, m), dtype=np.uint8)
    scales = rng.uniform(0.01, 4.0, m).astype(np.float32)
    offset_sums = rng.standard_normal(m).astype(np.float32)
    out_bias = rng.standard_normal(m).astype(np.float32)
    inv_scale, shift = _dispatch.lut.dequantization(scales, offset_sums, out_bias)
    expected = np.empty((n, m), dtype=np.float32)
    scan.scan_quantized_serial(codes, luts_q, inv_scale, shift, expected, 256, 1)
    got_t = np.full((m, n), np.nan, dtype=np.float32)  # the kernel writes the transpose
    pick(packed, "scan_quantized_packed", parallel)(ref.ref_pack_codes(codes), luts_q, inv_scale,
                                                  shift, got_t, block, nthreads())
    got = got_t.T
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    oracle = ref.ref_scan_quantized_packed(ref.ref_pack_codes(codes), n, luts_q, scales,
                                         offset_sums, out_bias)
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-4 * (1 + np.abs(oracle).max()))


@needs_avx2
def test_scan_quantized_packed_two_threads_same_bits(threads):
    rng = np.random.default_rng(3)
    codes = ref.ref_pack_codes(rng.integers(0, 16, (3001, 19), dtype=np.uint8))
    luts_q = rng.integers(0, 256, (19, 16, 37), dtype=np.uint8)
    scales = rng.uniform(0.1, 2.0, 37).astype(np.float32)
    offset_sums = rng.standard_normal(37).astype(np.float32)
    with threads(2):
        parallel = _dispatch.lut.scan_quantized_packed(codes, 3001, luts_q, scales, offset_sums,
                                                 np.zeros(37))
    with threads(1):
        serial = _dispatch.lut.scan_quantized_packed(codes, 3001, luts_q, scales, offset_sums,
                                               np.zeros(37))
    np.testing.assert_array_equal(parallel, serial)


# ---------------------------------------------------------------------------------------
# dispatch

@pytest.mark.parametrize("mode, expected", [("off", False), ("auto", simd.has_avx2())])
def test_use_simd_modes(monkeypatch, mode, expected):
    monkeypatch.setattr(config, "SIMD", mode)
    assert _dispatch.use_simd() is expected


@needs_avx2
def test_use_simd_on(monkeypatch):
    monkeypatch.setattr(config, "SIMD", "on")
    assert _dispatch.use_simd() is True


def test_simd_on_without_avx2_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(simd, "has_avx2", lambda: False)
    monkeypatch.setattr(config, "SIMD", "on")
    with pytest.raises(RuntimeError, match="no AVX2"):
        _dispatch.use_simd()
    monkeypatch.setattr(config, "SIMD", "auto")
    assert _dispatch.use_simd() is False


def test_unknown_simd_mode_is_rejected(monkeypatch):
    monkeypatch.setattr(config, "SIMD", "yes")
    with pytest.raises(ValueError, match="auto"):
        _dispatch.use_simd()


def test_environment_variable_sets_the_mode():
    env = dict(os.environ, LUTENGINE_SIMD="off")
    result = subprocess.run([sys.executable, "-c", "from lutengine import config; "
                             "print(config.SIMD)"], env=env, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "off"


@pytest.fixture(scope="module")
def fitted_models():
    """LutMatmul fitted at odd codebook counts and output widths (M = 1 among them)."""
    rng = np.random.default_rng(7)
    A = np.maximum(rng.standard_normal((400, 24)), 0).astype(np.float32)
    models = []
    for c, m in ((1, 1), (3, 5), (16, 33), (17, 2)):
        B = rng.standard_normal((24, m)).astype(np.float32)
        models.append(le.LutMatmul(ncodebooks=c, progress=False).fit(A, B))
    return models


@needs_avx2
@given(n=rows, seed=seeds, fortran=st.booleans())
def test_predict_same_bits_with_simd_on_and_off(fitted_models, n, seed, fortran):
    rng = np.random.default_rng(seed)
    A = np.maximum(rng.standard_normal((n, 24)), 0).astype(np.float32)
    A = np.asfortranarray(A) if fortran else A
    for model in fitted_models:
        results = {}
        for mode in ("on", "off"):
            previous, config.SIMD = config.SIMD, mode
            try:
                results[mode] = model.predict(A)
            finally:
                config.SIMD = previous
        np.testing.assert_array_equal(results["on"], results["off"])
        np.testing.assert_array_equal(results["on"], model.predict_codes(model.transform(A)))


@needs_avx2
def test_predict_with_simd_rejects_nonfinite(monkeypatch, fitted_models):
    monkeypatch.setattr(config, "SIMD", "on")
    A = np.zeros((40, 24), dtype=np.float32)
    A[:, :] = np.nan
    with pytest.raises(ValueError):
        fitted_models[2].predict(A)
