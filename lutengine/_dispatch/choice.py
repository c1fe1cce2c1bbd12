"""The choices every kernel family makes: thread count, serial or parallel, SIMD or plain."""


import numba

from kernels import simd

from .. import config

SIMD_MODES = ("auto", "on", "off")


def threads():
    """Numba's thread count for this thread (the work is split into this many workers)."""
    return numba.get_num_threads()


def runs_parallel(nrows, min_rows):
    """Whether a kernel over ``nrows`` rows (or queries) runs its parallel variant: more than
    one thread, and at least ``min_rows`` rows to share among them."""
    return threads() > 1 and nrows >= min_rows


def use_simd():
    """Whether the AVX2 kernels run (``config.SIMD``: "auto" = where the CPU has AVX2,
    "on" = required, "off" = never). CPU features are detected once."""
    mode = config.SIMD
    if mode not in SIMD_MODES:
        raise ValueError(f"config.SIMD (or LUTENGINE_SIMD) must be one of {SIMD_MODES}, "
                         f"got {mode!r}")
    if mode == "off":
        return False
    if simd.has_avx2():
        return True
    if mode == "on":
        raise RuntimeError("config.SIMD (or LUTENGINE_SIMD) is 'on', but the CPU Numba compiles "
                           "for has no AVX2; use 'auto' or 'off' for the plain kernels")
    return False

