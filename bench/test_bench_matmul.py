"""``predict`` against BLAS on (10 000 × 512) activations, M ∈ {10, 100} outputs.

One group per (M, C); inside it BLAS (1 and 2 threads), MADDNESS (Blalock & Guttag 2021)
on C- and F-ordered A with 1 and 2 Numba threads (plain kernels), the AVX2 packed path
(kernels/packed.py, ``lutengine-simd-*``), and the PQ baseline, all timed on the same A.
Every result is checked after timing: MADDNESS gives the same bits whatever the order of A,
the thread count and the path (SIMD or plain), and stays within a loose error bound of the
exact product.
"""

import numpy as np
import pytest

from kernels import simd
from lutengine import config

OUTPUTS = (10, 100)
NCODEBOOKS = (2, 4, 8, 16, 32, 64)

#: loose ceilings on the NMSE against the exact product, for MADDNESS and PQ alike
#: (measured: MADDNESS 0.46 at C = 2 down to 0.09 at C = 64, PQ 0.48 down to 0.26)
NMSE_BOUND = {2: 0.7, 4: 0.65, 8: 0.6, 16: 0.55, 32: 0.5, 64: 0.4}
#: float32 BLAS against the float64 product
BLAS_NMSE_BOUND = 1e-10

#: impl -> (method, threads, order of A, config.SIMD); method None is the exact float32
#: product; "lutengine-*" rows are the plain kernels, "lutengine-simd-*" the AVX2 path
IMPLS = {
    "blas": (None, 1, "C", "off"),
    "blas-2t": (None, 2, "C", "off"),
    "lutengine-1t": ("maddness", 1, "C", "off"),
    "lutengine-1t-F": ("maddness", 1, "F", "off"),
    "lutengine-2t": ("maddness", 2, "F", "off"),
    "lutengine-simd-1t": ("maddness", 1, "C", "on"),
    "lutengine-simd-1t-F": ("maddness", 1, "F", "on"),
    "lutengine-simd-2t-F": ("maddness", 2, "F", "on"),
    "pq-1t": ("pq", 1, "C", "off"),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("C", NCODEBOOKS)
@pytest.mark.parametrize("M", OUTPUTS)
def test_predict(benchmark, monkeypatch, pin_threads, A, A_fortran, weights, fitted, nmse_to_exact,
                 M, C, impl):
    method, threads, order, simd_mode = IMPLS[impl]
    if simd_mode == "on" and not simd.has_avx2():
        pytest.skip("the SIMD path needs AVX2")
    monkeypatch.setattr(config, "SIMD", simd_mode)
    benchmark.group = f"predict|M={M}|C={C}"
    benchmark.extra_info.update(impl=impl, M=M, C=C, threads=threads, order=order,
                                simd=simd_mode)
    X = A_fortran if order == "F" else A
    if method is None:
        B = weights(M)
        pin_threads(threads)
        Y = benchmark(np.matmul, X, B)
        assert nmse_to_exact(Y, M) < BLAS_NMSE_BOUND
        return
    est, Y_reference = fitted(method, C, M)  # fitted and predicted before threads are pinned
    pin_threads(threads)
    Y = benchmark(est.predict, X)
    assert Y.dtype == np.float32 and Y.shape == (A.shape[0], M)
    np.testing.assert_array_equal(Y, Y_reference)
    assert nmse_to_exact(Y, M) < NMSE_BOUND[C]
