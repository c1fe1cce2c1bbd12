"""The fused forward of a chain of quantised MADDNESS layers (:mod:`kernels.fused`): the
plan's flat layout, serial vs parallel, the output."""

from typing import NamedTuple

import numpy as np

from kernels import fused

from .. import config
from .choice import runs_parallel, threads

#: the tables' widths are padded with zeros to a multiple of this (whole 32-byte vectors)
_PAD = 32


class Plan(NamedTuple):
    """The arrays :func:`fused_chain` passes to the kernel (see :mod:`kernels.fused`), built
    once by :func:`build_plan`."""

    split_dims: np.ndarray
    thresholds: np.ndarray
    luts: np.ndarray
    inv_scale: np.ndarray
    shift: np.ndarray
    layout: np.ndarray
    n_features: int
    n_outputs: int


def build_plan(split_dims, thresholds, luts_q, inv_scale, shift, n_features):
    """The kernel's flat arrays from per-layer lists, already compacted: ``split_dims[l]``
    int (C_l, 4) indexing layer l's input (X for l = 0, layer l − 1's computed columns
    otherwise), ``thresholds[l]`` (C_l, 16), ``luts_q[l]`` uint8 (C_l, 16, W_l),
    ``inv_scale[l]``, ``shift[l]`` (W_l,) for the W_l columns layer l computes."""
    layout = np.zeros((len(luts_q), fused.LAYOUT_COLUMNS), dtype=np.int64)
    code_start = lut_start = vec_start = 0
    tables = []
    for layer, q in enumerate(luts_q):
        C, _, width = q.shape
        padded = -(-width // _PAD) * _PAD
        table = np.zeros((C, 16, padded), dtype=np.uint8)
        table[:, :, :width] = q
        tables.append(table.ravel())
        layout[layer] = (code_start, C, lut_start, padded, width, vec_start)
        code_start, lut_start, vec_start = code_start + C, lut_start + table.size, vec_start + width

    def flat(arrays, dtype):
        return np.ascontiguousarray(np.concatenate([np.asarray(a).ravel() for a in arrays]),
                                    dtype=dtype)

    return Plan(np.ascontiguousarray(np.concatenate(split_dims), dtype=np.int64),
                np.ascontiguousarray(np.concatenate(thresholds), dtype=np.float32),
                flat(tables, np.uint8), flat(inv_scale, np.float32), flat(shift, np.float32),
                layout, int(n_features), int(layout[-1, fused.WIDTH]))


def fused_chain(X, plan):
    """float32 (n, plan.n_outputs) of C-ordered float32 X (n, plan.n_features), and how
    many row blocks read NaN/Inf from X."""
    n = X.shape[0]
    out = np.empty((n, plan.n_outputs), dtype=np.float32)
    # small batches never ask Numba for the thread count (batch-1 latency)
    if n >= config.PARALLEL_MIN_ROWS and runs_parallel(n, config.PARALLEL_MIN_ROWS):
        nonfinite = fused.fused_chain_parallel(X, plan.split_dims, plan.thresholds, plan.luts,
                                               plan.inv_scale, plan.shift, plan.layout, out,
                                               config.FUSED_BLOCK_ROWS, threads())
    else:
        nonfinite = fused.fused_chain_serial(X, plan.split_dims, plan.thresholds, plan.luts,
                                             plan.inv_scale, plan.shift, plan.layout, out,
                                             config.FUSED_BLOCK_ROWS, 1)
    return out, nonfinite


def warmup(parallel):
    """Call the fused kernel once on a tiny two-layer chain: the serial variant, or with
    ``parallel`` the parallel one (needs more than one thread)."""
    rng = np.random.default_rng(0)
    n = config.PARALLEL_MIN_ROWS if parallel else 40
    X = rng.standard_normal((n, 8)).astype(np.float32)
    plan = build_plan([np.arange(8, dtype=np.int64).reshape(2, 4),
                       np.array([[0, 1, 2, 3]], dtype=np.int64)],
                      [np.zeros((2, 16), np.float32), np.zeros((1, 16), np.float32)],
                      [rng.integers(0, 256, (2, 16, 4), dtype=np.uint8),
                       rng.integers(0, 256, (1, 16, 3), dtype=np.uint8)],
                      [np.ones(4, np.float32), np.ones(3, np.float32)],
                      [np.zeros(4, np.float32), np.zeros(3, np.float32)], 8)
    fused_chain(X, plan)
