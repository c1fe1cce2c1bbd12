"""The two inference kernels alone, one Numba thread, M = 100 outputs.

``encode|C=…``: the hash-tree encoder (Blalock & Guttag 2021, §4.1) on C- and F-ordered A;
``scan|M=100|C=…``: the lookup-accumulate, int8 tables summed exactly (§4.4) and float32. Each group also
times the exact BLAS product it replaces, so the summary reads as a share of a matmul.
Kernels are called through ``lutengine._dispatch`` exactly as ``predict`` calls them (with
one thread it picks the serial variants; the only extra work is allocating the output), and
checked against small NumPy references.
"""

import numpy as np
import pytest

from lutengine import _dispatch

M = 100
NCODEBOOKS = (2, 16, 64)


def encode_tree_reference(X, split_dims, thresholds):
    """Codes by walking every tree level for all rows at once (heap-ordered thresholds)."""
    C = split_dims.shape[0]
    node = np.zeros((X.shape[0], C), dtype=np.int64)
    for level in range(split_dims.shape[1]):
        t = thresholds[np.arange(C), 2 ** level - 1 + node]
        node = 2 * node + (X[:, split_dims[:, level]] > t)
    return node.astype(np.uint8)


def scan_reference(codes, luts, out_bias):
    """Σ_c luts[c, codes[:, c], :] + out_bias in float64."""
    out = np.tile(out_bias.astype(np.float64), (codes.shape[0], 1))
    for c in range(codes.shape[1]):
        out += luts[c, codes[:, c]]
    return out


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("C", NCODEBOOKS)
def test_encode_tree(benchmark, pin_threads, A, A_fortran, fitted, C, order):
    est, _ = fitted("maddness", C, M)
    X = A_fortran if order == "F" else A
    benchmark.group = f"encode|C={C}"
    benchmark.extra_info.update(impl=f"tree-{order}", C=C, threads=1, order=order)
    pin_threads(1)
    codes, nonfinite = benchmark(_dispatch.lut.encode_tree, X, est.split_dims_, est.thresholds_)
    assert nonfinite == 0
    np.testing.assert_array_equal(codes, encode_tree_reference(A, est.split_dims_, est.thresholds_))


@pytest.mark.parametrize("kind", ["int8", "float"])
@pytest.mark.parametrize("C", NCODEBOOKS)
def test_scan(benchmark, pin_threads, A, fitted, C, kind):
    est, Y_predict = fitted("maddness", C, M)
    codes = est.transform(A)
    if kind == "int8":
        offset_sums = est.lut_offsets_.sum(axis=0, dtype=np.float64).astype(np.float32)
        args = (_dispatch.lut.scan_quantized, codes, est.luts_q_, est.lut_scale_, offset_sums,
                est.bias_)
    else:
        args = (_dispatch.lut.scan_float, codes, est.luts_, est.bias_)
    benchmark.group = f"scan|M={M}|C={C}"
    benchmark.extra_info.update(impl=kind, M=M, C=C, threads=1)
    pin_threads(1)
    out = benchmark(*args)
    expected = scan_reference(codes, est.luts_, est.bias_)
    tolerance = 1e-5 * np.abs(expected).max()
    if kind == "int8":
        np.testing.assert_array_equal(out, Y_predict)
        tolerance += 0.5 * C / est.lut_scale_  # each entry rounds by ≤ ½ its output's quantum
    excess = np.abs(out - expected) - tolerance  # tolerance: per output (M,) for int8
    assert np.all(excess <= 0), f"off by {excess.max()} beyond the tolerance"


@pytest.mark.parametrize("group", [f"{kernel}|C={C}" for kernel in ("encode", f"scan|M={M}")
                                   for C in NCODEBOOKS])
def test_blas(benchmark, pin_threads, A, weights, nmse_to_exact, group):
    """The exact product that encode + scan replace, timed in each kernel group."""
    benchmark.group = group
    benchmark.extra_info.update(impl="blas", M=M, threads=1, order="C")
    pin_threads(1)
    Y = benchmark(np.matmul, A, weights(M))
    assert nmse_to_exact(Y, M) < 1e-10
