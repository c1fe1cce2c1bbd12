"""Shared test setup: the hypothesis profile, kernel warm-up, thread pinning, real data."""

import contextlib
import os
from pathlib import Path

import numba
import pytest
from hypothesis import HealthCheck, settings

import lutengine

REPO_ROOT = Path(__file__).resolve().parent.parent

settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _warm_kernels():
    """Compile (or load from Numba's cache) every kernel once per session."""
    lutengine.warmup()


@pytest.fixture(scope="session")
def threads():
    """``with threads(n): ...`` runs the block under ``numba.set_num_threads(n)``.

    The previous count is restored afterwards; a count above what Numba was started
    with skips the test.
    """
    @contextlib.contextmanager
    def pinned(n):
        if n > numba.config.NUMBA_NUM_THREADS:
            pytest.skip(f"needs {n} Numba threads, only {numba.config.NUMBA_NUM_THREADS} available")
        previous = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            yield
        finally:
            numba.set_num_threads(previous)

    return pinned


@pytest.fixture(scope="session")
def data_root():
    """Root of the real data sets (``$LUTENGINE_DATA``; a relative path is tried from
    the working directory, then from the repository root); skips when absent."""
    env = os.environ.get("LUTENGINE_DATA")
    if not env:
        pytest.skip("LUTENGINE_DATA is not set")
    for root in (Path(env), REPO_ROOT / env):
        if root.is_dir():
            return root.resolve()
    pytest.skip(f"LUTENGINE_DATA={env} is not a directory")
