"""Memory and concurrency of the public estimators.

- Many small calls do not grow the resident set (nothing accumulates per call).
- ``predict`` / ``transform`` of one fitted estimator, called from several Python threads
  at once (the kernels release the GIL), return exactly the single-threaded results.
- The fit path's chunked helpers (finiteness check, float64 product) give the results of
  the unchunked computation at every chunk boundary.

The fit's peak memory at scale is measured by ``bench/fit_memory.py`` (minutes, not CI).
"""

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lutengine as le
from lutengine import _validation, config, lut_opt

CALLS = 10_000
#: RSS growth allowed over CALLS calls: a leak of 400 bytes per call would exceed it
GROWTH_BOUND = 4 << 20


def _rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("VmRSS not available (Linux /proc only)")


def _rss_growth(call):
    """RSS after CALLS calls minus RSS after a warm-up of the same calls."""
    for _ in range(CALLS // 50):
        call()
    gc.collect()
    before = _rss_bytes()
    for _ in range(CALLS):
        call()
    gc.collect()
    return _rss_bytes() - before


def _small_data(seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((64, 16)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    X = rng.standard_normal((4, 16)).astype(np.float32)
    return rng, W, b, X


# one Numba thread: a parallel kernel's launch dominates these tiny calls

def test_many_predict_calls_do_not_grow_memory(threads):
    rng, W, b, X = _small_data()
    est = le.LutMatmul(4, progress=False).fit(rng.standard_normal((512, 16)), W.T)
    with threads(1):
        growth = _rss_growth(lambda: est.predict(X))
    assert growth < GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {CALLS} predicts"


def test_many_searches_do_not_grow_memory(threads):
    _, W, b, X = _small_data()
    index = le.MipsIndex(W, method="brute", bias=b)
    with threads(1):
        growth = _rss_growth(lambda: index.search(X, 5))
    assert growth < GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {CALLS} searches"


def test_many_topk_linear_calls_do_not_grow_memory(threads):
    _, W, b, X = _small_data()
    layer = le.TopKLinear(W, b, k=5, method="h2alsh", random_state=0)  # h2alsh searches
    with threads(1):
        growth = _rss_growth(lambda: layer(X))
    assert growth < GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {CALLS} calls"


@pytest.mark.parametrize("simd", ["auto", "off"])
@pytest.mark.parametrize("estimator", [le.LutMatmul, le.PQMatmul], ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", ["predict", "transform"])
def test_four_threads_on_one_estimator_match_serial(monkeypatch, simd, estimator, method):
    monkeypatch.setattr(config, "SIMD", simd)
    rng = np.random.default_rng(1)
    est = estimator(8, progress=False).fit(rng.standard_normal((2048, 32)),
                                           rng.standard_normal((32, 10)))
    # both sides of config.PARALLEL_MIN_ROWS, one F-ordered
    inputs = [rng.standard_normal((n, 32)).astype(np.float32) for n in (2500, 3001, 64, 33)]
    inputs[1] = np.asfortranarray(inputs[1])
    expected = [getattr(est, method)(X) for X in inputs]
    start = threading.Barrier(len(inputs))

    def run(X):
        start.wait()
        return [getattr(est, method)(X) for _ in range(10)]

    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(run, inputs))
    for want, got in zip(expected, results):
        for result in got:
            np.testing.assert_array_equal(result, want)


def test_finiteness_check_finds_a_value_in_any_slice(monkeypatch):
    monkeypatch.setattr(_validation, "_FINITE_CHECK_ELEMENTS", 10)
    for order in "CF":
        X = np.zeros((7, 3), dtype=np.float32, order=order)
        _validation.check_all_finite(X, "X")
        for i, j in [(0, 0), (3, 1), (6, 2)]:
            Y = X.copy(order=order)
            Y[i, j] = np.nan
            with pytest.raises(ValueError, match="X contains NaN or Inf"):
                _validation.check_all_finite(Y, "X")


def test_float64_product_by_row_blocks_matches_the_whole_product(monkeypatch):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((11, 5)).astype(np.float32)
    B = rng.standard_normal((5, 3))
    monkeypatch.setattr(lut_opt, "_PRODUCT_BLOCK_ELEMENTS", 10)  # blocks of 2 rows
    blocked = lut_opt._float64_product(A, B)
    np.testing.assert_allclose(blocked, A.astype(np.float64) @ B, rtol=1e-12, atol=1e-12)
