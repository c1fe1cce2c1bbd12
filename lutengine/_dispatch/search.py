"""Maximum inner product search kernels: exact top-k helpers, H2-ALSH queries, fast scan.

Their parallel variants split the queries among the workers, so they run for more than one
query when more than one thread is available.
"""

import numpy as np

from kernels import fastscan, qalsh, topk

from .choice import runs_parallel, threads, use_simd


def _parallel(nqueries, nworkers=None):
    if nworkers is not None:
        return nworkers > 1 and nqueries > 1
    return runs_parallel(nqueries, 2)


def merge_topk(scores, offset, rows, top_scores, top_ids):
    """Merge block ``scores`` (ids ``offset + j``) into the running top-k of the queries
    ``rows`` (:func:`kernels.topk.merge_topk_parallel`), in place."""
    kernel = topk.merge_topk_parallel if _parallel(rows.shape[0]) else topk.merge_topk_serial
    kernel(np.ascontiguousarray(scores), offset, rows, top_scores, top_ids)


def rows_dot(rows, positions, Q):
    """float32 ``out[q, j] = <rows[positions[q, j]], Q[q]>``, one row at a time."""
    out = np.empty(positions.shape, dtype=np.float32)
    kernel = topk.rows_dot_parallel if _parallel(positions.shape[0]) else topk.rows_dot_serial
    kernel(rows, positions, Q, out)
    return out


def h2alsh_search(state, W_sorted, norms_sorted, Q, query_keys, k, nworkers):
    """The H2-ALSH query (:mod:`kernels.qalsh`) of every row of Q with its projections
    ``query_keys``: (positions int64 (nq, k), scores float32 (nq, k))."""
    nq = Q.shape[0]
    out_pos = np.empty((nq, k), dtype=np.int64)
    out_scores = np.empty((nq, k), dtype=np.float32)
    kernel = qalsh.h2alsh_search_parallel if _parallel(nq, nworkers) else qalsh.h2alsh_search_serial
    kernel(W_sorted, np.asarray(norms_sorted, dtype=np.float32), Q, k,
           state["ring_bounds"], state["ring_m"], state["ring_l"], state["proj_off"],
           state["key_off"], query_keys, state["keys"], state["ids"],
           float(state["scale"]), float(state["width"]), float(state["c0"]),
           int(state["candidates"]) + k - 1, int(state["scan_size"]), out_pos, out_scores,
           int(nworkers))
    return out_pos, out_scores


def fastscan_tables(Q, centroids, bounds, npairs, nworkers):
    """uint8 query tables (nq, 2·npairs, 16), float32 offsets and scales (nq,)."""
    nq = Q.shape[0]
    qtables = np.empty((nq, npairs * 2, 16), dtype=np.uint8)
    offsets = np.empty(nq, dtype=np.float32)
    scales = np.empty(nq, dtype=np.float32)
    kernel = fastscan.fastscan_tables_parallel if _parallel(nq, nworkers) \
        else fastscan.fastscan_tables_serial
    kernel(Q, centroids, bounds, qtables, offsets, scales, nworkers)
    return qtables, offsets, scales


def fastscan_search(packed, nrows, tables, norms, rows, Q, k, rerank, nworkers):
    """The fast-scan top-k (:mod:`kernels.fastscan`) with the query ``tables`` of
    :func:`fastscan_tables`: (positions int64 (nq, k), exact scores float32 (nq, k))."""
    nq = Q.shape[0]
    out_pos = np.empty((nq, k), dtype=np.int64)
    out_scores = np.empty((nq, k), dtype=np.float32)
    kernel = fastscan.fastscan_search if use_simd() else fastscan.fastscan_search_plain
    kernel(packed, nrows, *tables, norms, rows, Q, k, rerank, out_pos, out_scores, int(nworkers))
    return out_pos, out_scores


def warmup(parallel):
    """Call every kernel of this family once on tiny inputs: the serial variants, or with
    ``parallel`` the parallel ones (needs more than one thread)."""
    from .. import h2alsh  # the driver builds the H2-ALSH state the kernel reads
    nworkers = threads() if parallel else 1
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 8)).astype(np.float32)
    norms = np.linalg.norm(rows, axis=1).astype(np.float32)
    order = np.argsort(-norms, kind="stable")
    rows, norms = np.ascontiguousarray(rows[order]), np.ascontiguousarray(norms[order])
    Q = rng.standard_normal((3, 8)).astype(np.float32)
    top_scores = np.full((3, 2), -np.inf, dtype=np.float32)
    merge_topk(Q @ rows.T, 0, np.arange(3, dtype=np.int64), top_scores,
               np.full((3, 2), -1, dtype=np.int64))
    rows_dot(rows, np.zeros((3, 2), dtype=np.int64), Q)
    h2alsh.search(h2alsh.build(rows, norms, scan_threshold=10, rng=0), rows, norms, Q, 2,
                  nworkers)
    bounds = np.array([0, 3, 6, 8], dtype=np.int64)  # an odd count: a padding table
    centroids = rng.standard_normal((3, 16, 3)).astype(np.float32)
    tables = fastscan_tables(Q, centroids, bounds, 2, nworkers)
    fastscan_search(np.zeros((2, 2, 32), dtype=np.uint8), 64, tables, norms, rows, Q, 2, 5,
                    nworkers)
