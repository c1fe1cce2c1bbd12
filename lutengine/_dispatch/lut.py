"""Lookup-table matmul kernels (MADDNESS, PQ): encoders, scans, tables, fit-time products."""

import numpy as np

from kernels import encode, lut, onehot, packed, scan, split

from .. import config
from .choice import runs_parallel, threads, use_simd


def _parallel(nrows):
    return runs_parallel(nrows, config.PARALLEL_MIN_ROWS)


def _whole_packed_blocks(rows):
    """A row count rounded down to whole 32-row packed blocks (at least one)."""
    return max(packed.BLOCK, rows // packed.BLOCK * packed.BLOCK)


def _columns_contiguous(X):
    return X.flags.f_contiguous and not X.flags.c_contiguous


def _encode_block_rows(columns_contiguous):
    return config.ENCODE_BLOCK_ROWS_F if columns_contiguous else config.ENCODE_BLOCK_ROWS_C


def encode_tree_packed(X, split_dims, thresholds):
    """Codes in the packed layout of :mod:`kernels.packed`, and whether a NaN/Inf was read."""
    C = split_dims.shape[0]
    codes = np.empty(((X.shape[0] + packed.BLOCK - 1) // packed.BLOCK, (C + 1) // 2,
                      packed.BLOCK), dtype=np.uint8)
    columns_contiguous = _columns_contiguous(X)
    kernel = packed.encode_tree_packed_parallel if _parallel(X.shape[0]) \
        else packed.encode_tree_packed_serial
    nonfinite = kernel(X, split_dims, thresholds, codes,
                       _whole_packed_blocks(_encode_block_rows(columns_contiguous)),
                       columns_contiguous, threads())
    return codes, nonfinite


def scan_quantized_packed(codes, nrows, luts_q, scales, offset_sums, out_bias):
    """:func:`scan_quantized` on packed codes of ``nrows`` rows (same bits), F-ordered: the
    kernel writes each output's column contiguously, as MADDNESS's reference does."""
    out_t = np.empty((luts_q.shape[2], nrows), dtype=np.float32)
    kernel = packed.scan_quantized_packed_parallel if _parallel(nrows) \
        else packed.scan_quantized_packed_serial
    kernel(codes, luts_q, *dequantization(scales, offset_sums, out_bias), out_t,
           config.PACKED_SCAN_CHUNK_ROWS, threads())
    return out_t.T


def encode_tree(X, split_dims, thresholds):
    """uint8 codes (n, C) and whether a NaN/Inf was read."""
    codes = np.empty((X.shape[0], split_dims.shape[0]), dtype=np.uint8)
    columns_contiguous = _columns_contiguous(X)
    kernel = encode.encode_tree_parallel if _parallel(X.shape[0]) else encode.encode_tree_serial
    nonfinite = kernel(X, split_dims, thresholds, codes, _encode_block_rows(columns_contiguous),
                       columns_contiguous, threads())
    return codes, nonfinite


def encode_pq(X, subspace_cols, subspace_bounds, centroids):
    """uint8 codes (n, C) of the nearest centroids, and whether a NaN/Inf was read."""
    codes = np.empty((X.shape[0], subspace_bounds.shape[0] - 1), dtype=np.uint8)
    kernel = encode.encode_pq_parallel if _parallel(X.shape[0]) else encode.encode_pq_serial
    nonfinite = kernel(X, subspace_cols, subspace_bounds, centroids, codes, config.SCAN_BLOCK_ROWS,
                       threads())
    return codes, nonfinite


def dequantization(scales, offset_sums, out_bias):
    """``(inv_scale, shift)``, float32 (M,), of the quantised scans' dequantisation
    ``float32(acc) * inv_scale[m] + shift[m]`` (one multiply-add, which every CPU and GPU
    kernel rounds alike): ``shift = Σ_c offsets[c, m] + out_bias[m]``. The sums are exact
    and the entries rounded to nearest, so there is no rounding bias to remove."""
    inv_scale = np.float32(1.0) / np.asarray(scales, dtype=np.float32)
    shift = np.asarray(offset_sums, dtype=np.float32) + np.asarray(out_bias, dtype=np.float32)
    return inv_scale, shift


def scan_quantized(codes, luts_q, scales, offset_sums, out_bias):
    """Quantised scan of codes (n, C) with uint8 tables (C, 16, M), per-output ``scales``
    (M,) and per-output sums of the tables' offsets (M,), plus ``out_bias``: float32 (n, M)."""
    out = np.empty((codes.shape[0], luts_q.shape[2]), dtype=np.float32)
    kernel = scan.scan_quantized_parallel if _parallel(codes.shape[0]) else scan.scan_quantized_serial
    kernel(codes, luts_q, *dequantization(scales, offset_sums, out_bias), out,
           config.SCAN_BLOCK_ROWS, threads())
    return out


def scan_float(codes, luts, out_bias):
    """Float scan: ``out_bias + Σ_c luts[c, codes[:, c]]``, float32 (n, M)."""
    out = np.empty((codes.shape[0], luts.shape[2]), dtype=np.float32)
    kernel = scan.scan_float_parallel if _parallel(codes.shape[0]) else scan.scan_float_serial
    kernel(codes, luts, out_bias, out, config.SCAN_BLOCK_ROWS)
    return out


def build_luts(prototypes, B):
    """float32 tables (C, 16, M) = prototypes · B."""
    return lut.build_luts(prototypes, B)


def quantize_luts(luts):
    """uint8 quantisation of float32 tables (C, 16, M), per output: (luts_q uint8 (C, 16, M),
    offsets float32 (C, M), scales float32 (M,))."""
    C, _, M = luts.shape
    luts_q = np.empty(luts.shape, dtype=np.uint8)
    offsets = np.empty((C, M), dtype=np.float32)
    scales = np.empty(M, dtype=np.float32)
    kernel = lut.quantize_luts_parallel if threads() > 1 else lut.quantize_luts_serial
    kernel(luts, offsets, scales, luts_q)
    return luts_q, offsets, scales


def onehot_gram(codes):
    """GᵀG in float64 (16C × 16C) for the one-hot matrix G of the codes."""
    kernel = onehot.onehot_gram_parallel if _parallel(codes.shape[0]) else onehot.onehot_gram_serial
    return kernel(codes, threads())


def onehot_rowsum(codes, A):
    """GᵀA in float64 (16C × D): the rows of A scatter-added by their codes."""
    kernel = onehot.onehot_rowsum_parallel if _parallel(codes.shape[0]) else onehot.onehot_rowsum_serial
    return kernel(codes, A, threads())


def best_split(X, rows, dim):
    """The best cut of ``X[rows]`` on column ``dim`` (:func:`kernels.split.best_split`)."""
    return split.best_split(X, rows, dim)


def warmup(parallel):
    """Call every kernel of this family once on tiny inputs: the serial variants (and the
    kernels without a parallel twin), or with ``parallel`` the parallel ones (needs more
    than one thread). Which SIMD or plain variants run follows :func:`use_simd`."""
    rng = np.random.default_rng(0)
    n = config.PARALLEL_MIN_ROWS if parallel else 40
    X = rng.standard_normal((n, 8)).astype(np.float32)
    split_dims = np.arange(8, dtype=np.int64).reshape(2, 4)
    thresholds = np.zeros((2, 16), dtype=np.float32)
    cols, bounds = np.arange(8, dtype=np.int64), np.array([0, 4, 8], dtype=np.int64)
    centroids = rng.standard_normal((2, 16, 4)).astype(np.float32)
    prototypes = rng.standard_normal((2, 16, 8)).astype(np.float32)
    B = rng.standard_normal((8, 3)).astype(np.float32)
    luts = np.einsum("ckd,dm->ckm", prototypes, B).astype(np.float32)
    bias = np.zeros(3, dtype=np.float32)
    luts_q, offsets, scales = quantize_luts(luts)
    for A in (X, np.asfortranarray(X)):  # row- and column-contiguous inputs
        codes = encode_tree(A, split_dims, thresholds)[0]
        encode_pq(A, cols, bounds, centroids)
        if use_simd():
            scan_quantized_packed(encode_tree_packed(A, split_dims, thresholds)[0], n, luts_q,
                                  scales, offsets.sum(axis=0), bias)
    scan_quantized(codes, luts_q, scales, offsets.sum(axis=0), bias)
    scan_float(codes, luts, bias)
    onehot_gram(codes)
    onehot_rowsum(codes, X)
    if not parallel:
        build_luts(prototypes, B)
        best_split(X, np.arange(n, dtype=np.int64), 0)
