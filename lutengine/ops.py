"""The op table: every op a :class:`~lutengine.network.Network` runs, in one place.

Each op class declares, once, everything the rest of lutengine needs to know about it:

* ``name`` and a one-line docstring (the generated list in docs/ops.md);
* ``torch_modules`` / ``torch_functions`` / ``onnx_ops``: what :func:`lutengine.nn.from_torch`
  and :func:`lutengine.nn.from_onnx` import as this op, and ``from_torch`` / ``from_onnx``,
  the converters they call (errors are ``ValueError`` saying why; the importer adds the node);
* ``output_shape`` (per-example shapes in, shape out; ``ValueError`` when they do not fit),
  ``input_dtypes`` and ``work`` (elements held per example, for the limits and chunking);
* ``__call__``: the exact forward in NumPy on batches (axis 0 is the batch), and
  ``torch_forward``: the same op on torch tensors, for training (:mod:`lutengine.learned`);
* ``lut``: whether it is a product with fixed weights that a lookup table can replace
  (Linear and Conv2d hold an estimator, a :class:`Dense` or a fitted
  :class:`~lutengine.LutMatmul`, as MADDNESS replaces ``A·B``; Blalock & Guttag 2021, §4);
* its configuration as frozen dataclass fields (JSON values, arrays, and a weight layer's
  estimator): what ``Network.save`` writes and ``lutengine.load`` checks and rebuilds.

Ops are immutable: a Network built from them cannot change under its fused plan; replacing a
weight layer builds a new op (``op.with_layer``) and a new Network (``Network.with_layers``).
"""

import dataclasses
import inspect
import math
import numbers

import numpy as np
from scipy.special import erf

from . import _dispatch
from ._validation import (
    as_float_matrix, as_float_vector, check_all_finite, check_array, check_int,
    check_is_fitted, check_limit, raise_if_nonfinite_read,
)

#: dtypes a Network value may have
DTYPES = ("float32", "int64")


class Dense:
    """An exact affine layer ``A @ W + b`` with W (n_in, n_out) and b (n_out,), float32."""

    _param_names = ()
    _state_attrs = ("W", "b")

    def __init__(self, W, b):
        self.W = as_float_matrix(W, "W")
        self.b = as_float_vector(b, "b", self.W.shape[1])

    @property
    def n_features_in_(self):
        return self.W.shape[0]

    @property
    def n_outputs_(self):
        return self.W.shape[1]

    def get_params(self, deep=True):
        return {}

    def predict(self, A):
        return A @ self.W + self.b

    def _check_state(self):
        """W and b as read from a file: float32, C-contiguous, finite, matching widths."""
        W = check_array(self.W, "W", np.float32, (None, None))
        check_array(self.b, "b", np.float32, (W.shape[1],))
        if 0 in W.shape:
            raise ValueError(f"W must not be empty, got shape {W.shape}")
        check_all_finite(W, "W")
        check_all_finite(self.b, "b")

    def __repr__(self):
        return f"Dense({self.W.shape[0]} → {self.W.shape[1]})"


class Value:
    """A value in an importer's graph: the name it has in the Network, its per-example
    shape and dtype (what converters receive in place of tensors)."""

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype

    def __repr__(self):
        return f"Value({self.name!r}, {self.shape}, {self.dtype})"


def _set(op, **values):
    """Set fields of a frozen op in ``__post_init__`` (its normalised configuration)."""
    for name, value in values.items():
        object.__setattr__(op, name, value)


def _pair(value, name, low):
    """An int or a pair of ints, each in [low, config.MAX_WINDOW], as a tuple of two ints."""
    values = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    pair = tuple(check_int(v, name, low) for v in values)
    for v in pair:
        check_limit(v, "MAX_WINDOW", name)
    return pair


def _window_size(shape, kernel, stride, padding, what):
    """Output (height, width) of a window sliding over (C, H, W) images (floor mode)."""
    if len(shape) != 3:
        raise ValueError(f"takes (channels, height, width) images, gets {shape}")
    size = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(shape[1:], kernel, stride,
                                                                  padding))
    if min(size) < 1:
        raise ValueError(f"a {kernel} {what} does not fit {shape[1:]} images padded by "
                         f"{padding}")
    return size


def _check_estimator(layer):
    if not hasattr(layer, "predict") or not hasattr(type(layer), "n_outputs_"):
        raise TypeError(f"layer must be a Dense or a fitted estimator such as LutMatmul, got "
                        f"{type(layer).__name__}")
    if not isinstance(layer, Dense):
        check_is_fitted(layer)


def is_lut(layer):
    """A quantised tree-encoded LutMatmul (what the fused chain and conv encoder run)."""
    return hasattr(layer, "split_dims_") and getattr(layer, "quantize", False)


def _float_arg(value, name):
    """A finite real number from an import (an attribute or argument), as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _constant(value, name):
    """A finite float32 array from an import (an initializer or a Python number)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def _batch_axis(axis, rank, name):
    """A full-rank axis (batch first, ``rank`` dims in all) as a per-example axis."""
    axis = check_int(axis, name, -rank, rank - 1)
    if axis % rank == 0:
        raise ValueError(f"{name}={axis} is the batch axis; ops run per example")
    return axis if axis < 0 else axis - 1


class Op:
    """Base of the op table (see the module docstring). Subclasses are frozen dataclasses
    (:func:`op`); their fields are their configuration."""

    name = None
    torch_modules = ()
    torch_functions = ()
    onnx_ops = ()
    lut = False
    #: number of inputs (None: one or more)
    arity = 1

    def input_dtypes(self, count):
        """The dtype each of ``count`` inputs must have."""
        return ("float32",) * count

    def output_shape(self, *shapes):
        return shapes[0]

    def work(self, *shapes):
        """Elements this op holds (or, for windows, visits) for one example: its output, and
        any temporaries. Bounded by ``config.MAX_VALUE_ELEMENTS``; sizes the forward's
        chunks."""
        return math.prod(self.output_shape(*shapes))

    def config(self):
        """The JSON-able fields (what a saved file's header holds)."""
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.metadata.get("array") and f.name != "layer"}

    def arrays(self):
        """The array fields (what a saved file holds as members), set ones only."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("array") and getattr(self, f.name) is not None}

    @classmethod
    def array_names(cls):
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("array"))

    @classmethod
    def from_torch(cls, call):
        """This op for a torch call (module or function; ``call.args`` hold :class:`Value`)."""
        return cls()

    @classmethod
    def from_onnx(cls, node):
        """This op for an ONNX node (``node.attrs``, ``node.constant(i)``, shapes)."""
        return cls()

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.config())
        layer = [repr(self.layer)] if hasattr(self, "layer") else []
        arrays = [f"{k}={v.shape}" for k, v in self.arrays().items()]
        return f"{self.name}({', '.join(layer + ([fields] if fields else []) + arrays)})"


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def op(cls):
    """Class decorator of the op table: a frozen dataclass compared by identity."""
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    cls.name = cls.__name__
    return cls


def array_field(default=None):
    return dataclasses.field(default=default, metadata={"array": True})


# -- weight layers: products with fixed weights, replaceable by lookup tables ----------------

class _WeightOp(Op):
    lut = True

    def with_layer(self, layer):
        """The same op holding another estimator (e.g. a fitted LutMatmul)."""
        return dataclasses.replace(self, layer=layer)


@op
class Linear(_WeightOp):
    """``x W + b`` over the last axis; the layer is a Dense or a fitted LutMatmul."""

    layer: object
    torch_modules = ("Linear",)
    onnx_ops = ("Gemm", "MatMul")

    def __post_init__(self):
        _check_estimator(self.layer)

    def output_shape(self, shape):
        n_in = self.layer.n_features_in_
        if not shape or shape[-1] != n_in:
            raise ValueError(f"takes (…, {n_in}) features, gets {shape}")
        return (*shape[:-1], self.layer.n_outputs_)

    def rows_per_example(self, shape):
        """Rows the layer multiplies per example, for its output ``shape``."""
        return math.prod(shape[:-1])

    def rows(self, H):
        """The rows the layer multiplies: (n·…, n_in)."""
        return H.reshape(-1, H.shape[-1])

    def __call__(self, H):
        Y = self.layer.predict(self.rows(H))
        return Y if H.ndim == 2 else Y.reshape(*H.shape[:-1], -1)

    def torch_forward(self, x, product):
        """``product`` (rows → rows, a torch module) over the last axis of x."""
        return product(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    @classmethod
    def from_torch(cls, call):
        module = call.module
        weight = module.weight.detach().numpy()
        bias = np.zeros(len(weight)) if module.bias is None else module.bias.detach().numpy()
        return cls(Dense(weight.T, bias))

    @classmethod
    def from_onnx(cls, node):
        if node.op_type == "MatMul":
            if node.constant_index(0):
                raise ValueError("the weights must be the second input (x · W)")
            W = node.constant(1, "the weights")
            if W.ndim != 2:
                raise ValueError(f"the weights must be 2-D, got shape {W.shape}")
            return cls(Dense(W, np.zeros(W.shape[1])))
        if node.attrs.get("transA", 0):
            raise ValueError("attribute transA=1 is not a layer on rows")
        if len(node.input_shape(0)) != 1:
            raise ValueError(f"Gemm takes (n, features) rows, gets (n, {node.input_shape(0)})")
        W = node.constant(1, "the weights (B)")
        if W.ndim != 2:
            raise ValueError(f"the weights (B) must be 2-D, got shape {W.shape}")
        W = _float_arg(node.attrs.get("alpha", 1.0), "attribute alpha") \
            * (W.T if node.attrs.get("transB", 0) else W)
        bias = np.zeros(W.shape[1])
        if node.has_input(2):
            C = node.constant(2, "the bias (C)")
            if C.size not in (1, W.shape[1]) or C.ndim > 2 or (C.ndim == 2 and C.shape[0] != 1):
                raise ValueError(f"the bias (C) must have shape ({W.shape[1]},), (1, "
                                 f"{W.shape[1]}) or be a scalar, got {C.shape}")
            bias = bias + _float_arg(node.attrs.get("beta", 1.0), "attribute beta") \
                * C.reshape(-1)
        return cls(Dense(W, bias))


@op
class Conv2d(_WeightOp):
    """2-D convolution (groups 1, zero padding) as im2col patches × (C·kh·kw, out) weights,
    features in PyTorch's ``unfold`` order; a LUT layer encodes straight from the image."""

    layer: object
    in_channels: int
    kernel_size: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    torch_modules = ("Conv2d",)
    onnx_ops = ("Conv",)

    def __post_init__(self):
        _check_estimator(self.layer)
        _set(self, in_channels=check_int(self.in_channels, "in_channels", 1),
             kernel_size=_pair(self.kernel_size, "kernel_size", 1),
             stride=_pair(self.stride, "stride", 1), padding=_pair(self.padding, "padding", 0))
        features = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        if self.layer.n_features_in_ != features:
            raise ValueError(f"layer takes {self.layer.n_features_in_} features, but a "
                             f"{self.kernel_size} kernel over {self.in_channels} channels has "
                             f"{features}")

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"takes ({self.in_channels}, height, width) images, gets {shape}")
        size = _window_size(shape, self.kernel_size, self.stride, self.padding, "kernel")
        return (self.layer.n_outputs_, *size)

    def work(self, shape):
        _, rows, cols = out = self.output_shape(shape)
        return math.prod(out) + rows * cols * self.layer.n_features_in_

    def rows_per_example(self, shape):
        """Rows (output positions) per example, for its output ``shape``."""
        return math.prod(shape[1:])

    def rows(self, H):
        """The im2col rows (n·Ho·Wo, in_channels·kh·kw) of images H."""
        return _dispatch.conv.im2col(H, self.kernel_size, self.stride, self.padding)

    def __call__(self, H):
        _, rows, cols = self.output_shape(H.shape[1:])
        if is_lut(self.layer):
            codes, nonfinite = _dispatch.conv.encode_tree_conv(
                H, self.layer.split_dims_, self.layer.thresholds_, self.kernel_size,
                self.stride, self.padding)
            raise_if_nonfinite_read(nonfinite, "X")
            Y = self.layer.predict_codes(codes)
        else:
            Y = self.layer.predict(self.rows(H))
        if Y.flags.f_contiguous and not Y.flags.c_contiguous:  # the SIMD scan's channels
            return np.ascontiguousarray(Y.T.reshape(-1, len(H), rows, cols).transpose(1, 0, 2, 3))
        return np.ascontiguousarray(Y.reshape(len(H), rows, cols, -1).transpose(0, 3, 1, 2))

    def torch_forward(self, x, product):
        """The convolution with ``product`` (rows → rows): ``conv2d`` when it holds exact
        weights ``W`` (in, out) and ``b``, else over ``unfold`` patches."""
        import torch.nn.functional as F

        if hasattr(product, "W"):
            weight = product.W.T.reshape(-1, self.in_channels, *self.kernel_size)
            return F.conv2d(x, weight, product.b, self.stride, self.padding)
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        _, rows, cols = self.output_shape(tuple(x.shape[1:]))
        out = product(patches.transpose(1, 2).reshape(-1, patches.shape[1]))
        return out.reshape(len(x), rows * cols, -1).transpose(1, 2).reshape(len(x), -1, rows,
                                                                            cols)

    @classmethod
    def _of(cls, weight, bias, stride, padding):
        weight = np.asarray(weight)
        if weight.ndim != 4:
            raise ValueError(f"only 2-D convolutions: the filters must be (out, in, kh, kw), "
                             f"got shape {weight.shape}")
        bias = np.zeros(len(weight)) if bias is None else bias
        return cls(Dense(weight.reshape(len(weight), -1).T, bias), weight.shape[1],
                   weight.shape[2:], stride, padding)

    @classmethod
    def from_torch(cls, call):
        module = call.module
        if module.groups != 1 or tuple(module.dilation) != (1, 1) \
                or module.padding_mode != "zeros":
            raise ValueError("groups 1, dilation 1 and zero padding only, got groups="
                             f"{module.groups}, dilation={module.dilation}, padding_mode="
                             f"{module.padding_mode!r}")
        padding = module.padding
        if isinstance(padding, str):  # "valid", or "same" at stride 1
            padding = (0, 0) if padding == "valid" else _same_padding(module.kernel_size)
        bias = None if module.bias is None else module.bias.detach().numpy()
        return cls._of(module.weight.detach().numpy(), bias, module.stride, padding)

    @classmethod
    def from_onnx(cls, node):
        if node.attrs.get("group", 1) != 1:
            raise ValueError(f"attribute group must be 1, got {node.attrs['group']}")
        weight = node.constant(1, "the filters (W)")
        if weight.ndim != 4:
            raise ValueError(f"only 2-D convolutions: the filters (W) must be (out, in, kh, kw), "
                             f"got shape {weight.shape}")
        kernel, stride, padding = _onnx_window(node, weight.shape[2:])
        bias = node.constant(2, "the bias (B)") if node.has_input(2) else None
        return cls._of(weight, bias, stride, padding)


def _same_padding(kernel):
    kernel = (kernel, kernel) if np.ndim(kernel) == 0 else tuple(kernel)
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"padding='same' with an even kernel {kernel} pads unevenly; only "
                         "symmetric padding is supported")
    return tuple((k - 1) // 2 for k in kernel)


def _onnx_window(node, kernel):
    """(kernel, stride, padding) of a Conv / pool node: explicit symmetric ``pads`` or
    ``auto_pad`` (NOTSET, VALID, SAME_UPPER, SAME_LOWER where it pads evenly); dilation 1."""
    attrs = node.attrs
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(kernel or ()):
        if kernel is not None:
            raise ValueError(f"attribute kernel_shape {attrs['kernel_shape']} differs from the "
                             f"filters' {tuple(kernel)}")
    kernel = tuple(attrs.get("kernel_shape", kernel or ()))
    if len(kernel) != 2:
        raise ValueError(f"attribute kernel_shape must give 2 sizes, got {list(kernel)}")
    kernel = _pair(kernel, "attribute kernel_shape", 1)
    stride = _pair(tuple(attrs.get("strides", (1, 1))), "attribute strides", 1)
    if any(d != 1 for d in attrs.get("dilations", (1, 1))):
        raise ValueError(f"attribute dilations must be 1, got {list(attrs['dilations'])}")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return kernel, stride, (0, 0)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        size = node.input_shape(0)[1:]
        totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(size, kernel, stride)]
        if any(t % 2 for t in totals):
            raise ValueError(f"attribute auto_pad={auto_pad} pads {size} images unevenly "
                             f"({totals}); only symmetric padding is supported")
        return kernel, stride, tuple(t // 2 for t in totals)
    if auto_pad != "NOTSET":
        raise ValueError(f"attribute auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, "
                         f"got {auto_pad!r}")
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise ValueError(f"attribute pads must be symmetric (begin = end), got {list(pads)}")
    return kernel, stride, _pair(pads[:2], "attribute pads", 0)


# -- elementwise and shape ops ---------------------------------------------------------------

@op
class BatchNorm(Op):
    """Per-channel ``x · scale + shift`` (channels on axis 1): inference BatchNorm, folded
    into the Linear / Conv2d before it at import where that layer feeds only it."""

    scale: np.ndarray = array_field()
    shift: np.ndarray = array_field()
    torch_modules = ("BatchNorm1d", "BatchNorm2d")
    onnx_ops = ("BatchNormalization",)

    def __post_init__(self):
        scale = as_float_vector(self.scale, "scale", np.size(self.scale))
        _set(self, scale=scale, shift=as_float_vector(self.shift, "shift", len(scale)))

    def output_shape(self, shape):
        if not shape or shape[0] != len(self.scale):
            raise ValueError(f"takes ({len(self.scale)}, …) channels, gets {shape}")
        return shape

    def _view(self, array, ndim):
        return array.reshape(-1, *[1] * (ndim - 2))

    def __call__(self, H):
        return H * self._view(self.scale, H.ndim) + self._view(self.shift, H.ndim)

    def torch_forward(self, x):
        import torch

        return x * torch.from_numpy(self._view(self.scale, x.ndim)) \
            + torch.from_numpy(self._view(self.shift, x.ndim))

    @classmethod
    def _of(cls, gamma, beta, mean, var, eps):
        scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        return cls(scale, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale)

    @classmethod
    def from_torch(cls, call):
        module = call.module
        if module.running_mean is None:
            raise ValueError("it needs running statistics (track_running_stats=True)")
        n = module.num_features
        gamma = module.weight.detach().numpy() if module.affine else np.ones(n)
        beta = module.bias.detach().numpy() if module.affine else np.zeros(n)
        return cls._of(gamma, beta, module.running_mean.numpy(), module.running_var.numpy(),
                       module.eps)

    @classmethod
    def from_onnx(cls, node):
        if node.attrs.get("training_mode", 0):
            raise ValueError("attribute training_mode=1: only inference BatchNorm (running "
                             "statistics) can be imported")
        if len(node.outputs) > 1:
            raise ValueError("training outputs (running mean / var) are not supported")
        gamma, beta, mean, var = (node.constant(i, what) for i, what in
                                  enumerate(("scale", "B", "input_mean", "input_var"), 1))
        if not gamma.shape == beta.shape == mean.shape == var.shape or gamma.ndim != 1:
            raise ValueError(f"scale, B, input_mean and input_var must be vectors of one length, "
                             f"got {gamma.shape}, {beta.shape}, {mean.shape}, {var.shape}")
        if (var < 0).any():
            raise ValueError("input_var must be >= 0")
        return cls._of(gamma, beta, mean, var,
                       _float_arg(node.attrs.get("epsilon", 1e-5), "attribute epsilon"))


@op
class ReLU(Op):
    """max(x, 0)."""

    torch_modules = ("ReLU",)
    torch_functions = ("relu", "relu_")
    onnx_ops = ("Relu",)

    def __call__(self, H):
        return np.maximum(H, np.float32(0))

    def torch_forward(self, x):
        return x.clamp_min(0)


@op
class GELU(Op):
    """x·Φ(x), with the exact normal CDF (erf) or PyTorch's tanh approximation."""

    approximate: str = "none"
    torch_modules = ("GELU",)
    torch_functions = ("gelu",)
    onnx_ops = ("Gelu",)

    def __post_init__(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {self.approximate!r}")

    def __call__(self, H):
        H64 = H.astype(np.float64)
        if self.approximate == "tanh":
            cdf = 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (H64 + 0.044715 * H64 ** 3)))
        else:
            cdf = 0.5 * (1 + erf(H64 / math.sqrt(2)))
        return (H64 * cdf).astype(np.float32)

    def torch_forward(self, x):
        import torch.nn.functional as F

        return F.gelu(x, approximate=self.approximate)

    @classmethod
    def from_torch(cls, call):
        if call.module is not None:
            return cls(call.module.approximate)
        return cls(call.arg(1, "approximate", "none"))

    @classmethod
    def from_onnx(cls, node):
        return cls(node.attrs.get("approximate", "none"))


@op
class _Pool2d(Op):
    kernel_size: tuple
    stride: tuple = None
    padding: tuple = (0, 0)

    def __post_init__(self):
        kernel = _pair(self.kernel_size, "kernel_size", 1)
        stride = kernel if self.stride is None else _pair(self.stride, "stride", 1)
        padding = _pair(self.padding, "padding", 0)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise ValueError(f"padding {padding} must be at most half the kernel {kernel}")
        _set(self, kernel_size=kernel, stride=stride, padding=padding)

    def output_shape(self, shape):
        size = _window_size(shape, self.kernel_size, self.stride, self.padding, "window")
        return (shape[0], *size)

    def work(self, shape):
        """Elements visited per example: every output reads its kh·kw window."""
        return math.prod(self.output_shape(shape)) * math.prod(self.kernel_size)

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

    @classmethod
    def from_torch(cls, call):
        if call.module is not None:
            m = call.module
            options = {"ceil_mode": m.ceil_mode, "dilation": getattr(m, "dilation", 1),
                       "count_include_pad": getattr(m, "count_include_pad", True),
                       "divisor_override": getattr(m, "divisor_override", None),
                       "return_indices": getattr(m, "return_indices", False)}
            kernel, stride, padding = m.kernel_size, m.stride, m.padding
        else:
            names = ("kernel_size", "stride", "padding") + cls._torch_options
            args = {name: call.arg(i + 1, name, cls._torch_defaults.get(name))
                    for i, name in enumerate(names)}
            kernel, stride, padding = args.pop("kernel_size"), args.pop("stride"), \
                args.pop("padding")
            options = {"dilation": 1, "count_include_pad": True, "divisor_override": None,
                       "return_indices": False, **args}
        if options["ceil_mode"] or options["return_indices"] \
                or options["dilation"] not in (1, (1, 1), [1, 1]) \
                or not options["count_include_pad"] or options["divisor_override"]:
            raise ValueError(f"floor mode, dilation 1 and padding counted in averages only, "
                             f"got {options}")
        return cls(kernel, stride or None, padding)

    @classmethod
    def from_onnx(cls, node):
        if node.attrs.get("ceil_mode", 0):
            raise ValueError("attribute ceil_mode=1 is not supported")
        if len(node.outputs) > 1:
            raise ValueError("the Indices output is not supported")
        kernel, stride, padding = _onnx_window(node, None)
        if cls is AvgPool2d and any(padding) and not node.attrs.get("count_include_pad", 0):
            raise ValueError("attribute count_include_pad must be 1 where there is padding")
        return cls(kernel, stride, padding)


@op
class MaxPool2d(_Pool2d):
    """Maximum over sliding windows (stride, padding; floor mode)."""

    torch_modules = ("MaxPool2d",)
    torch_functions = ("max_pool2d",)
    onnx_ops = ("MaxPool",)
    _torch_options = ("dilation", "ceil_mode", "return_indices")
    _torch_defaults = {"padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}

    def __call__(self, H):
        return self._reduce(H, -np.inf, np.maximum)

    def torch_forward(self, x):
        import torch.nn.functional as F

        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


@op
class AvgPool2d(_Pool2d):
    """Average over sliding windows, zero padding counted (PyTorch's default)."""

    torch_modules = ("AvgPool2d",)
    torch_functions = ("avg_pool2d",)
    onnx_ops = ("AveragePool",)
    _torch_options = ("ceil_mode", "count_include_pad", "divisor_override")
    _torch_defaults = {"padding": 0, "ceil_mode": False, "count_include_pad": True}

    def __call__(self, H):
        total = self._reduce(H, 0, np.add)
        total *= np.float32(1 / (self.kernel_size[0] * self.kernel_size[1]))
        return total

    def torch_forward(self, x):
        import torch.nn.functional as F

        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


@op
class Flatten(Op):
    """(n, …) → (n, features) in C order (PyTorch's ``flatten(1)``, ONNX ``Flatten`` axis 1)."""

    torch_modules = ("Flatten",)
    torch_functions = ("flatten",)
    onnx_ops = ("Flatten",)

    def output_shape(self, shape):
        return (math.prod(shape),)

    def __call__(self, H):
        return H.reshape(len(H), -1)

    def torch_forward(self, x):
        return x.flatten(1)

    @classmethod
    def from_torch(cls, call):
        rank = len(call.input_shape(0)) + 1
        if call.module is not None:
            start, end = call.module.start_dim, call.module.end_dim
        else:
            start, end = call.arg(1, "start_dim", 0), call.arg(2, "end_dim", -1)
        if start % rank != 1 or end % rank != rank - 1:
            raise ValueError(f"flatten must keep the batch axis and flatten the rest "
                             f"(start_dim=1, end_dim=-1), got start_dim={start}, end_dim={end}")
        return cls()

    @classmethod
    def from_onnx(cls, node):
        rank = len(node.input_shape(0)) + 1
        axis = node.attrs.get("axis", 1)
        if not isinstance(axis, int) or axis % rank != 1 or not -rank <= axis <= rank:
            raise ValueError(f"attribute axis must keep the batch axis (1 or {1 - rank}), got "
                             f"{axis}")
        return cls()


@op
class Softmax(Op):
    """Softmax over the last axis (a classifier's head, or attention weights)."""

    torch_modules = ("Softmax",)
    torch_functions = ("softmax",)
    onnx_ops = ("Softmax",)

    def output_shape(self, shape):
        if not shape:
            raise ValueError("needs an axis to run over, gets scalars")
        return shape

    def __call__(self, H):
        # C order: each row summed alike whatever layout the layer before wrote
        E = np.ascontiguousarray(H) - H.max(axis=-1, keepdims=True)
        np.exp(E, out=E)  # shifted: at most 1, no overflow
        E /= E.sum(axis=-1, keepdims=True)
        return E

    def torch_forward(self, x):
        return x.softmax(-1)

    @classmethod
    def from_torch(cls, call):
        rank = len(call.input_shape(0)) + 1
        dim = call.module.dim if call.module is not None else call.arg(1, "dim", None)
        if dim is None or dim % rank != rank - 1:
            raise ValueError(f"it must run over the last axis (dim=-1 or {rank - 1}), got "
                             f"dim={dim}")
        return cls()

    @classmethod
    def from_onnx(cls, node):
        rank = len(node.input_shape(0)) + 1
        axis = node.attrs.get("axis", -1 if node.opset >= 13 else 1)
        if not isinstance(axis, int) or axis % rank != rank - 1 or not -rank <= axis < rank:
            raise ValueError(f"attribute axis must be the last axis (-1 or {rank - 1}), got "
                             f"{axis}")
        return cls()


@op
class LogSoftmax(Softmax):
    """Log-softmax over the last axis."""

    torch_modules = ("LogSoftmax",)
    torch_functions = ("log_softmax",)
    onnx_ops = ("LogSoftmax",)

    def __call__(self, H):
        Z = np.ascontiguousarray(H) - H.max(axis=-1, keepdims=True)
        Z -= np.log(np.exp(Z).sum(axis=-1, keepdims=True))
        return Z

    def torch_forward(self, x):
        return x.log_softmax(-1)


@op
class Identity(Op):
    """x unchanged (Dropout at inference); removed from imported networks."""

    torch_modules = ("Identity", "Dropout")
    torch_functions = ("dropout",)
    onnx_ops = ("Identity", "Dropout")

    def __call__(self, H):
        return H

    def torch_forward(self, x):
        return x

    @classmethod
    def from_onnx(cls, node):
        if len(node.outputs) > 1:
            raise ValueError("the mask output of Dropout is not supported")
        return cls()


@op
class _Binary(Op):
    """Elementwise on two inputs of one shape rank (broadcast), or on one input and a
    ``constant`` (broadcast against the per-example shape)."""

    constant: np.ndarray = array_field()

    def __post_init__(self):
        if self.constant is not None:
            _set(self, constant=_constant(self.constant, "constant"))

    @property
    def arity(self):
        return 2 if self.constant is None else 1

    def output_shape(self, *shapes):
        if self.constant is not None:
            shapes = (*shapes, self.constant.shape)
            if len(self.constant.shape) > len(shapes[0]):
                raise ValueError(f"the constant {self.constant.shape} has more axes than the "
                                 f"input {shapes[0]}")
        elif len(shapes[0]) != len(shapes[1]):
            raise ValueError(f"its inputs must have as many axes, got {shapes[0]} and "
                             f"{shapes[1]}")
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            raise ValueError(f"shapes {shapes[0]} and {shapes[1]} do not broadcast") from None

    def __call__(self, a, b=None):
        return self._numpy(a, self.constant if b is None else b).astype(np.float32, copy=False)

    def torch_forward(self, a, b=None):
        import torch

        return self._torch(a, torch.from_numpy(self.constant) if b is None else b)

    @classmethod
    def _of(cls, values, constants):
        """The op on ``values`` (one or two :class:`Value`) and ``constants`` (Python numbers
        or arrays, full rank: a leading batch axis of 1 is dropped)."""
        if len(values) == 2 and not constants:
            return cls()
        if len(values) != 1 or len(constants) != 1:
            raise ValueError(f"it needs two inputs, or one and a constant, got {len(values)} "
                             f"inputs and {len(constants)} constants")
        constant = _constant(constants[0], "the constant operand")
        if constant.ndim == len(values[0].shape) + 1:
            if constant.shape[0] != 1:
                raise ValueError(f"the constant {constant.shape} varies along the batch axis")
            constant = constant[0]
        return cls(constant)

    @classmethod
    def from_torch(cls, call):
        if call.kwargs.get("alpha", 1) != 1:
            raise ValueError(f"argument alpha must be 1, got {call.kwargs['alpha']}")
        operands = [call.arg(0, "input", None), call.arg(1, "other", None)]
        return cls._of([v for v in operands if isinstance(v, Value)],
                       [v for v in operands if not isinstance(v, Value)])

    @classmethod
    def from_onnx(cls, node):
        constants = [node.constant(i, "operand") for i in range(2) if node.constant_index(i)]
        return cls._of(node.value_inputs, constants)


@op
class Add(_Binary):
    """a + b (a residual connection), or x + a constant."""

    torch_functions = ("add", "add_", "iadd", "__add__", "__radd__")
    onnx_ops = ("Add",)
    _numpy = staticmethod(np.add)

    @staticmethod
    def _torch(a, b):
        return a + b


@op
class Mul(_Binary):
    """a · b elementwise (gates, squeeze-excite), or x · a constant."""

    torch_functions = ("mul", "mul_", "imul", "__mul__", "__rmul__")
    onnx_ops = ("Mul",)
    _numpy = staticmethod(np.multiply)

    @staticmethod
    def _torch(a, b):
        return a * b


@op
class Concat(Op):
    """Inputs joined along ``axis`` (per example: axis 0 is the first after the batch)."""

    axis: int = 0
    arity = None
    torch_functions = ("cat", "concat", "concatenate")
    onnx_ops = ("Concat",)

    def __post_init__(self):
        _set(self, axis=check_int(self.axis, "axis", -(1 << 31)))

    def output_shape(self, *shapes):
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes) or not -rank <= self.axis < rank:
            raise ValueError(f"axis {self.axis} must be an axis of inputs of one rank, got "
                             f"{list(shapes)}")
        axis = self.axis % rank
        rest = {s[:axis] + s[axis + 1:] for s in shapes}
        if len(rest) != 1:
            raise ValueError(f"inputs must agree off axis {self.axis}, got {list(shapes)}")
        return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:])

    def _full_axis(self):
        return self.axis + 1 if self.axis >= 0 else self.axis

    def __call__(self, *values):
        return np.concatenate(values, axis=self._full_axis())

    def torch_forward(self, *tensors):
        import torch

        return torch.cat(tensors, dim=self._full_axis())

    @classmethod
    def from_torch(cls, call):
        tensors = call.arg(0, "tensors", None)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Value)
                                                             for t in tensors):
            raise ValueError("every tensor it joins must be a value of the graph")
        return cls(_batch_axis(call.arg(1, "dim", 0), len(tensors[0].shape) + 1, "dim"))

    @classmethod
    def from_onnx(cls, node):
        if len(node.value_inputs) != len(node.inputs):
            raise ValueError("every input must be a value of the graph (no initializers)")
        if "axis" not in node.attrs:
            raise ValueError("attribute axis is required")
        return cls(_batch_axis(node.attrs["axis"], len(node.input_shape(0)) + 1,
                               "attribute axis"))


@op
class Embedding(Op):
    """Rows of a ``table`` (vocabulary, width) picked by integer ids: (…) → (…, width)."""

    table: np.ndarray = array_field()
    torch_modules = ("Embedding",)
    onnx_ops = ("Gather",)

    def __post_init__(self):
        table = np.asarray(self.table)
        if table.ndim != 2 or 0 in table.shape:
            raise ValueError(f"table must be a non-empty (vocabulary, width) matrix, got shape "
                             f"{table.shape}")
        _set(self, table=as_float_matrix(table, "table"))

    def input_dtypes(self, count):
        return ("int64",)

    def output_shape(self, shape):
        return (*shape, self.table.shape[1])

    def __call__(self, ids):
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.table)):
            raise ValueError(f"token ids must lie in [0, {len(self.table)}), got values in "
                             f"[{ids.min()}, {ids.max()}]")
        return self.table[ids]

    def torch_forward(self, ids):
        import torch

        return torch.from_numpy(self.table)[ids]

    @classmethod
    def from_torch(cls, call):
        module = call.module
        if module.max_norm is not None:
            raise ValueError("max_norm renormalises rows at lookup; not supported")
        return cls(module.weight.detach().numpy())

    @classmethod
    def from_onnx(cls, node):
        if node.attrs.get("axis", 0) != 0:
            raise ValueError(f"attribute axis must be 0 (rows of a table), got "
                             f"{node.attrs['axis']}")
        if not node.constant_index(0) or node.constant_index(1):
            raise ValueError("only a table (initializer) indexed by a value of ids")
        return cls(node.constant(0, "the table (data)"))


#: the op table, in the order docs/ops.md lists it
OPS = (Linear, Conv2d, BatchNorm, ReLU, GELU, MaxPool2d, AvgPool2d, Flatten, Softmax,
       LogSoftmax, Add, Mul, Concat, Embedding, Identity)
BY_NAME = {cls.name: cls for cls in OPS}


def _index(attribute):
    """name → op class for one of the import attributes (each name maps to one op)."""
    table = {}
    for cls in OPS:
        for name in getattr(cls, attribute):
            if name in table:
                raise RuntimeError(f"{attribute} {name!r} maps to {table[name].name} and "
                                   f"{cls.name}")
            table[name] = cls
    return table


TORCH_MODULES = _index("torch_modules")
TORCH_FUNCTIONS = _index("torch_functions")
ONNX_OPS = _index("onnx_ops")


def table_markdown():
    """docs/ops.md's table: every op, what imports as it, whether it has a lookup-table form."""
    lines = ["| op | what it computes | PyTorch | ONNX | lookup-table form |",
             "|---|---|---|---|---|"]
    for cls in OPS:
        torch_names = [f"`nn.{m}`" for m in cls.torch_modules] + \
            [f"`{f}`" for f in cls.torch_functions if not f.startswith("__")]
        summary = " ".join(inspect.cleandoc(cls.__doc__).split("\n\n")[0].split())
        lines.append(f"| {cls.name} | {summary} | "
                     f"{', '.join(torch_names) or '–'} | "
                     f"{', '.join(f'`{o}`' for o in cls.onnx_ops) or '–'} | "
                     f"{'yes' if cls.lut else 'exact'} |")
    return "\n".join(lines) + "\n"
