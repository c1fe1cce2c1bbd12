"""Compile every kernel once on tiny inputs (fills Numba's on-disk cache)."""

import numpy as np

from kernels import encode, fastscan, lut, onehot, packed, scan, simd, split, topk

from . import _dispatch, h2alsh


def warmup():
    """Compile the serial and parallel variant of every kernel; returns their count."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    XF = np.asfortranarray(X)
    dims = np.arange(8, dtype=np.int64).reshape(2, 4)
    thresholds = np.zeros((2, 16), dtype=np.float32)
    codes = np.empty((40, 2), dtype=np.uint8)
    cols = np.arange(8, dtype=np.int64)
    bounds = np.array([0, 4, 8], dtype=np.int64)
    centroids = rng.standard_normal((2, 16, 4)).astype(np.float32)
    compiled = 0
    for variant in (encode.encode_tree_serial, encode.encode_tree_parallel):
        variant(X, dims, thresholds, codes, 8, False, 2)
        variant(XF, dims, thresholds, codes, 8, True, 2)
        compiled += 1
    for variant in (encode.encode_pq_serial, encode.encode_pq_parallel):
        variant(X, cols, bounds, centroids, codes, 8, 2)
        variant(XF, cols, bounds, centroids, codes, 8, 2)
        compiled += 1
    prototypes = rng.standard_normal((2, 16, 8)).astype(np.float32)
    B = rng.standard_normal((8, 3)).astype(np.float32)
    luts = lut.build_luts(prototypes, B)
    luts_q = np.empty(luts.shape, dtype=np.uint8)
    offsets = np.empty((2, 3), dtype=np.float32)
    scales = np.empty(3, dtype=np.float32)
    for variant in (lut.quantize_luts_serial, lut.quantize_luts_parallel):
        variant(luts, offsets, scales, luts_q)
        compiled += 1
    out = np.empty((40, 3), dtype=np.float32)
    out_bias = np.zeros(3, dtype=np.float32)
    inv_scale, shift = _dispatch.dequantization(scales, offsets.sum(axis=0), out_bias)
    for variant in (scan.scan_quantized_serial, scan.scan_quantized_parallel):
        variant(codes, luts_q, inv_scale, shift, out, 8, 2)
        compiled += 1
    if simd.has_avx2():  # the packed SIMD path (AVX2 code cannot even compile without it)
        codes_packed = np.empty((2, 1, packed.BLOCK), dtype=np.uint8)
        for encoder, scanner in ((packed.encode_tree_packed_serial,
                                  packed.scan_quantized_packed_serial),
                                 (packed.encode_tree_packed_parallel,
                                  packed.scan_quantized_packed_parallel)):
            encoder(X, dims, thresholds, codes_packed, 32, False, 2)
            encoder(XF, dims, thresholds, codes_packed, 32, True, 2)
            scanner(codes_packed, luts_q, inv_scale, shift,
                    np.empty((3, 40), dtype=np.float32), 32, 2)
            compiled += 2
    for variant in (scan.scan_float_serial, scan.scan_float_parallel):
        variant(codes, luts, out_bias, out, 8)
        compiled += 1
    for variant in (onehot.onehot_gram_serial, onehot.onehot_gram_parallel):
        variant(codes, 2)
        compiled += 1
    for variant in (onehot.onehot_rowsum_serial, onehot.onehot_rowsum_parallel):
        variant(codes, X, 2)
        compiled += 1
    top_scores = np.full((40, 3), -np.inf, dtype=np.float32)
    top_ids = np.full((40, 3), -1, dtype=np.int64)
    ids = np.zeros((40, 3), dtype=np.int64)
    for merge, dot in ((topk.merge_topk_serial, topk.rows_dot_serial),
                       (topk.merge_topk_parallel, topk.rows_dot_parallel)):
        merge(X, 0, np.arange(40, dtype=np.int64), top_scores, top_ids)
        dot(X, ids, X, out)
        compiled += 2
    split.best_split(X, np.arange(40, dtype=np.int64), 0)
    norms = np.sort(np.linalg.norm(X, axis=1).astype(np.float32))[::-1].copy()
    rows = np.ascontiguousarray(X[np.argsort(-np.linalg.norm(X, axis=1), kind="stable")])
    state = h2alsh.build(rows, norms, scan_threshold=10, rng=np.random.default_rng(0))
    for nworkers in (1, 2):  # serial and parallel query kernels
        h2alsh.search(state, rows, norms, X[:3], 2, nworkers)
        compiled += 1
    compiled += _warmup_fastscan(rows, norms, X[:3])
    return compiled + 2  # + build_luts and best_split


def _warmup_fastscan(rows, norms, Q):
    """The fast-scan MIPS kernels (kernels/fastscan.py); the SIMD ones only with AVX2."""
    N, d = rows.shape
    bounds = np.array([0, 3, 6, 8], dtype=np.int64)  # odd count: a padding table
    centroids = np.random.default_rng(1).standard_normal((3, 16, 3)).astype(np.float32)
    codes_packed = np.zeros(((N + 31) // 32, 2, 32), dtype=np.uint8)
    qtables = np.empty((Q.shape[0], 4, 16), dtype=np.uint8)
    offsets = np.empty(Q.shape[0], dtype=np.float32)
    scales = np.empty(Q.shape[0], dtype=np.float32)
    scores = np.empty((Q.shape[0], codes_packed.shape[0] * 32), dtype=np.uint16)
    pos = np.empty((Q.shape[0], 2), dtype=np.int64)
    top = np.empty((Q.shape[0], 2), dtype=np.float32)
    variants = [(fastscan.fastscan_scan_plain_serial, fastscan.fastscan_search_plain_serial),
                (fastscan.fastscan_scan_plain_parallel, fastscan.fastscan_search_plain_parallel)]
    if simd.has_avx2():
        variants += [(fastscan.fastscan_scan_serial, fastscan.fastscan_search_serial),
                     (fastscan.fastscan_scan_parallel, fastscan.fastscan_search_parallel)]
    compiled = 0
    for tables in (fastscan.fastscan_tables_serial, fastscan.fastscan_tables_parallel):
        tables(Q, centroids, bounds, qtables, offsets, scales, 2)
        compiled += 1
    for scanner, searcher in variants:
        scanner(codes_packed, qtables, N, scores)
        searcher(codes_packed, N, qtables, offsets, scales, norms, rows, Q, 2, 5, pos, top, 2)
        compiled += 2
    return compiled
