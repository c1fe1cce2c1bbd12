"""Choosing the kernel variant (serial or parallel, SIMD or plain) and the block sizes, and
allocating outputs. Results do not depend on the choice (tests/test_kernels.py checks 1 vs 2
threads, tests/test_simd.py SIMD vs plain)."""

import numba
import numpy as np

from kernels import encode, lut, onehot, packed, scan, simd

from . import config


def _parallel(nrows):
    return numba.get_num_threads() > 1 and nrows >= config.PARALLEL_MIN_ROWS


SIMD_MODES = ("auto", "on", "off")


def use_simd():
    """Whether the AVX2 packed MADDNESS path runs (``config.SIMD``: "auto" = where the CPU
    has AVX2, "on" = required, "off" = never). CPU features are detected once."""
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


def _whole_packed_blocks(rows):
    """A row count rounded down to whole 32-row packed blocks (at least one)."""
    return max(packed.BLOCK, rows // packed.BLOCK * packed.BLOCK)


def encode_tree_packed(X, split_dims, thresholds):
    """Codes in the packed layout of :mod:`kernels.packed`, and whether a NaN/Inf was read."""
    C = split_dims.shape[0]
    codes = np.empty(((X.shape[0] + packed.BLOCK - 1) // packed.BLOCK, (C + 1) // 2,
                      packed.BLOCK), dtype=np.uint8)
    columns_contiguous = X.flags.f_contiguous and not X.flags.c_contiguous
    block = config.ENCODE_BLOCK_ROWS_F if columns_contiguous else config.ENCODE_BLOCK_ROWS_C
    kernel = packed.encode_tree_packed_parallel if _parallel(X.shape[0]) \
        else packed.encode_tree_packed_serial
    nonfinite = kernel(X, split_dims, thresholds, codes, _whole_packed_blocks(block),
                       columns_contiguous, numba.get_num_threads())
    return codes, nonfinite


def scan_quantized_packed(codes, nrows, luts_q, scales, offset_sums, out_bias):
    """:func:`scan_quantized` on packed codes of ``nrows`` rows (same bits), F-ordered: the
    kernel writes each output's column contiguously, as MADDNESS's reference does."""
    out_t = np.empty((luts_q.shape[2], nrows), dtype=np.float32)
    kernel = packed.scan_quantized_packed_parallel if _parallel(nrows) \
        else packed.scan_quantized_packed_serial
    kernel(codes, luts_q, *dequantization(scales, offset_sums, out_bias), out_t,
           config.PACKED_SCAN_CHUNK_ROWS, numba.get_num_threads())
    return out_t.T


def encode_tree(X, split_dims, thresholds):
    """uint8 codes (n, C) and whether a NaN/Inf was read."""
    codes = np.empty((X.shape[0], split_dims.shape[0]), dtype=np.uint8)
    columns_contiguous = X.flags.f_contiguous and not X.flags.c_contiguous
    block = config.ENCODE_BLOCK_ROWS_F if columns_contiguous else config.ENCODE_BLOCK_ROWS_C
    kernel = encode.encode_tree_parallel if _parallel(X.shape[0]) else encode.encode_tree_serial
    nonfinite = kernel(X, split_dims, thresholds, codes, block, columns_contiguous, numba.get_num_threads())
    return codes, nonfinite


def encode_pq(X, subspace_cols, subspace_bounds, centroids):
    codes = np.empty((X.shape[0], subspace_bounds.shape[0] - 1), dtype=np.uint8)
    kernel = encode.encode_pq_parallel if _parallel(X.shape[0]) else encode.encode_pq_serial
    nonfinite = kernel(X, subspace_cols, subspace_bounds, centroids, codes, config.SCAN_BLOCK_ROWS,
                       numba.get_num_threads())
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
           config.SCAN_BLOCK_ROWS, numba.get_num_threads())
    return out


def scan_float(codes, luts, out_bias):
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
    kernel = lut.quantize_luts_parallel if numba.get_num_threads() > 1 else lut.quantize_luts_serial
    kernel(luts, offsets, scales, luts_q)
    return luts_q, offsets, scales


def onehot_gram(codes):
    """GᵀG in float64 (16C × 16C) for the one-hot matrix G of the codes."""
    kernel = onehot.onehot_gram_parallel if _parallel(codes.shape[0]) else onehot.onehot_gram_serial
    return kernel(codes, numba.get_num_threads())


def onehot_rowsum(codes, A):
    """GᵀA in float64 (16C × D): the rows of A scatter-added by their codes."""
    kernel = onehot.onehot_rowsum_parallel if _parallel(codes.shape[0]) else onehot.onehot_rowsum_serial
    return kernel(codes, A, numba.get_num_threads())
