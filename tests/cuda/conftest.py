"""CUDA tests: run on the simulator (NUMBA_ENABLE_CUDASIM=1, a separate step of
.ci/run) or on a real GPU (bench/gpu_check.py); skipped, with the reason, otherwise."""

import numba
import numpy as np
import pytest

from lutengine import config as lut_config


def _unavailable_reason():
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc})"
    if not cuda.is_available():
        return "no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set"
    return None


SKIP_REASON = _unavailable_reason()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.path.parts[-2:-1]:
            if SKIP_REASON and "runs_without_cuda" not in item.keywords:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            # tiny test grids under-use a real GPU by design: Numba's performance hint is
            # expected here, not an error (pyproject turns NumbaWarnings into errors)
            item.add_marker(pytest.mark.filterwarnings(
                "ignore::numba.core.errors.NumbaPerformanceWarning"))


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_without_cuda: a CUDA-folder test that needs no GPU")


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch):
    """Tiny launch shapes: several blocks, several tiles and grid-stride wrap-around even on
    tens of rows (and the simulator runs every thread in Python)."""
    for name, value in [("CUDA_THREADS_PER_BLOCK", 8), ("CUDA_MAX_BLOCKS", 3),
                        ("CUDA_ROWS_PER_BLOCK", 4), ("CUDA_SCAN_SHARED_BYTES", 1024),
                        ("CUDA_MAX_QUERY_THREADS", 8)]:
        monkeypatch.setattr(lut_config, name, value)


@pytest.fixture(autouse=True, scope="session")
def _fused_simulator_fma():
    """The simulator's ``cuda.fma`` rounds twice (``a * b + c`` in float32); the hardware
    fuses. Make the fake fuse too (the product of two float32 is exact in float64), so the
    simulator checks the arithmetic the GPU runs."""
    if not numba.config.ENABLE_CUDASIM:
        yield
        return
    from numba.cuda.simulator import kernelapi
    original = kernelapi.FakeCUDAModule.fma
    kernelapi.FakeCUDAModule.fma = lambda self, a, b, c: np.float32(
        np.float64(a) * np.float64(b) + np.float64(c))
    yield
    kernelapi.FakeCUDAModule.fma = original
