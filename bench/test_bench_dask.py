"""``predict`` through Dask (:func:`lutengine.dask.predict_dask`) against the local call.

One group ``predict-dask|rows=N|M=100|C=16``: the benchmarks' activations (10 000 × 512)
repeated to N = 10⁶ rows (20 000 under ``--benchmark-disable``), all on this machine in
the same run:

- ``blas``: ``A @ B``, one thread (the reference of the speed-up table);
- ``local-1t`` / ``local-2t``: ``LutMatmul.predict`` with 1 / 2 Numba threads;
- ``dask-2x1t-persist``: ``predict_dask`` on a LocalCluster of 2 worker processes × 1
  thread (Numba and BLAS pinned to 1 thread by ``set_worker_threads``), A already on the
  workers in 8 chunks, the results kept there (the workers' throughput);
- ``dask-2x1t-gather``: the same with the results gathered into one NumPy array.

Each call of a Dask impl scatters the estimator anew (a new key each time, so nothing is
reused between rounds). ``extra_info`` holds ``rows`` and, when timed, ``rows_per_s`` (rows
over the fastest round). Every result is checked after timing: BLAS against the float64
product, the others give the same bits as the local predict.
"""

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import lutengine.dask as led  # noqa: E402

M, C = 100, 16
CHUNKS = 8
IMPLS = ("blas", "local-1t", "local-2t", "dask-2x1t-persist", "dask-2x1t-gather")


@pytest.fixture(scope="module")
def n_rows(request):
    return 20_000 if request.config.getoption("benchmark_disable") else 1_000_000


@pytest.fixture(scope="module")
def rows(A, n_rows):
    return np.tile(A, (n_rows // A.shape[0], 1))


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        led.set_worker_threads(client, numba_threads=1, blas_threads=1)
        yield client


@pytest.fixture(scope="module")
def rows_on_workers(client, rows):
    """``rows`` as a dask array persisted on the workers (chunks scattered, then persisted
    so that every chunk is one key where it lives and no task moves it)."""
    parts = np.array_split(rows, CHUNKS)
    futures = client.scatter(parts)
    X = client.persist(da.concatenate([da.from_delayed(f, p.shape, dtype=p.dtype)
                                       for f, p in zip(futures, parts)]))
    distributed.wait(X)
    return X


@pytest.fixture(scope="module")
def estimator(fitted):
    return fitted("maddness", C, M)[0]


@pytest.fixture(scope="module")
def want(estimator, rows):
    return estimator.predict(rows)


@pytest.mark.parametrize("impl", IMPLS)
def test_predict_dask(benchmark, pin_threads, estimator, want, weights, nmse_to_exact, A, client,
                      rows, rows_on_workers, n_rows, impl):
    benchmark.group = f"predict-dask|rows={n_rows}|M={M}|C={C}"
    benchmark.extra_info.update(impl=impl, rows=n_rows, M=M, C=C)
    if impl == "blas":
        pin_threads(1)
        Y = benchmark(np.matmul, rows, weights(M))
        assert nmse_to_exact(Y[:A.shape[0]], M) < 1e-10  # the first repeat of A
    elif impl.startswith("local"):
        pin_threads(int(impl[-2]))
        Y = benchmark(estimator.predict, rows)
        np.testing.assert_array_equal(Y, want)
    else:
        benchmark.extra_info.update(workers=2, worker_threads=1, worker_numba_threads=1,
                                    worker_blas_threads=1)
        pin_threads(1)

        def run():
            Y = led.predict_dask(estimator, rows_on_workers, client=client)
            if impl.endswith("gather"):
                return client.compute(Y).result()
            Y = client.persist(Y)
            distributed.wait(Y)
            return Y

        run()  # the workers load their kernels before the timing
        Y = benchmark(run)
        if impl.endswith("persist"):
            Y = client.compute(Y).result()
        np.testing.assert_array_equal(Y, want)
    if benchmark.stats:
        benchmark.extra_info["rows_per_s"] = n_rows / benchmark.stats.stats.min
