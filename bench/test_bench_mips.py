"""Top-10 maximum inner product search against brute force (BLAS + argpartition).

Groups ``mips|N×d|norms|batch``: N ∈ {10^5, 10^6} rows, d ∈ {128, 512}, row norms Gaussian
(every row ~ N(0, I)) or log-normal (σ = 1), batches of 1 and 64 queries, k = 10, one
thread each. With ``--benchmark-disable`` (CI) the same code runs once on N = 10^4 rows.
Recall@10 against the exact answer is recorded in ``extra_info`` and asserted (exact
methods: the exact top-10, ties aside). H2-ALSH's recall is only recorded: with the
reference defaults it falls to ~0.3 on Gaussian rows in 512 dimensions.
Nor fastscan's (4-bit PQ fast scan, default codebooks and rerank): it is approximate, and
on 10^4 rows its default rerank of 1000 re-scores a tenth of them.
"""

import numpy as np
import pytest

import lutengine as le

K = 10
METHODS = ("brute", "normscan", "h2alsh", "fastscan")
EXACT = ("brute", "normscan")


def _sizes(config):
    return [10_000] if config.getoption("benchmark_disable") else [100_000, 1_000_000]


def pytest_generate_tests(metafunc):
    if "n_rows" in metafunc.fixturenames:
        metafunc.parametrize("n_rows", _sizes(metafunc.config))


@pytest.fixture(scope="module")
def items():
    """``items(N, d, norms)`` -> (W, queries (64, d)), cached."""
    cache = {}

    def get(N, d, norms):
        if (N, d, norms) not in cache:
            cache.clear()  # one large W at a time (10^6 × 512 float32 is 2 GB)
            rng = np.random.default_rng(N + d)
            W = rng.standard_normal((N, d), dtype=np.float32)
            if norms == "lognormal":
                W *= np.exp(rng.standard_normal((N, 1), dtype=np.float32))
            cache[(N, d, norms)] = W, rng.standard_normal((64, d), dtype=np.float32)
        return cache[(N, d, norms)]

    return get


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("norms", ["gaussian", "lognormal"])
@pytest.mark.parametrize("d", [128, 512])
def test_search(benchmark, pin_threads, items, n_rows, d, norms, batch, method):
    W, Q = items(n_rows, d, norms)
    Q = Q[:batch]
    index = le.MipsIndex(W, method=method, random_state=0)
    benchmark.group = f"mips|{n_rows}x{d}|{norms}|batch={batch}"
    pin_threads(1)
    ids, scores = benchmark(index.search, Q, K)
    S = Q @ W.T
    kth = -np.partition(-S, K - 1, axis=1)[:, K - 1]
    found = np.take_along_axis(S, ids, 1) >= kth[:, None] - 1e-4 * np.abs(kth[:, None])
    recall = float(found.mean())
    benchmark.extra_info.update(impl=method if method != "brute" else "blas", method=method,
                                recall_at_10=recall, N=n_rows, d=d, norms=norms, batch=batch)
    # every method returns distinct rows with their exact scores, best first
    np.testing.assert_allclose(scores, np.take_along_axis(S, ids, 1), rtol=1e-4, atol=1e-4)
    assert all(len(set(row)) == K for row in ids) and np.all(np.diff(scores, axis=1) <= 0)
    if method in EXACT:
        assert recall == 1.0
