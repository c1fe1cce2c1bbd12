"""Networks of layers: what :func:`lutengine.nn.from_torch` / :func:`~lutengine.nn.from_onnx`
import, run in NumPy and the Numba kernels, whose weight layers can be lookup tables.

A :class:`Network` is a sequence of ops on float32 arrays, batch first (NCHW for images):

* weight layers: :class:`Linear` (rows × W) and :class:`Conv2d` (groups 1), each holding an
  estimator with ``predict(A) ≈ A W + b`` — a :class:`~lutengine.nn.Dense` (exact) or a
  fitted :class:`~lutengine.LutMatmul`. A convolution is the product of its im2col patches
  with the reshaped filters, so a :class:`~lutengine.LutMatmul` fitted on patches replaces
  it, as MADDNESS runs its filters on Caltech-101 patches (Blalock & Guttag 2021, §5, image
  filtering); its trees read their 4·C values straight from the image (:mod:`kernels.conv`),
  the patches are never written;
* :class:`ReLU`, :class:`GELU`, :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`Flatten`,
  and a :class:`Softmax` / :class:`LogSoftmax` head.

BatchNorm is folded into the layer before it at import. :meth:`Network.forward` runs each run
of LUT layers with ReLU between them as one fused kernel call
(:class:`lutengine.runtime.FusedChain`).
"""

import math

import numpy as np
from scipy.special import erf

from . import _dispatch
from ._validation import check_int, raise_if_nonfinite_read

#: images per chunk of :meth:`Network.forward` on image inputs (bounds the patches and
#: activations held at once)
FORWARD_CHUNK_IMAGES = 256


def _n_inputs(layer):
    """Input width of a Dense (its W) or a fitted estimator."""
    return layer.W.shape[0] if hasattr(layer, "W") else layer.n_features_in_


def _n_outputs(layer):
    """Output width of a Dense (its W) or a fitted estimator."""
    return layer.W.shape[1] if hasattr(layer, "W") else layer.n_outputs_


def _check_estimator(layer, name):
    if not hasattr(layer, "W") and not hasattr(type(layer), "n_outputs_"):
        raise TypeError(f"{name} must be a Dense or a fitted estimator such as LutMatmul, got "
                        f"{type(layer).__name__}")
    return layer


def _pair(value, name, low):
    values = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return tuple(check_int(v, name, low) for v in values)


def _is_lut(layer):
    """A quantised tree-encoded LutMatmul (what the fused and conv kernels run)."""
    return hasattr(layer, "split_dims_") and getattr(layer, "quantize", False)


class Linear:
    """``A @ W + b`` on rows (n, n_in): ``layer`` is a Dense or a fitted LutMatmul."""

    def __init__(self, layer):
        self.layer = _check_estimator(layer, "layer")

    def output_shape(self, shape):
        if shape != (_n_inputs(self.layer),):
            raise ValueError(f"takes ({_n_inputs(self.layer)},) features, gets {shape}")
        return (_n_outputs(self.layer),)

    def __call__(self, H):
        return self.layer.predict(H)

    def __repr__(self):
        return f"Linear({self.layer!r})"


class Conv2d:
    """A 2-D convolution (groups 1, zero padding) as ``patches @ W + b``: W is
    (in_channels·kh·kw, out_channels) with patch features in PyTorch's ``unfold`` order
    (channel, row, column); ``layer`` is a Dense or a LutMatmul fitted on patches."""

    def __init__(self, layer, in_channels, kernel_size, stride=1, padding=0):
        self.layer = _check_estimator(layer, "layer")
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        features = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        if _n_inputs(self.layer) != features:
            raise ValueError(f"layer takes {_n_inputs(self.layer)} features, but a "
                             f"{self.kernel_size} kernel over {in_channels} channels has "
                             f"{features}")

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"takes ({self.in_channels}, H, W) images, gets {shape}")
        size = [(n + 2 * p - k) // s + 1 for n, k, s, p in
                zip(shape[1:], self.kernel_size, self.stride, self.padding)]
        if min(size) < 1:
            raise ValueError(f"a {self.kernel_size} kernel does not fit {shape[1:]} images")
        return (_n_outputs(self.layer), *size)

    def patches(self, H):
        """The im2col rows (n·Ho·Wo, in_channels·kh·kw) of images H."""
        return _dispatch.conv.im2col(H, self.kernel_size, self.stride, self.padding)

    def __call__(self, H):
        _, rows, cols = self.output_shape(H.shape[1:])
        if _is_lut(self.layer):
            codes, nonfinite = _dispatch.conv.encode_tree_conv(
                H, self.layer.split_dims_, self.layer.thresholds_, self.kernel_size,
                self.stride, self.padding)
            raise_if_nonfinite_read(nonfinite, "X")
            Y = self.layer.predict_codes(codes)
        else:
            Y = self.layer.predict(self.patches(H))
        if Y.flags.f_contiguous and not Y.flags.c_contiguous:  # the SIMD scan's channels
            return np.ascontiguousarray(Y.T.reshape(-1, len(H), rows, cols).transpose(1, 0, 2, 3))
        return np.ascontiguousarray(Y.reshape(len(H), rows, cols, -1).transpose(0, 3, 1, 2))

    def __repr__(self):
        return (f"Conv2d({self.layer!r}, in_channels={self.in_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})")


class _Elementwise:
    def output_shape(self, shape):
        return shape

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Elementwise):
    def __call__(self, H):
        return np.maximum(H, np.float32(0))


class GELU(_Elementwise):
    """x·Φ(x) with the exact normal CDF, or PyTorch's tanh approximation."""

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def __call__(self, H):
        H64 = H.astype(np.float64)
        if self.approximate == "tanh":
            cdf = 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (H64 + 0.044715 * H64 ** 3)))
        else:
            cdf = 0.5 * (1 + erf(H64 / math.sqrt(2)))
        return (H64 * cdf).astype(np.float32)

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class _Pool2d:
    """Max or average over kernel windows (stride, padding; no ceil mode, no dilation)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding {self.padding} must be at most half the kernel "
                             f"{self.kernel_size}")

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"takes (C, H, W) images, gets {shape}")
        size = [(n + 2 * p - k) // s + 1 for n, k, s, p in
                zip(shape[1:], self.kernel_size, self.stride, self.padding)]
        if min(size) < 1:
            raise ValueError(f"a {self.kernel_size} window does not fit {shape[1:]} images")
        return (shape[0], *size)

    def _reduce(self, H, fill, combine):
        """``combine`` (np.maximum or np.add) over the kh·kw window offsets, each a strided
        view of the padded input (padding ``fill``): kh·kw vector passes, no window copies."""
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        if ph or pw:
            H = np.pad(H, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        rows, cols = (H.shape[2] - kh) // sh + 1, (H.shape[3] - kw) // sw + 1
        out = None
        for dy in range(kh):
            for dx in range(kw):
                view = H[:, :, dy:dy + sh * (rows - 1) + 1:sh, dx:dx + sw * (cols - 1) + 1:sw]
                out = view.copy() if out is None else combine(out, view, out=out)
        return out

    def __repr__(self):
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")


class MaxPool2d(_Pool2d):
    def __call__(self, H):
        return self._reduce(H, -np.inf, np.maximum)


class AvgPool2d(_Pool2d):
    """Average over the window, zero padding included in the count (PyTorch's default)."""

    def __call__(self, H):
        total = self._reduce(H, 0, np.add)
        total *= np.float32(1 / (self.kernel_size[0] * self.kernel_size[1]))
        return total


class Flatten(_Elementwise):
    """(n, …) → (n, features) in C order (PyTorch's ``flatten(1)``)."""

    def output_shape(self, shape):
        return (math.prod(shape),)

    def __call__(self, H):
        return H.reshape(len(H), -1)


class Softmax(_Elementwise):
    """Row-wise softmax over the classes (a classifier's head)."""

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"runs over the classes of (n, classes) rows, gets {shape}")
        return shape

    def __call__(self, H):
        Z = H.astype(np.float64)
        Z -= Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        return (E / E.sum(axis=1, keepdims=True)).astype(np.float32)


class LogSoftmax(Softmax):
    """Row-wise log-softmax over the classes."""

    def __call__(self, H):
        Z = H.astype(np.float64)
        Z -= Z.max(axis=1, keepdims=True)
        return (Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))).astype(np.float32)


OPS = (Linear, Conv2d, ReLU, GELU, MaxPool2d, AvgPool2d, Flatten, Softmax, LogSoftmax)


class Network:
    """A sequence of ``ops`` (instances of :data:`OPS`) on inputs of ``input_shape`` (per
    example: ``(features,)`` or ``(channels, height, width)``); ``classes`` label the
    outputs of a classifier (default 0..n_outputs − 1)."""

    def __init__(self, ops, input_shape, classes=None):
        self.ops = tuple(ops)
        if not self.ops:
            raise ValueError("ops must not be empty")
        self.input_shape = tuple(check_int(n, "input_shape", 1) for n in input_shape)
        shape = self.input_shape
        self.shapes = [shape]  # shapes[i]: what ops[i] receives (shapes[-1]: the output)
        for i, op in enumerate(self.ops):
            if not isinstance(op, OPS):
                raise TypeError(f"ops[{i}] must be one of {[c.__name__ for c in OPS]}, got "
                                f"{type(op).__name__}")
            try:
                shape = op.output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"ops[{i}] ({type(op).__name__}) {exc}") from None
            self.shapes.append(shape)
        if isinstance(self.ops[-1], Softmax) and len(self.shapes[-1]) != 1:
            raise ValueError("a Softmax head needs (n, classes) outputs")
        n_out = math.prod(self.shapes[-1])
        self.classes = np.arange(n_out) if classes is None else np.asarray(classes)
        if self.classes.shape != (n_out,):
            raise ValueError(f"classes must have one label per output ({n_out}), got shape "
                             f"{self.classes.shape}")
        self._segments = None

    @property
    def layer_indices(self):
        """Indices into :attr:`ops` of the weight layers (Linear and Conv2d), in order."""
        return [i for i, op in enumerate(self.ops) if isinstance(op, (Linear, Conv2d))]

    @property
    def layers(self):
        """The estimators of the weight layers (Dense or LutMatmul), in order."""
        return [self.ops[i].layer for i in self.layer_indices]

    def with_layers(self, replacements):
        """A new Network whose weight layer ``i`` (an index into :attr:`layer_indices`) holds
        ``replacements[i]``; the other ops are shared."""
        ops = list(self.ops)
        for i, layer in replacements.items():
            op = ops[self.layer_indices[i]]
            ops[self.layer_indices[i]] = Linear(layer) if isinstance(op, Linear) else Conv2d(
                layer, op.in_channels, op.kernel_size, op.stride, op.padding)
        return Network(ops, self.input_shape, self.classes)

    def _validated(self, X):
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if X.ndim != len(self.input_shape) + 1 or X.shape[1:] != self.input_shape:
            raise ValueError(f"X must have shape (n, {', '.join(map(str, self.input_shape))}), "
                             f"got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X is empty")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or Inf")
        return X

    def _plan(self):
        """The forward as segments ``(start, stop, runner)``: ``runner`` computes
        ops[start:stop] at once — a FusedChain for a run Linear(LUT) (ReLU Linear(LUT))+, the
        pool then the ReLU for ReLU MaxPool2d (max and ReLU commute exactly, and the ReLU
        then touches a quarter of the values) — or is None for one op run alone."""
        if self._segments is None:
            segments, i = [], 0
            while i < len(self.ops):
                stop = i  # extend the run Linear(LUT) (ReLU Linear(LUT))* from ops[i]
                while _lut_linear(self.ops[stop]) and stop + 2 < len(self.ops) \
                        and isinstance(self.ops[stop + 1], ReLU) \
                        and _lut_linear(self.ops[stop + 2]):
                    stop += 2
                runner = None
                if stop > i:
                    from .runtime import FusedChain
                    runner = FusedChain([op.layer for op in self.ops[i:stop + 1:2]]).forward
                elif isinstance(self.ops[i], ReLU) and i + 1 < len(self.ops) \
                        and isinstance(self.ops[i + 1], MaxPool2d):
                    relu, pool = self.ops[i:i + 2]
                    stop, runner = i + 1, lambda H, relu=relu, pool=pool: relu(pool(H))
                segments.append((i, stop + 1, runner))
                i = stop + 1
            self._segments = segments
        return self._segments

    def run(self, H, start=0, stop=None):
        """``H`` (what ops[start] receives) through ops[start:stop], without validation."""
        stop = len(self.ops) if stop is None else stop
        for first, last, runner in self._plan():
            if last <= start or first >= stop:
                continue
            if runner is not None and first >= start and last <= stop:
                H = runner(H)
            else:
                for op in self.ops[max(first, start):min(last, stop)]:
                    H = op(H)
        return H

    def forward(self, X):
        """What the source model outputs for ``X`` (n, *input_shape), float32; images go in
        chunks of :data:`FORWARD_CHUNK_IMAGES`."""
        X = self._validated(X)
        if len(self.input_shape) == 1:
            return np.ascontiguousarray(self.run(X), dtype=np.float32)
        return np.concatenate([self.run(X[i:i + FORWARD_CHUNK_IMAGES])
                               for i in range(0, len(X), FORWARD_CHUNK_IMAGES)]).astype(
            np.float32, copy=False)

    def inputs_of(self, X, op_index):
        """What ``ops[op_index]`` receives for ``X`` (validated), chunked like forward."""
        X = self._validated(X)
        step = len(X) if len(self.input_shape) == 1 else FORWARD_CHUNK_IMAGES
        return np.concatenate([self.run(X[i:i + step], 0, op_index)
                               for i in range(0, len(X), step)])

    def predict(self, X):
        """The class of the largest output of each example (a classifier's prediction)."""
        if len(self.shapes[-1]) != 1:
            raise ValueError(f"predict needs (n, classes) outputs, this network gives "
                             f"{self.shapes[-1]}")
        return self.classes[np.argmax(self.forward(X), axis=1)]

    def score(self, X, y):
        """Accuracy on (X, y)."""
        predicted, y = self.predict(X), np.asarray(y)
        if y.shape != predicted.shape:
            raise ValueError(f"y must hold one label per example of X, shape "
                             f"{predicted.shape}, got shape {y.shape}")
        return float(np.mean(predicted == y))

    def __repr__(self):
        ops = ",\n  ".join(map(repr, self.ops))
        return f"Network(input_shape={self.input_shape}, ops=[\n  {ops}])"


def _lut_linear(op):
    return isinstance(op, Linear) and _is_lut(op.layer)
