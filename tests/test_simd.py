"""The AVX2 path (kernels/simd.py, kernels/packed.py) against its plain twins and oracles.

Primitives: intrinsic == plain twin == NumPy oracle, bit for bit. Packed MADDNESS: the
encoder against ``ref_encode_tree_packed``; the scan bit-identical to the plain averaged
scan (kernels/scan.py) on odd shapes. Dispatch: ``config.SIMD`` / ``LUTENGINE_SIMD`` and
``LutMatmul.predict`` with SIMD forced on and off. Cases needing AVX2 skip without it.
"""

import os
import subprocess
import sys
import types

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
# primitives: one jitted harness per set (intrinsics or plain twins), same code

def _harness(s):
    """A jitted function running every primitive of namespace ``s`` once, results in arrays
    (compiled with the kernels' fast-math flags, which decide how the dequantising
    multiply-add rounds)."""
    @njit(fastmath=set(FASTMATH))
    def run(table, codes, acc, weight, affine, out8, out16, out32):
        tab = s.load_table16(table, 3)
        v = s.load_u8x32(codes, 1)
        low = s.lookup_u8x32(tab, s.low_nibbles(v))
        high = s.lookup_u8x32(tab, s.high_nibbles(v))
        raw = s.lookup_u8x32(s.load_u8x32(table, 0), v)  # any index byte: lanes, bit 7
        s.store_u8x32(out8, 0, low)
        s.store_u8x32(out8, 32, high)
        s.store_u8x32(out8, 64, raw)
        s.store_u8x32(out8, 96, s.average_u8x32(low, raw))
        s.store_u8x32(out8, 128, s.add_u8x32(v, raw))
        s.store_u8x32(out8, 160, s.add_u8x32(s.zeros_u8x32(), v))
        a = s.load_u8x32(acc, 0)
        s.store_u16x16(out16, 0, s.add_scaled_u16x16(s.zeros_u16x16(), s.widen_low(a), 1))
        s.store_u16x16(out16, 16, s.add_scaled_u16x16(s.widen_high(v), s.widen_high(a), weight))
        s.store_dequantized(out32, 3, s.add_scaled_u16x16(s.widen_high(v), s.widen_high(a), weight),
                            affine[0], affine[1])
        s.store_dequantized(out32, 19, low, affine[0], affine[1])
    return run


#: the plain twins under the intrinsics' names (a module, so jitted code can read it)
_PLAIN = types.ModuleType("plain_twins")
for _name in ("load_table16", "load_u8x32", "lookup_u8x32", "low_nibbles", "high_nibbles",
              "store_u8x32", "average_u8x32", "add_u8x32", "zeros_u8x32", "zeros_u16x16",
              "widen_low", "widen_high", "add_scaled_u16x16", "store_u16x16",
              "store_dequantized", "load_f32x8", "zeros_f32x8", "zeros_i32x8", "tree_step",
              "add_times_zero", "sum_f32x8", "narrow_u8x32", "pack_nibbles"):
    setattr(_PLAIN, _name, getattr(simd, _name + "_plain"))


def _tree_harness(s):
    """The tree-encoding primitives of namespace ``s``: four tree_steps (nodes 0..15) from
    x = values[1:9], [3:11], [5:13], [7:15] against thresholds values[12:20], narrowed and
    nibble-packed into out8; the poison of values[0:16] and of values[16:24] into out32."""
    @njit(fastmath=set(FASTMATH))
    def run(values, out8, out32):
        table = s.load_f32x8(values, 12)
        n1 = s.tree_step(s.zeros_i32x8(), s.load_f32x8(values, 1), table)
        n2 = s.tree_step(n1, s.load_f32x8(values, 3), table)
        n3 = s.tree_step(n2, s.load_f32x8(values, 5), table)
        n4 = s.tree_step(n3, s.load_f32x8(values, 7), table)
        s.store_u8x32(out8, 0, s.narrow_u8x32(n1, n2, n3, n4))
        s.store_u8x32(out8, 32, s.pack_nibbles(s.narrow_u8x32(n4, n3, n2, n1),
                                               s.narrow_u8x32(n2, n4, n1, n3)))
        finite = s.add_times_zero(s.add_times_zero(s.zeros_f32x8(), s.load_f32x8(values, 0)),
                                  s.load_f32x8(values, 8))
        out32[0] = s.sum_f32x8(finite)
        out32[1] = s.sum_f32x8(s.add_times_zero(finite, s.load_f32x8(values, 16)))
    return run


_run_plain = _harness(_PLAIN)
_run_simd = _harness(simd)
_run_tree_plain = _tree_harness(_PLAIN)
_run_tree_simd = _tree_harness(simd)


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


def _reference_run(table, codes, acc, weight, affine, out8, out16, out32):
    tab = ref.ref_load_table16(table, 3)
    v = ref.ref_load_u8x32(codes, 1)
    low = ref.ref_lookup_u8x32(tab, ref.ref_low_nibbles(v))
    high = ref.ref_lookup_u8x32(tab, ref.ref_high_nibbles(v))
    raw = ref.ref_lookup_u8x32(ref.ref_load_u8x32(table, 0), v)
    for k, x in enumerate((low, high, raw, ref.ref_average_u8x32(low, raw),
                           ref.ref_add_u8x32(v, raw), ref.ref_add_u8x32(ref.ref_zeros_u8x32(), v))):
        ref.ref_store_u8x32(out8, 32 * k, x)
    a = ref.ref_load_u8x32(acc, 0)
    ref.ref_store_u16x16(out16, 0, ref.ref_add_scaled_u16x16(ref.ref_zeros_u16x16(),
                                                             ref.ref_widen_low(a), 1))
    ref.ref_store_u16x16(out16, 16, ref.ref_add_scaled_u16x16(ref.ref_widen_high(v),
                                                              ref.ref_widen_high(a), weight))
    ref.ref_store_dequantized(out32, 3, out16[16:], *affine)
    ref.ref_store_dequantized(out32, 19, out8[:32], *affine)


def _affine(seed):
    """1 / scale and shift of the dequantising store."""
    return (np.random.default_rng(seed + 1).standard_normal(2) * [0.01, 1]).astype(np.float32)


def _primitive_outputs(run, seed, weight):
    rng = np.random.default_rng(seed)
    inputs = (rng.integers(0, 256, 40, dtype=np.uint8), rng.integers(0, 256, 40, dtype=np.uint8),
              rng.integers(0, 256, 32, dtype=np.uint8), weight,
              _affine(seed))
    outputs = (np.zeros(192, np.uint8), np.zeros(32, np.uint16), np.zeros((2, 26), np.float32))
    run(*inputs, *outputs)
    return outputs


@given(seed=seeds, weight=st.sampled_from([0, 1, 2, 16, 255, 300]))
def test_plain_primitives_match_oracle(seed, weight):
    got8, got16, got32 = _primitive_outputs(_run_plain, seed, weight)
    expected8, expected16, expected32 = _primitive_outputs(_reference_run, seed, weight)
    np.testing.assert_array_equal(got8, expected8)
    np.testing.assert_array_equal(got16, expected16)
    # Numba may fuse the dequantising multiply-add (fast-math "contract"), NumPy does not:
    # the two differ by at most a rounding of each term (out32 holds out16[16:] at 3..18,
    # out8[:32] at 19..50)
    inv_scale, shift = _affine(seed)
    dequantized = np.concatenate([got16[16:], got8[:32]]).astype(np.float32)
    terms = np.abs(dequantized * inv_scale) + np.abs(shift)
    error = np.abs(got32.reshape(-1)[3:51] - expected32.reshape(-1)[3:51])
    assert np.all(error <= 2 * np.finfo(np.float32).eps * terms)
    np.testing.assert_array_equal(np.delete(got32.reshape(-1), range(3, 51)), 0)


@needs_avx2
@given(seed=seeds, weight=st.sampled_from([0, 1, 2, 16, 255, 300]))
def test_intrinsics_match_plain_twins(seed, weight):
    for got, expected in zip(_primitive_outputs(_run_simd, seed, weight),
                             _primitive_outputs(_run_plain, seed, weight)):
        np.testing.assert_array_equal(got, expected)


nonfinite_values = st.sampled_from([np.nan, np.inf, -np.inf, 1.0])


@given(seed=seeds, nonfinite=nonfinite_values)
def test_plain_tree_primitives_match_oracle(seed, nonfinite):
    for got, expected in zip(_tree_outputs(_run_tree_plain, seed, nonfinite),
                             _tree_outputs(_reference_tree_run, seed, nonfinite)):
        np.testing.assert_array_equal(got, expected)


@needs_avx2
@given(seed=seeds, nonfinite=nonfinite_values)
def test_tree_intrinsics_match_plain_twins(seed, nonfinite):
    for got, expected in zip(_tree_outputs(_run_tree_simd, seed, nonfinite),
                             _tree_outputs(_run_tree_plain, seed, nonfinite)):
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
def test_scan_average_packed_bit_identical_to_plain_scan(parallel, n, c, m, seed, block):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (n, c), dtype=np.uint8)
    luts_q = rng.integers(0, 256, (c, 16, m), dtype=np.uint8)
    scale, offset = np.float32(rng.uniform(0.01, 4.0)), np.float32(rng.standard_normal())
    out_bias = rng.standard_normal(m).astype(np.float32)
    starts, sizes, _ = _dispatch.average_groups(c)
    inv_scale, shift = _dispatch.dequantization(scale, c, offset, out_bias)
    expected = np.empty((n, m), dtype=np.float32)
    scan.scan_average_serial(codes, luts_q, starts, sizes, inv_scale, shift, expected, 256, 1)
    got_t = np.full((m, n), np.nan, dtype=np.float32)  # the kernel writes the transpose
    pick(packed, "scan_average_packed", parallel)(ref.ref_pack_codes(codes), luts_q, starts,
                                                  sizes, inv_scale, shift, got_t, block,
                                                  nthreads())
    got = got_t.T
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    oracle = ref.ref_scan_average_packed(ref.ref_pack_codes(codes), n, luts_q, scale, offset,
                                         out_bias)
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-4 * (1 + np.abs(oracle).max()))


@needs_avx2
def test_scan_average_packed_two_threads_same_bits(threads):
    rng = np.random.default_rng(3)
    codes = ref.ref_pack_codes(rng.integers(0, 16, (3001, 19), dtype=np.uint8))
    luts_q = rng.integers(0, 256, (19, 16, 37), dtype=np.uint8)
    with threads(2):
        parallel = _dispatch.scan_average_packed(codes, 3001, luts_q, 0.5, 1.0, np.zeros(37))
    with threads(1):
        serial = _dispatch.scan_average_packed(codes, 3001, luts_q, 0.5, 1.0, np.zeros(37))
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
