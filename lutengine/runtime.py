"""A fused forward for a chain of quantised ``LutMatmul`` layers with ReLU between them.

Layer by layer, a network's hidden layer is ``relu(layer.predict(H))``: every output column
is computed and the (n, M) float activations written to memory, read back by the next
layer. But the next layer is MADDNESS too (Blalock & Guttag 2021, §4): its hash trees
(§4.1) read only the ``4 · C`` columns named in its ``split_dims_``, and nothing else of H.
:class:`FusedChain` therefore

- computes, for each hidden layer, only the columns the next layer's trees read: its uint8
  tables (§4.4) and dequantisation scalars are compacted to those columns once, when the
  chain is built, and the next layer's split dimensions renumbered to index them; the
  activations the next trees do not read are never computed nor written;
- runs every layer on a block of rows before the next block (:mod:`kernels.fused`), so the
  hidden activations of a block stay in cache and never reach memory at all; only the last
  layer's outputs (every column) are written.

Each layer computes the same integers and the same multiply-add as ``LutMatmul.predict``
(exact uint16 sums of the tables, ``float32(acc) * inv_scale[m] + shift[m]``), and ReLU
between layers as :func:`lutengine.nn.relu`: the output is the layer-by-layer result.
"""

import numpy as np

from . import _dispatch
from ._validation import (
    NotFittedError, as_float_matrix, check_n_features, raise_if_nonfinite_read,
)
from .matmul import LutMatmul

_FLOAT32 = np.dtype(np.float32)


def _check_layers(layers):
    """The layers as a list: fitted quantised LutMatmul, each taking the previous one's
    outputs."""
    if isinstance(layers, LutMatmul) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of fitted LutMatmul, got {type(layers).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty")
    for i, layer in enumerate(layers):
        if not isinstance(layer, LutMatmul):
            raise TypeError(f"layers[{i}] must be a fitted LutMatmul, got {type(layer).__name__}")
        if not hasattr(layer, "luts_"):
            raise NotFittedError(f"layers[{i}] is not fitted yet: call fit(A_train, B) first")
        if not layer.quantize:
            raise ValueError(f"layers[{i}] must have quantize=True (the fused chain runs the "
                             f"uint8 tables), got quantize={layer.quantize!r}")
    for i, (before, after) in enumerate(zip(layers[:-1], layers[1:])):
        if before.n_outputs_ != after.n_features_in_:
            raise ValueError(f"layers[{i}] has {before.n_outputs_} outputs, but layers[{i + 1}] "
                             f"takes {after.n_features_in_} inputs")
    return layers


class FusedChain:
    """``X → layers[0] → ReLU → … → ReLU → layers[-1]``, fused (MADDNESS, Blalock & Guttag
    2021, §4: hash-tree encoding and uint8 table sums of every layer, per block of rows).

    Parameters
    ----------
    layers : list of LutMatmul
        Fitted with ``quantize=True``; ``layers[i + 1]`` takes ``layers[i]``'s outputs. The
        plan is built from their fitted arrays now: refitting a layer later does not change
        the chain.

    Attributes
    ----------
    n_features_in_, n_outputs_ : int
        Input width of the first layer, output width of the last.
    computed_columns_ : list of ndarray (int64)
        For each hidden layer, the output columns it computes: those the next layer's trees
        read (``np.unique`` of its ``split_dims_``). The last layer computes all of its own.
    """

    def __init__(self, layers):
        layers = _check_layers(layers)
        computed = [np.unique(after.split_dims_) for after in layers[1:]]
        split_dims, thresholds, luts_q, inv_scales, shifts = [], [], [], [], []
        for i, layer in enumerate(layers):
            # the per-output scalars of the full layer, then its computed columns only
            inv_scale, shift = _dispatch.lut.dequantization(layer.lut_scale_, layer._lut_offset(),
                                                             layer.bias_)
            keep = computed[i] if i < len(computed) else slice(None)
            # layer i's trees index the columns layer i - 1 computes
            dims = layer.split_dims_ if i == 0 else np.searchsorted(computed[i - 1],
                                                                    layer.split_dims_)
            split_dims.append(dims)
            thresholds.append(layer.thresholds_)
            luts_q.append(layer.luts_q_[:, :, keep])
            inv_scales.append(inv_scale[keep])
            shifts.append(shift[keep])
        self._plan = _dispatch.fused.build_plan(split_dims, thresholds, luts_q, inv_scales,
                                                shifts, layers[0].n_features_in_)
        self.computed_columns_ = computed
        self.n_features_in_ = self._plan.n_features
        self.n_outputs_ = self._plan.n_outputs
        self._widths = [layers[0].n_features_in_] + [layer.n_outputs_ for layer in layers]
        self._ncodebooks = [layer.split_dims_.shape[0] for layer in layers]

    def forward(self, X):
        """The chain's output, float32 (n, n_outputs_): the last layer's pre-activation,
        ReLU after every other layer (``relu(layers[0].predict(X))`` → … →
        ``layers[-1].predict(H)``), computed per block of rows without writing the hidden
        activations. X: (n, n_features_in_), any real dtype (cast to float32, C-ordered).
        NaN/Inf in the columns the first layer's trees read raise ``ValueError``."""
        plan = self._plan
        # float32 C-ordered X of the right width (a batch of one row, typically) goes
        # straight to the kernel: as_float_matrix and check_n_features would pass it as is
        if not (type(X) is np.ndarray and X.dtype is _FLOAT32 and X.ndim == 2
                and X.flags.c_contiguous and X.shape[1] == plan.n_features and X.shape[0]):
            X = as_float_matrix(X, "X", check_finite=False)
            check_n_features(X, "X", plan.n_features)
        out, nonfinite = _dispatch.fused.fused_chain(X, plan)
        if nonfinite:
            raise_if_nonfinite_read(nonfinite, "X")
        return out

    def __repr__(self):
        widths = " → ".join(map(str, self._widths))
        return f"FusedChain({widths}, ncodebooks={self._ncodebooks})"
