"""MADDNESS hash-tree encoding of convolution patches read straight from the image.

A Conv2d layer (groups=1) is the product of its im2col patches with the reshaped weights.
The patch of output position ``(n, y, x)`` of an NCHW input X (n, Cin, H, W), kernel
``(kh, kw)``, stride ``(sh, sw)`` and zero padding ``(ph, pw)`` holds at feature
``d = ci*kh*kw + dy*kw + dx`` (PyTorch's ``unfold`` order) the value
``X[n, ci, y*sh + dy - ph, x*sw + dx - pw]``, 0 outside the image. Tree ``c`` of
:mod:`kernels.encode` reads the 4 features ``split_dims[c, :]``; here each feature's
``(ci, dy, dx)`` is decoded once per call, and the trees read those values from X itself,
without the kh·kw-times larger patch matrix. The codes are those of
:func:`kernels.encode.encode_tree_serial` on the patches, bit for bit (same comparisons on
the same float32 values; padding reads +0.0), rows ordered ``(n, y, x)``.

Work unit: ``out_rows`` consecutive output rows of one image (``out_rows · Wo`` positions,
consecutive rows of ``codes``). Their split values are gathered row by row into
``values[c, level, i]`` (a contiguous copy of each input row's span for stride 1, zeros
where the window hangs over the border), then every tree runs branch-free across the
unit's positions (:func:`kernels.encode._tree_codes`). Units over (image, row block) pairs
share the work out for many small images and for one large one alike.
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .encode import _tree_codes  # inlined: Numba's cache of this file does not see edits there


@njit(**INLINE)
def _taps(split_dims, kh, kw, sw, pw, Wo, W):
    """The window offsets of every tree's split features: ``(ci, dy, dx, x_lo, x_hi)``,
    int64 (C, 4), with ``x_lo <= x < x_hi`` the output columns whose tap lies inside the
    image (``0 <= x*sw + dx - pw < W``); the rows are checked per output row."""
    C = split_dims.shape[0]
    ci = np.empty((C, 4), dtype=np.int64)
    dy = np.empty((C, 4), dtype=np.int64)
    dx = np.empty((C, 4), dtype=np.int64)
    x_lo = np.empty((C, 4), dtype=np.int64)
    x_hi = np.empty((C, 4), dtype=np.int64)
    taps = kh * kw
    for c in range(C):
        for level in range(4):
            d = split_dims[c, level]
            ci[c, level] = d // taps
            dy[c, level] = (d % taps) // kw
            dx[c, level] = d % kw
            shift = dx[c, level] - pw  # input column of output column x: x*sw + shift
            # smallest x with x*sw + shift >= 0, largest + 1 with x*sw + shift <= W - 1
            lo = (-shift + sw - 1) // sw if shift < 0 else 0
            hi = (W - 1 - shift) // sw + 1 if W - 1 - shift >= 0 else 0
            x_lo[c, level] = min(max(lo, 0), Wo)
            x_hi[c, level] = min(max(hi, x_lo[c, level]), Wo)
    return ci, dy, dx, x_lo, x_hi


@njit(**INLINE)
def _encode_unit(X, thresholds, ci, dy, dx, x_lo, x_hi, sh, sw, ph, pw, Ho, Wo, image, y0,
                 out_rows, codes, values, block_codes):
    """Codes of output rows y0..y0+out_rows-1 (clipped to Ho) of ``image``; returns 1 if a
    value read was NaN/Inf, else 0.

    The split values are copied from X read flat with unsigned indices: Numba then emits no
    negative-index wraparound, and the short row copies (Wo values) vectorise (3x faster
    than indexing X[image, channel, iy, ix])."""
    C = thresholds.shape[0]
    Cin, H, W = X.shape[1], X.shape[2], X.shape[3]
    flat = X.reshape(-1)
    nrows = min(out_rows, Ho - y0)
    npos = nrows * Wo
    usw = np.uint64(sw)
    for c in range(C):
        for level in range(4):
            lo, hi = x_lo[c, level], x_hi[c, level]
            v = values[c, level]
            # input row of output row r: r*sh + top; rows r_lo <= r < r_hi lie inside
            top = y0 * sh + dy[c, level] - ph
            r_lo = min((-top + sh - 1) // sh, nrows) if top < 0 else 0
            r_hi = max(min((H - 1 - top) // sh + 1, nrows), r_lo) if top <= H - 1 else r_lo
            if lo > 0 or hi < Wo or r_lo > 0 or r_hi < nrows:  # the window leaves the image
                for i in range(np.uint64(npos)):
                    v[i] = np.float32(0.0)
            count = np.uint64(hi - lo)
            plane = (image * Cin + ci[c, level]) * H
            for r in range(r_lo, r_hi):
                dst = np.uint64(r * Wo + lo)
                src = np.uint64((plane + r * sh + top) * W + lo * sw + dx[c, level] - pw)
                if sw == 1:
                    for k in range(count):
                        v[dst + k] = flat[src + k]
                else:
                    for k in range(count):
                        v[dst + k] = flat[src + k * usw]
    poison = np.float32(0.0)
    for c in range(C):
        poison += _tree_codes(values[c, 0], values[c, 1], values[c, 2], values[c, 3], 0, npos,
                              thresholds[c], block_codes[c])
    first = (image * Ho + y0) * Wo
    for i in range(npos):
        for c in range(C):
            codes[first + i, c] = block_codes[c, i]
    return np.int64(poison != 0.0)


@njit(**JIT)
def encode_tree_conv_serial(X, split_dims, thresholds, kh, kw, sh, sw, ph, pw, codes, out_rows,
                            nworkers):
    """Serial twin of :func:`encode_tree_conv_parallel` (``nworkers`` is ignored)."""
    n, H, W = X.shape[0], X.shape[2], X.shape[3]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    C = split_dims.shape[0]
    ci, dy, dx, x_lo, x_hi = _taps(split_dims, kh, kw, sw, pw, Wo, W)
    values = np.empty((C, 4, out_rows * Wo), dtype=np.float32)
    block_codes = np.empty((C, out_rows * Wo), dtype=np.uint8)
    nonfinite = np.int64(0)
    for image in range(n):
        for y0 in range(0, Ho, out_rows):
            nonfinite += _encode_unit(X, thresholds, ci, dy, dx, x_lo, x_hi, sh, sw, ph, pw, Ho,
                                      Wo, image, y0, out_rows, codes, values, block_codes)
    return nonfinite


@njit(**PJIT)
def encode_tree_conv_parallel(X, split_dims, thresholds, kh, kw, sh, sw, ph, pw, codes, out_rows,
                              nworkers):
    """Write ``codes[(n*Ho + y)*Wo + x, c]`` for every output position of the convolution
    of X (float32, C-contiguous (n, Cin, H, W)) with a ``kh × kw`` kernel, stride
    ``(sh, sw)`` and zero padding ``(ph, pw)``; return how many units read NaN/Inf.

    ``split_dims`` (C, 4) are patch features (< Cin·kh·kw), ``thresholds`` (C, 16) heap
    ordered as in :mod:`kernels.encode`. A unit is ``out_rows`` output rows of one image;
    each of ``nworkers`` workers takes every ``nworkers``-th unit with its own scratch.
    """
    n, H, W = X.shape[0], X.shape[2], X.shape[3]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    C = split_dims.shape[0]
    ci, dy, dx, x_lo, x_hi = _taps(split_dims, kh, kw, sw, pw, Wo, W)
    row_blocks = (Ho + out_rows - 1) // out_rows
    nunits = n * row_blocks
    nworkers = max(1, min(nworkers, nunits))
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        # scratch allocated once per worker: private, so LLVM knows it aliases nothing
        values = np.empty((C, 4, out_rows * Wo), dtype=np.float32)
        block_codes = np.empty((C, out_rows * Wo), dtype=np.uint8)
        for u in range(w, nunits, nworkers):
            image = u // row_blocks
            y0 = (u - image * row_blocks) * out_rows
            counts[w] += _encode_unit(X, thresholds, ci, dy, dx, x_lo, x_hi, sh, sw, ph, pw, Ho,
                                      Wo, image, y0, out_rows, codes, values, block_codes)
    return counts.sum()
