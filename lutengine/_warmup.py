"""Compile every kernel ahead of time, filling Numba's on-disk cache.

Each kernel family of the dispatch layer (:mod:`lutengine._dispatch`) warms up its serial
and its parallel variants as two independent tasks (:data:`TASKS`), run in separate
processes (a compile uses one core, and the families share no kernel, so no two processes
write the same cache entry). Each compilation is timed with Numba's event API
(``numba:compile`` events; a kernel loaded from the cache fires none).
"""

import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

import numba
from numba.core import event

from . import _dispatch

#: (family, parallel variants?) of every warm-up task
TASKS = tuple((family, parallel) for family in ("lut", "search", "conv", "fused")
              for parallel in (False, True))


class _CompileTimer(event.Listener):
    """Records (kernel, seconds) of every top-level compilation (callees compiled on the way
    are counted in their caller's time)."""

    def __init__(self):
        self.records, self._started = [], []

    def on_start(self, ev):
        self._started.append(time.perf_counter())

    def on_end(self, ev):
        seconds = time.perf_counter() - self._started.pop()
        if not self._started:
            function = ev.data["dispatcher"].py_func
            self.records.append((f"{function.__module__}.{function.__qualname__}", seconds))


@contextmanager
def compile_timer():
    """``with compile_timer() as records:`` collects (kernel, seconds) of the compilations
    made inside the block, in this thread."""
    timer = _CompileTimer()
    event.register("numba:compile", timer)
    try:
        yield timer.records
    finally:
        event.unregister("numba:compile", timer)


def _run_task(family, parallel):
    """One warm-up task; returns its compilations. Parallel variants need ≥ 2 threads (with
    one, the dispatch layer never picks them)."""
    nthreads = numba.config.NUMBA_NUM_THREADS
    if parallel and nthreads < 2:
        return []
    previous = numba.get_num_threads()
    numba.set_num_threads(nthreads if parallel else 1)
    try:
        with compile_timer() as records:
            getattr(_dispatch, family).warmup(parallel)
    finally:
        numba.set_num_threads(previous)
    return records


def worker_processes(processes=None):
    """The worker processes of :func:`warmup`: ``processes``, or one per core, at most one
    per task."""
    return processes or min(len(TASKS), os.cpu_count() or 1)


def warmup(processes=None):
    """Compile the serial and parallel variant of every kernel the dispatch layer can pick on
    this machine (SIMD or plain as ``config.SIMD`` says), in ``processes`` worker processes
    (default: one per core, at most one per task; 1: in this process).

    Returns ``{kernel: (compilations, seconds)}`` of what was compiled now: empty when
    everything was already in the cache."""
    processes = worker_processes(processes)
    if processes == 1:
        results = [_run_task(family, parallel) for family, parallel in TASKS]
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_run_task, *zip(*TASKS)))
    compiled = defaultdict(lambda: [0, 0.0])
    for records in results:
        for kernel, seconds in records:
            compiled[kernel][0] += 1
            compiled[kernel][1] += seconds
    return {kernel: tuple(value) for kernel, value in compiled.items()}
