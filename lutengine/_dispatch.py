"""Choosing the kernel variant (serial or parallel, SIMD or plain) and the block sizes, and
allocating outputs. Results do not depend on the choice (tests/test_kernels.py checks 1 vs 2
threads, tests/test_simd.py SIMD vs plain)."""

import functools

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


def scan_average_packed(codes, nrows, luts_q, scale, offset, out_bias):
    """:func:`scan_average` on packed codes of ``nrows`` rows (same bits), F-ordered: the
    kernel writes each output's column contiguously, as MADDNESS's reference does."""
    starts, sizes, _ = average_groups(luts_q.shape[0])
    out_t = np.empty((luts_q.shape[2], nrows), dtype=np.float32)
    kernel = packed.scan_average_packed_parallel if _parallel(nrows) \
        else packed.scan_average_packed_serial
    kernel(codes, luts_q, starts, sizes,
           *dequantization(scale, luts_q.shape[0], offset, out_bias), out_t,
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


@functools.lru_cache(maxsize=None)
def average_groups(ncodebooks):
    """Group layout of the averaged accumulation: runs of 16 codebooks, the remainder
    split into powers of two. Returns (starts, sizes, bias) with the rounding bias
    Σ size/4 · log2(size) in LUT quanta (maddness.md §4.3)."""
    sizes = [16] * (ncodebooks // 16)
    rest = ncodebooks % 16
    sizes += [s for s in (8, 4, 2, 1) if rest & s]
    sizes = np.array(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    bias = float(np.sum(sizes / 4.0 * np.log2(sizes)))
    starts.flags.writeable = sizes.flags.writeable = False  # cached: shared by every call
    return starts, sizes, bias


def dequantization(scale, ncodebooks, offset, out_bias):
    """``(inv_scale, shift)`` of the averaged scans' dequantisation ``float32(acc) *
    inv_scale + shift[m]`` (one multiply-add, which every CPU and GPU kernel rounds alike):
    ``shift`` folds the groups' rounding bias, the tables' offset and the output bias."""
    bias = average_groups(ncodebooks)[2]
    inv_scale = np.float32(1.0) / np.float32(scale)
    return inv_scale, (np.float32(offset) + np.asarray(out_bias, dtype=np.float32)
                       - np.float32(bias) * inv_scale)


def scan_average(codes, luts_q, scale, offset, out_bias):
    starts, sizes, _ = average_groups(codes.shape[1])
    out = np.empty((codes.shape[0], luts_q.shape[2]), dtype=np.float32)
    kernel = scan.scan_average_parallel if _parallel(codes.shape[0]) else scan.scan_average_serial
    kernel(codes, luts_q, starts, sizes, *dequantization(scale, codes.shape[1], offset, out_bias),
           out, config.SCAN_BLOCK_ROWS, numba.get_num_threads())
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
    """uint8 quantisation of float32 tables (C, 16, M): (luts_q, per-codebook offsets, scale)."""
    luts_q = np.empty(luts.shape, dtype=np.uint8)
    kernel = lut.quantize_luts_parallel if numba.get_num_threads() > 1 else lut.quantize_luts_serial
    mins, scale = kernel(luts, luts_q)
    return luts_q, mins, np.float32(scale)


def onehot_gram(codes):
    """GᵀG in float64 (16C × 16C) for the one-hot matrix G of the codes."""
    kernel = onehot.onehot_gram_parallel if _parallel(codes.shape[0]) else onehot.onehot_gram_serial
    return kernel(codes, config.FIT_CHUNK_ROWS)


def onehot_rowsum(codes, A):
    """GᵀA in float64 (16C × D): the rows of A scatter-added by their codes."""
    kernel = onehot.onehot_rowsum_parallel if _parallel(codes.shape[0]) else onehot.onehot_rowsum_serial
    return kernel(codes, A, config.FIT_CHUNK_ROWS)
