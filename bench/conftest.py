"""Shared fixtures of the benchmark suites: data, fitted estimators, pinned threads.

Benchmarks are tests: each one pins the BLAS and Numba thread
counts, records them in ``benchmark.extra_info``, and asserts correctness on the value it
timed. ``pytest bench --benchmark-disable`` runs every benchmark once as a plain test.
With benchmarks enabled, the terminal summary ends with the speed-up of every
implementation over single-thread BLAS (``blas``) in the same group, the number to read.

The data imitate a hidden layer: a low-rank signal plus noise through a ReLU, so the
columns are non-negative and correlated. On iid noise every method's error would sit near
its worst, since there is no structure for the hash trees (Blalock & Guttag 2021, §4.1)
or the k-means of PQ to learn.
"""

import contextlib
import os
import re

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import lutengine as le
from lutengine.experiments._common import code_commit

N_ROWS = 10_000
N_FEATURES = 512
RANK = 24
#: PQ's k-means is slow at C = 64; it learns its centroids on this many rows of A
PQ_FIT_ROWS = 2000


def make_activations(n_rows, n_features, rank, seed):
    """ReLU of a rank-``rank`` signal with a decaying spectrum plus isotropic noise."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(rank))
    U = rng.standard_normal((n_rows, rank)) * spectrum
    V = rng.standard_normal((rank, n_features))
    Z = U @ V + 0.3 * rng.standard_normal((n_rows, n_features)) + 0.2
    return np.maximum(Z, 0.0).astype(np.float32)


def nmse(Y, Y_exact):
    """‖Y − Y_exact‖² / ‖Y_exact‖², in float64."""
    Y_exact = np.asarray(Y_exact, dtype=np.float64)
    return float(np.sum((Y - Y_exact) ** 2) / np.sum(Y_exact ** 2))


# -- threads ----------------------------------------------------------------------------
def _blas_info():
    return [info for info in threadpool_info() if info["user_api"] == "blas"]


@contextlib.contextmanager
def pinned_threads(n):
    """Run the body with ``n`` BLAS threads and ``n`` Numba threads; restore both after."""
    previous = numba.get_num_threads()
    with threadpool_limits(limits=n):
        numba.set_num_threads(n)
        try:
            yield
        finally:
            numba.set_num_threads(previous)


@pytest.fixture
def pin_threads(benchmark):
    """``pin_threads(n)`` pins threads for the rest of the test and records them in
    ``benchmark.extra_info`` together with the BLAS build and the Numba version."""
    with contextlib.ExitStack() as stack:
        def pin(n):
            if n > numba.config.NUMBA_NUM_THREADS:
                pytest.skip(f"needs {n} threads, Numba has {numba.config.NUMBA_NUM_THREADS}")
            stack.enter_context(pinned_threads(n))
            blas = _blas_info()
            benchmark.extra_info.update(
                blas_threads=[info["num_threads"] for info in blas],
                blas_internal_api=[info["internal_api"] for info in blas],
                blas_architecture=[info.get("architecture") for info in blas],
                numba_threads=numba.get_num_threads(),
                numba_version=numba.__version__,
            )

        yield pin


# -- data and estimators ----------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def warmed_up():
    """Compile every kernel once before the first benchmark."""
    return le.warmup()


@pytest.fixture(scope="session")
def A():
    """The activations, C-ordered float32 (N_ROWS, N_FEATURES)."""
    return make_activations(N_ROWS, N_FEATURES, RANK, seed=0)


@pytest.fixture(scope="session")
def A_fortran(A):
    return np.asfortranarray(A)


@pytest.fixture(scope="session")
def weights():
    """``weights(M)``: a fixed random (N_FEATURES, M) float32 matrix."""
    cache = {}

    def get(M):
        if M not in cache:
            rng = np.random.default_rng(1000 + M)
            cache[M] = (rng.standard_normal((N_FEATURES, M)) / np.sqrt(N_FEATURES)).astype(np.float32)
        return cache[M]

    return get


@pytest.fixture(scope="session")
def exact(A, weights):
    """``exact(M)``: A @ weights(M) in float64, the reference every result is held to."""
    cache = {}

    def get(M):
        if M not in cache:
            cache[M] = A.astype(np.float64) @ weights(M).astype(np.float64)
        return cache[M]

    return get


@pytest.fixture(scope="session")
def nmse_to_exact(exact):
    """``nmse_to_exact(Y, M)``: NMSE of Y against the exact product with weights(M)."""
    return lambda Y, M: nmse(Y, exact(M))


@pytest.fixture(scope="session")
def fitted(A, weights):
    """``fitted(method, C, M)`` -> (estimator, its predict on C-ordered A), cached for the
    session. ``method`` is "maddness" (LutMatmul) or "pq" (PQMatmul on PQ_FIT_ROWS rows).
    Fitting runs with one BLAS thread: k-means oversubscribes the cores otherwise."""
    cache = {}

    def get(method, C, M):
        key = (method, C, M)
        if key not in cache:
            with threadpool_limits(limits=1):
                if method == "maddness":
                    est = le.LutMatmul(ncodebooks=C, progress=False).fit(A, weights(M))
                elif method == "pq":
                    est = le.PQMatmul(ncodebooks=C, random_state=0, progress=False).fit(
                        A[:PQ_FIT_ROWS], weights(M))
                else:
                    raise ValueError(f"unknown method {method!r}")
            cache[key] = est, est.predict(A)
        return cache[key]

    return get


# -- the speed-up table -----------------------------------------------------------------
def _group_key(group):
    """Sort groups by name, then numerically by their ``key=value`` fields."""
    fields = []
    for part in group.split("|"):
        match = re.fullmatch(r"(\w+)=(\d+)", part)
        fields.append((match.group(1), int(match.group(2))) if match else (part, -1))
    return fields


def speedups_over_blas(benchmarks):
    """{group: {impl: min time of ``blas`` / min time of impl}} for the groups that hold a
    ``blas`` benchmark; impls keep the order in which they ran."""
    mins = {}
    for bench in benchmarks:
        if bench.has_error or not bench.stats or bench.group is None:
            continue
        impl = bench.extra_info.get("impl", bench.name)
        mins.setdefault(bench.group, {})[impl] = bench.stats.min
    return {group: {impl: times["blas"] / t for impl, t in times.items()}
            for group, times in sorted(mins.items(), key=lambda item: _group_key(item[0]))
            if "blas" in times}


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the load average (1, 5, 15 min) at the end of the run (how quiet it was) and
    the code's commit (pytest-benchmark's own ``dirty`` flag is always set when the JSON it
    writes is a tracked file, which it truncates first)."""
    machine_info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    machine_info["code_commit"] = code_commit()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:
        return
    table = speedups_over_blas(session.benchmarks)
    if not table:
        return
    impls = list(dict.fromkeys(impl for row in table.values() for impl in row if impl != "blas"))
    width = max(len(group) for group in table)
    tr = terminalreporter
    tr.section("speed-up over single-thread BLAS (min time ratio, > 1 is faster)")
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b.get('architecture')})" for b in _blas_info())
    tr.write_line(f"BLAS: {blas}; numba {numba.__version__}")
    cell = max(10, *(len(impl) + 2 for impl in impls))
    tr.write_line(f"{'group':<{width}}" + "".join(f"{impl:>{cell}}" for impl in impls))
    for group, row in table.items():
        cells = "".join(f"{row[impl]:>{cell}.2f}" if impl in row else f"{'-':>{cell}}"
                        for impl in impls)
        tr.write_line(f"{group:<{width}}{cells}")
