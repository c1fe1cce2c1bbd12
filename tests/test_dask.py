"""lutengine.dask on a LocalCluster of 2 worker processes (1 thread each) started here:
predict_dask against the local call bit for bit, ShardedMipsIndex against brute force and
against a single machine's recall, and a worker killed in the middle of a search."""

import concurrent.futures
import importlib
import os
import signal
import sys
import time

import numba
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import lutengine as le  # noqa: E402
import lutengine.dask as led  # noqa: E402

D, M = 16, 8


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    """Not the default client, so that the fallback without a client can be tested too."""
    with distributed.Client(cluster, set_as_default=False) as client:
        led.set_worker_threads(client, numba_threads=1, blas_threads=1)
        yield client


@pytest.fixture(scope="module")
def estimator():
    """A small fitted LutMatmul; its serial kernels are loaded (or compiled) here once, so
    the two workers find them in Numba's disk cache instead of both compiling them."""
    rng = np.random.default_rng(0)
    A = np.maximum(rng.standard_normal((2000, 4)) @ rng.standard_normal((4, D)), 0)
    est = le.LutMatmul(ncodebooks=4, progress=False).fit(A, rng.standard_normal((D, M)))
    est.predict(A[:100])
    return est


def _rows(n, d, seed, chunks, spread=1.0):
    """Gaussian rows times log-normal(``spread``) norms, as a dask array made on the
    workers (chunks of ``chunks`` rows) and as NumPy."""
    directions = da.random.default_rng(seed).standard_normal((n, d), chunks=(chunks, d))
    norms = da.random.default_rng(seed + 1).standard_normal((n, 1), chunks=(chunks, 1))
    W = (directions * da.exp(spread * norms)).astype(np.float32)
    return W, W.compute(scheduler="sync")


# -- predict_dask ---------------------------------------------------------------------------
def test_predict_over_a_million_rows_equals_the_local_predict_bit_for_bit(client, estimator):
    chunks = ((250_001, 249_999, 300_000, 200_000), (D,))  # edges off the 32-row blocks
    A = da.random.default_rng(1).standard_normal((10**6, D), chunks=chunks, dtype=np.float32)
    want = estimator.predict(A.compute(scheduler="sync"))
    Y = led.predict_dask(estimator, A, client=client)
    assert Y.dtype == np.float32 and Y.shape == (10**6, M) and Y.chunks == (chunks[0], (M,))
    np.testing.assert_array_equal(client.compute(Y).result(), want)


def _held_keys(client):
    return {key for keys in client.has_what().values() for key in keys}


def test_the_estimator_is_scattered_once_to_every_worker(client, estimator):
    A = da.ones((1000, D), chunks=(100, D), dtype=np.float32)
    before = _held_keys(client)
    Y = led.predict_dask(estimator, A, client=client)
    new = _held_keys(client) - before
    assert len(new) == 1 and next(iter(new)).startswith("LutMatmul-")
    assert all(new <= set(keys) for keys in client.has_what().values())  # on both workers
    graph = dict(Y.__dask_graph__()).values()  # the tasks name that key; none holds the estimator
    assert not any(isinstance(getattr(task, "value", task), le.LutMatmul) for task in graph)
    np.testing.assert_array_equal(client.compute(Y).result(),
                                  estimator.predict(np.ones((1000, D))))


def test_topk_linear_through_dask_equals_the_local_layer(client):
    rng = np.random.default_rng(2)
    W, b = rng.standard_normal((64, D)), rng.standard_normal(64)
    layer = le.TopKLinear(W, b, k=5, method="normscan", bottom=True)
    X = da.random.default_rng(3).standard_normal((20_000, D), chunks=(6_000, D), dtype=np.float32)
    want = layer(X.compute(scheduler="sync"))
    Y = led.predict_dask(layer, X, client=client)
    assert Y.dtype == np.float32 and Y.shape == (20_000, 64)
    np.testing.assert_array_equal(client.compute(Y).result(), want)


def test_a_lut_network_through_dask_equals_its_forward(client):
    """A Network of lookup-table layers (the fused chain: whole rows in integers) over the
    workers gives its local forward bit for bit; networks of other shapes are refused."""
    from lutengine import nn

    rng = np.random.default_rng(7)
    A = rng.standard_normal((3000, D)).astype(np.float32)
    y = rng.integers(0, 3, 3000)
    exact = nn.MLP([nn.Dense(rng.standard_normal((D, 12)), np.zeros(12)),
                    nn.Dense(rng.standard_normal((12, 3)), np.zeros(3))])
    net = nn.replace_layers(exact, A, y, 4, finetune=False, progress=False)
    X = da.from_array(A, chunks=(700, D))
    Y = led.predict_dask(net, X, client=client)
    assert Y.dtype == np.float32 and Y.shape == (3000, 3)
    np.testing.assert_array_equal(client.compute(Y).result(), net.forward(A))
    images = nn.Network([nn.Flatten()], (1, 2, 2))
    with pytest.raises(TypeError, match=r"must map \(n, features\) float32 rows"):
        led.predict_dask(images, X, client=client)


def test_predict_finds_the_current_client(client, estimator):
    A = da.random.default_rng(4).standard_normal((5000, D), chunks=(1000, D), dtype=np.float32)
    before = _held_keys(client)
    with client.as_current():
        Y = led.predict_dask(estimator, A)
    assert len(_held_keys(client) - before) == 1  # scattered to that client's workers
    np.testing.assert_array_equal(client.compute(Y).result(),
                                  estimator.predict(A.compute(scheduler="sync")))


def test_predict_without_a_client_embeds_the_estimator_once():
    est = le.LutMatmul(ncodebooks=2, progress=False).fit(
        np.random.default_rng(5).standard_normal((300, 6)), np.eye(6))
    A = np.random.default_rng(6).standard_normal((1000, 6)).astype(np.float32)
    Y = led.predict_dask(est, da.from_array(A, chunks=((300, 0, 700), (6,))))  # an empty chunk
    graph = dict(Y.__dask_graph__()).values()
    assert sum(isinstance(getattr(task, "value", task), le.LutMatmul) for task in graph) == 1
    np.testing.assert_array_equal(Y.compute(scheduler="threads"), est.predict(A))


@pytest.mark.parametrize("make, exc, match", [
    (lambda A, est: (est, A.compute()), TypeError, "A must be a dask.array.Array"),
    (lambda A, est: (est, A.rechunk((100, 4))), ValueError, "columns in one chunk"),
    (lambda A, est: (est, A[:, :10]), ValueError, "A has 10 columns, but the estimator was fitted"),
    (lambda A, est: (est, A[:, 0]), ValueError, "A must be 2-D"),
    (lambda A, est: (est, A > 0), TypeError, "real numeric"),
    (lambda A, est: (est, A[:0]), ValueError, "must not be empty"),
    (lambda A, est: (le.LutMatmul(), A), le.NotFittedError, "not fitted"),
    (lambda A, est: (le.MipsIndex(np.eye(3)), A), TypeError, "estimator must be a fitted"),
], ids=["numpy", "column-chunks", "width", "1-D", "bool", "empty", "not-fitted", "not-estimator"])
def test_predict_errors_name_the_argument(estimator, make, exc, match):
    A = da.zeros((300, D), chunks=(100, D), dtype=np.float32)
    with pytest.raises(exc, match=match):
        led.predict_dask(*make(A, estimator))


def test_predict_rejects_a_client_of_the_wrong_type(estimator):
    A = da.zeros((300, D), chunks=(100, D), dtype=np.float32)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        led.predict_dask(estimator, A, client="tcp://127.0.0.1:8786")


def test_a_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    monkeypatch.delitem(sys.modules, "lutengine.dask")
    with pytest.raises(ImportError, match=r'distributed is missing\): pip install "lutengine\[dask\]"'):
        importlib.import_module("lutengine.dask")


# -- threads --------------------------------------------------------------------------------
def test_worker_threads_are_set_on_every_worker(client):
    settings = led.set_worker_threads(client, numba_threads=1, blas_threads=1)
    assert len(settings) == 2
    assert all(s == {"numba_threads": 1, "blas_threads": [1]} for s in settings.values())

    def task_threads(_):  # what a lutengine task runs with (pickled by value)
        led._pin_numba()
        return numba.get_num_threads()

    assert client.gather(client.map(task_threads, range(4), pure=False)) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="exceeds NUMBA_NUM_THREADS"):
        led.set_worker_threads(client, numba_threads=10_000)
    with pytest.raises(ValueError, match="blas_threads must be at least 1"):
        led.set_worker_threads(client, blas_threads=0)
    with pytest.raises(TypeError, match="numba_threads must be an integer"):
        led.set_worker_threads(client, numba_threads="2")
    led.set_worker_threads(client, numba_threads=1, blas_threads=1)


# -- ShardedMipsIndex: exact ------------------------------------------------------------------
def _check_top_k(ids, scores, S, k):
    """ids/scores are a best-first top-k of the float64 score matrix S (ties aside)."""
    tol = 1e-5 * np.abs(S).max()
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    got = np.take_along_axis(S, ids, 1)
    np.testing.assert_allclose(scores, got, rtol=1e-5, atol=tol)
    assert np.all(got >= kth[:, None] - tol) and np.all(np.diff(scores, axis=1) <= 0)
    assert all(len(set(row)) == k for row in ids)


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("method", ["brute", "normscan", "auto"])
def test_sharded_exact_search_equals_brute_force(client, method, with_bias):
    W, Wn = _rows(3000, D, seed=7, chunks=1000)
    W = W.rechunk(((700, 1300, 1000), (D,)))
    b = np.random.default_rng(8).standard_normal(3000).astype(np.float32) if with_bias else None
    Q = np.random.default_rng(9).standard_normal((7, D)).astype(np.float32)
    index = led.ShardedMipsIndex(W, method=method, bias=b, random_state=0, client=client)
    assert index.n_items == 3000 and list(index.shard_sizes_) == [700, 1300, 1000]
    single = le.MipsIndex(Wn, method="brute", bias=b)
    S = Q.astype(np.float64) @ Wn.T.astype(np.float64) + (0 if b is None else b)
    for largest, sign in ((True, 1), (False, -1)):
        ids, scores = index.search(Q, 10, largest=largest)
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (7, 10)
        single_ids, single_scores = single.search(Q, 10, largest=largest)
        np.testing.assert_array_equal(ids, single_ids)
        np.testing.assert_array_equal(ids, np.argsort(-sign * S, axis=1, kind="stable")[:, :10])
        np.testing.assert_array_equal(scores, single_scores)  # scores are recomputed per row
        for k in (800, 3000):  # more than the first shard holds; every row
            _check_top_k(*index.search(Q, k, largest=largest), sign * S, k)


def test_sharded_ties_are_broken_by_the_smaller_global_id(client):
    """Small integers: every score is exact in float32, whatever the summation order."""
    rng = np.random.default_rng(10)
    Wn = rng.integers(-3, 4, (600, 8)).astype(np.float32)
    Wn[400:] = Wn[:200]                                   # duplicates in another shard
    b = rng.integers(-2, 3, 600).astype(np.float32)
    Q = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    index = led.ShardedMipsIndex(da.from_array(Wn, chunks=(250, -1)), method="normscan",
                                 bias=b, client=client)
    S = Q @ Wn.T + b
    for largest, sign in ((True, 1), (False, -1)):
        ids, scores = index.search(Q, 600, largest=largest)
        want = np.lexsort((np.broadcast_to(np.arange(600), S.shape), -sign * S), axis=1)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(scores, np.take_along_axis(sign * S, want, 1))


def test_sharded_index_from_files(client, tmp_path):
    rng = np.random.default_rng(11)
    Wn = rng.standard_normal((900, D)).astype(np.float32)
    b = rng.standard_normal(900).astype(np.float32)
    Q = rng.standard_normal((6, D)).astype(np.float32)
    npy, npz = [], []
    for i, (start, stop) in enumerate([(0, 200), (200, 650), (650, 900)]):
        np.save(tmp_path / f"rows{i}.npy", Wn[start:stop])
        np.savez(tmp_path / f"shard{i}.npz", W=Wn[start:stop], bias=b[start:stop])
        npy.append(tmp_path / f"rows{i}.npy")
        npz.append(str(tmp_path / f"shard{i}.npz"))
    for paths, bias in ((npy, None), (npz, b)):
        index = led.ShardedMipsIndex(paths, method="normscan", client=client)
        assert list(index.shard_sizes_) == [200, 450, 250] and index.n_features_ == D
        for largest in (True, False):
            want = le.MipsIndex(Wn, method="brute", bias=bias).search(Q, 12, largest=largest)
            got = index.search(Q, 12, largest=largest)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="all or none a bias"):
        led.ShardedMipsIndex(npz[:1] + npy[1:], client=client)
    np.savez(tmp_path / "nameless.npz", Wn)
    with pytest.raises(ValueError, match="must hold an array 'W'"):
        led.ShardedMipsIndex([tmp_path / "nameless.npz"], client=client)
    with pytest.raises(FileNotFoundError):
        led.ShardedMipsIndex([tmp_path / "missing.npy"], client=client)


@pytest.mark.parametrize("make, exc, match", [
    (lambda W: dict(W=W.compute()), TypeError, "W must be a dask array or a list"),
    (lambda W: dict(W="rows.npy"), TypeError, "W must be a dask array or a list"),
    (lambda W: dict(W=[]), ValueError, "at least one shard"),
    (lambda W: dict(W=["rows.csv"]), ValueError, ".npy or .npz"),
    (lambda W: dict(W=["rows.npy"], bias=np.zeros(3)), ValueError, "bias must be None"),
    (lambda W: dict(W=W.rechunk((50, 2))), ValueError, "columns in one chunk"),
    (lambda W: dict(W=W, bias=np.zeros(99)), ValueError, r"bias must have shape \(100,\)"),
    (lambda W: dict(W=W, method="lsh"), ValueError, "method must be one of"),
], ids=["numpy", "one-path", "no-paths", "suffix", "files-bias", "column-chunks", "bias-shape",
        "method"])
def test_sharded_errors_name_the_argument(client, make, exc, match):
    W = da.zeros((100, 4), chunks=(50, 4), dtype=np.float32)
    with pytest.raises(exc, match=match):
        led.ShardedMipsIndex(client=client, **make(W))


def test_sharded_search_errors_name_the_argument(client):
    W = _rows(100, 4, seed=12, chunks=50)[0]
    index = led.ShardedMipsIndex(W, method="brute", client=client)
    with pytest.raises(ValueError, match="k must be between 1 and the number of rows N = 100"):
        index.search(np.ones((2, 4)), 101)
    with pytest.raises(ValueError, match="Q has 5 columns"):
        index.search(np.ones((2, 5)), 3)


def test_sharded_index_needs_a_client():
    with pytest.raises(ValueError, match="no dask.distributed Client"):
        led.ShardedMipsIndex(da.zeros((10, 2), chunks=(5, 2)))


# -- ShardedMipsIndex: approximate ------------------------------------------------------------
def _recall(ids, S, k):
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    return float((np.take_along_axis(S, ids, 1) >= kth[:, None] - 1e-6).mean())


@pytest.mark.parametrize("method, shard_options, single_options", [
    ("h2alsh", {"candidates": 1000}, {"candidates": 1000}),  # per ring: 4 rings either way
    ("fastscan", {"rerank": 200}, {"rerank": 400}),          # 2 % of the rows either way
])
def test_sharded_recall_matches_a_single_machine(client, method, shard_options, single_options):
    """Gaussian rows (no norm spread for the ring stop to exploit), so recall is below 1;
    two shards of 10 000 rows against one index of 20 000 with the same budget per row."""
    W, Wn = _rows(20_000, 32, seed=13, chunks=10_000, spread=0.0)
    Q = np.random.default_rng(14).standard_normal((100, 32)).astype(np.float32)
    S = Q.astype(np.float64) @ Wn.T.astype(np.float64)
    sharded = led.ShardedMipsIndex(W, method=method, random_state=0, client=client, **shard_options)
    assert sharded.methods_ == [method, method]
    single = le.MipsIndex(Wn, method=method, random_state=0, **single_options)
    for sign in (1, -1):
        want = _recall(single.search(sign * Q, 10)[0], sign * S, 10)
        got = _recall(sharded.search(sign * Q, 10)[0], sign * S, 10)
        assert want >= 0.85 and abs(got - want) <= 0.05, (want, got)


# -- a worker killed mid-search ---------------------------------------------------------------
def _workers_searching(dask_scheduler):
    return [ts.processing_on.address for ts in dask_scheduler.tasks.values()
            if str(ts.key).startswith("_search_shard") and ts.processing_on is not None]


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["retried", "no-retry"])
def test_a_worker_killed_mid_search_never_gives_a_partial_top_k(cluster, client, monkeypatch,
                                                               allowed_failures):
    """Dask reruns the lost work (the shards' index builds, then the search) up to the
    scheduler's allowed-failures; beyond that the search raises. Either way the answer is
    the full one or none."""
    if allowed_failures is not None:
        monkeypatch.setattr(cluster.scheduler, "allowed_failures", allowed_failures)
    W, Wn = _rows(200_000, 32, seed=15, chunks=100_000)
    Q = np.random.default_rng(16).standard_normal((500, 32)).astype(np.float32)
    index = led.ShardedMipsIndex(W, method="brute", client=client)
    want = le.MipsIndex(Wn, method="brute").search(Q, 10)
    pids = client.run(os.getpid)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        search = pool.submit(index.search, Q, 10)
        deadline = time.monotonic() + 60
        while not (busy := client.run_on_scheduler(_workers_searching)):
            assert not search.done() and time.monotonic() < deadline, "the search never ran"
            time.sleep(0.01)
        os.kill(pids[busy[0]], signal.SIGKILL)
        try:
            ids, scores = search.result(timeout=120)
        except RuntimeError as exc:
            assert allowed_failures == 0, exc
            assert "no partial top-k" in str(exc)
            assert isinstance(exc.__cause__, distributed.KilledWorker)
        else:
            assert allowed_failures is None
            np.testing.assert_array_equal(ids, want[0])
    client.wait_for_workers(2, timeout=60)
    np.testing.assert_array_equal(index.search(Q[:20], 10)[0], want[0][:20])  # rebuilt shards
