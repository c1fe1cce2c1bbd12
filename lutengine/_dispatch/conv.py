"""Convolution kernels: MADDNESS tree encoding of Conv2d patches read straight from the
image (:mod:`kernels.conv`), and the im2col patch matrix (NumPy) for fitting and for the
exact path.

Shapes follow PyTorch's Conv2d (groups=1, zero padding): input X (n, Cin, H, W); the patch
of output position (n, y, x) is row ``(n*Ho + y)*Wo + x``, feature ``ci*kh*kw + dy*kw + dx``
(``torch.nn.functional.unfold`` and ``weight.reshape(Cout, -1)`` order), with
``Ho = (H + 2*ph - kh) // sh + 1`` and ``Wo`` alike. ``kernel_size``, ``stride`` and
``padding`` are each an int or an (height, width) pair. No validation here: the caller
checks shapes, split dims (< Cin·kh·kw) and that the kernel fits the padded input.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kernels import conv

from .. import config
from .choice import runs_parallel, threads

def _pair(value):
    """``(a, b)`` from an int or a pair, as Python ints (one compiled kernel signature)."""
    if np.ndim(value) == 0:
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def geometry(X_shape, kernel_size, stride=1, padding=0):
    """``((kh, kw), (sh, sw), (ph, pw), (Ho, Wo))`` of a convolution of an input of shape
    ``X_shape`` (n, Cin, H, W)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    H, W = X_shape[2], X_shape[3]
    return (kh, kw), (sh, sw), (ph, pw), ((H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)


def encode_tree_conv(X, split_dims, thresholds, kernel_size, stride=1, padding=0):
    """uint8 codes (n*Ho*Wo, C) of the trees (``split_dims`` (C, 4) int64 patch features,
    ``thresholds`` (C, 16) float32 heap-ordered) on the conv patches of X (float32,
    C-contiguous (n, Cin, H, W)), read from X without forming them; and the count of units
    that read a NaN/Inf (nonzero iff one was read). Equal to
    ``_dispatch.lut.encode_tree(im2col(X, ...), split_dims, thresholds)``."""
    X = np.ascontiguousarray(X, dtype=np.float32)  # the kernel's one signature; no copy when so
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = geometry(X.shape, kernel_size, stride, padding)
    nrows = X.shape[0] * Ho * Wo
    codes = np.empty((nrows, split_dims.shape[0]), dtype=np.uint8)
    parallel = runs_parallel(nrows, config.PARALLEL_MIN_ROWS)
    kernel = conv.encode_tree_conv_parallel if parallel else conv.encode_tree_conv_serial
    nonfinite = kernel(X, split_dims, thresholds, kh, kw, sh, sw, ph, pw, codes,
                       _unit_rows(X.shape[0], Ho, Wo, split_dims.shape[0], parallel), threads())
    return codes, nonfinite


def _unit_rows(n, Ho, Wo, C, parallel):
    """Output rows per work unit: as many as :data:`lutengine.config.CONV_SCRATCH_BYTES`
    holds, at most Ho, and in parallel few enough for 4 units per worker where the images allow (one image)."""
    rows = config.CONV_SCRATCH_BYTES // (16 * max(C, 1) * max(Wo, 1))
    if parallel:
        rows = min(rows, n * Ho // (4 * threads()))
    return max(1, min(rows, Ho))


def im2col(X, kernel_size, stride=1, padding=0):
    """The patch matrix: float32 (n*Ho*Wo, Cin*kh*kw), C-contiguous, rows and features
    ordered as :func:`encode_tree_conv` reads them (``torch.nn.functional.unfold(X).
    transpose(1, 2).reshape(-1, Cin*kh*kw)``)."""
    X = np.asarray(X, dtype=np.float32)
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = geometry(X.shape, kernel_size, stride, padding)
    if ph or pw:
        X = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(X, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    n, Cin = X.shape[:2]
    patches = np.empty((n, Ho, Wo, Cin, kh, kw), dtype=np.float32)
    np.copyto(patches, windows.transpose(0, 2, 3, 1, 4, 5))
    return patches.reshape(n * Ho * Wo, Cin * kh * kw)


def warmup(parallel):
    """Call the encoder once on tiny inputs: the serial variant, or with ``parallel`` the
    parallel one (needs more than one thread)."""
    rng = np.random.default_rng(0)
    n = -(-config.PARALLEL_MIN_ROWS // 64) if parallel else 2  # 64 positions per image
    X = rng.standard_normal((n, 2, 8, 8)).astype(np.float32)
    split_dims = np.array([[0, 4, 9, 17], [3, 8, 13, 16]], dtype=np.int64)
    thresholds = np.zeros((2, 16), dtype=np.float32)
    encode_tree_conv(X, split_dims, thresholds, 3, 1, 1)
    if not parallel:
        im2col(X, 3, 1, 1)
