"""Small ReLU/softmax networks whose layers can be replaced by lookup-table products.

:class:`MLP` holds a stack of affine layers (ReLU between them, softmax at the output);
each layer is a :class:`Dense` (exact) or any fitted estimator with ``predict(A) ≈ A W + b``
(:class:`~lutengine.LutMatmul`). :func:`replace_layers` is the incremental replacement of
ITLUMM (McCarter & Dronen 2022, §2.3): from the input to the output, each layer is fitted
on the activations it really receives from the layers already replaced, frozen, and the
exact layers after it are fine-tuned.

:class:`Network` (:mod:`lutengine.network`) is the general sequence of ops that
:func:`from_torch` / :func:`from_onnx` import (convolutions, pooling, GELU…);
:func:`replace_layers` and :func:`learn_luts` take either kind of network.

Training is a small float32 NumPy Adam loop (Kingma & Ba 2015) on the softmax
cross-entropy, with two optional ways to concentrate the hidden activations (the MIPS
experiment needs them): an L1 penalty on them, and k-winners-take-all.
"""

import copy
import math
import numbers

import numpy as np
from tqdm import tqdm

from ._validation import as_float_matrix, as_float_vector, check_int, check_n_features
from .matmul import LutMatmul
# Network and its ops are part of this module's API (nn.Network, nn.Conv2d, …)
from .network import (AvgPool2d, Conv2d, Flatten, GELU, Linear, LogSoftmax,  # noqa: F401
                      MaxPool2d, Network, ReLU, Softmax, _n_inputs, _n_outputs)

#: Adam's constants (the paper's defaults)
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

#: fine-tuning after each replaced layer: Adam epochs and step size (ITLUMM §2.3)
FINETUNE = {"epochs": 3, "batch_size": 128, "learning_rate": 5e-4}


class Dense:
    """An exact affine layer ``A @ W + b`` with W (n_in, n_out) and b (n_out,), float32."""

    def __init__(self, W, b):
        self.W = as_float_matrix(W, "W")
        self.b = as_float_vector(b, "b", self.W.shape[1])

    def predict(self, A):
        return A @ self.W + self.b

    def __repr__(self):
        return f"Dense({self.W.shape[0]} → {self.W.shape[1]})"


def relu(Z):
    """max(Z, 0) as C-contiguous float32 (what the estimators read without a copy)."""
    return np.ascontiguousarray(np.maximum(Z, 0), dtype=np.float32)


def softmax(Z):
    """Row-wise softmax, computed stably."""
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


class MLP:
    """A classifier: affine layers with ReLU between them and a softmax output.

    ``layers[i]`` maps the activations of layer i − 1 (the input for i = 0) to the
    pre-activations of layer i; ``classes`` are the labels of the output units.
    """

    def __init__(self, layers, classes=None):
        if not layers:
            raise ValueError("layers must not be empty")
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Dense) and not hasattr(type(layer), "n_outputs_"):
                raise TypeError(f"layers[{i}] must be a Dense or a fitted estimator such as "
                                f"LutMatmul, got {type(layer).__name__}")
        for i, (before, after) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            if _n_outputs(before) != _n_inputs(after):
                raise ValueError(f"layers[{i}] has {_n_outputs(before)} outputs, but "
                                 f"layers[{i + 1}] takes {_n_inputs(after)} inputs")
        n_out = _n_outputs(self.layers[-1])
        self.classes = np.arange(n_out) if classes is None else np.asarray(classes)
        if self.classes.shape != (n_out,):
            raise ValueError(f"classes must have one label per output unit ({n_out}), "
                             f"got shape {self.classes.shape}")

    @classmethod
    def from_sklearn(cls, clf):
        """The network of a fitted ``sklearn.neural_network.MLPClassifier`` (ReLU hidden
        layers, more than two classes so that the output is a softmax)."""
        if not hasattr(clf, "coefs_"):
            raise ValueError("clf must be a fitted MLPClassifier")
        if clf.activation != "relu" or clf.out_activation_ != "softmax":
            raise ValueError(f"clf must have ReLU hidden layers and a softmax output, got "
                             f"activation={clf.activation!r}, output {clf.out_activation_!r}")
        return cls([Dense(W, b) for W, b in zip(clf.coefs_, clf.intercepts_)], clf.classes_)

    @classmethod
    def train(cls, X, y, hidden_sizes, epochs=15, batch_size=128, learning_rate=1e-3, l1=0.0,
              kwta=None, random_state=0, progress=True):
        """A new network X → ReLU(hidden_sizes…) → softmax(n_classes), trained with Adam
        (see :func:`train_layers`; He-uniform hidden layers, Glorot output, zero biases).
        ``y`` holds labels 0..n_classes − 1."""
        X = as_float_matrix(X, "X")
        y = _labels(y, len(X))
        hidden_sizes = [check_int(size, f"hidden_sizes[{i}]", 1)
                        for i, size in enumerate(hidden_sizes)]
        rng = np.random.default_rng(random_state)
        sizes = [X.shape[1], *hidden_sizes, int(y.max()) + 1]
        params = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            fan = n_in if i < len(sizes) - 2 else n_in + n_out
            params += [(rng.uniform(-1, 1, (n_in, n_out)) * np.sqrt(6 / fan)).astype(np.float32),
                       np.zeros(n_out, np.float32)]
        train_layers(params, X, y, epochs, batch_size, learning_rate, l1, kwta, rng, progress)
        return cls([Dense(W, b) for W, b in zip(params[0::2], params[1::2])])

    def activations(self, X, stop):
        """What layer ``stop`` receives: X through layers 0..stop − 1 and their ReLUs."""
        check_int(stop, "stop", 0, len(self.layers) - 1)
        H = as_float_matrix(X, "X")
        check_n_features(H, "X", _n_inputs(self.layers[0]))
        for layer in self.layers[:stop]:
            H = relu(layer.predict(H))
        return H

    def decision_function(self, X):
        """Logits (n, n_classes)."""
        return self.layers[-1].predict(self.activations(X, len(self.layers) - 1))

    def predict_proba(self, X):
        return softmax(np.asarray(self.decision_function(X), dtype=np.float64))

    def predict(self, X):
        return self.classes[np.argmax(self.decision_function(X), axis=1)]

    def score(self, X, y):
        """Accuracy on (X, y)."""
        predicted, y = self.predict(X), np.asarray(y)
        if y.shape != predicted.shape:
            raise ValueError(f"y must hold one label per row of X, shape {predicted.shape}, "
                             f"got shape {y.shape}")
        return float(np.mean(predicted == y))

    def to_network(self):
        """This network as a :class:`Network` (Linear, ReLU, …, Linear, Softmax) whose
        ``forward`` is :meth:`predict_proba` in float32; the layers are shared."""
        ops = [op for layer in self.layers for op in (Linear(layer), ReLU())][:-1]
        return Network([*ops, Softmax()], (_n_inputs(self.layers[0]),), self.classes)

    def __repr__(self):
        return f"MLP({self.layers!r})"


def _labels(y, n):
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise ValueError(f"y must hold {n} integer labels >= 0, got shape {y.shape} and "
                         f"dtype {y.dtype}")
    return y.astype(np.int64)


def _class_indices(classes, y, n):
    """Indices into ``classes`` (sorted) of the labels ``y``, which must all be among them."""
    y = np.asarray(y)
    idx = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
    if y.shape != (n,) or not np.array_equal(classes[idx], y):
        raise ValueError(f"y_train must hold {n} labels among the network's classes "
                         f"{classes.tolist()}, got shape {y.shape}")
    return idx.astype(np.int64)


def kwta_mask(Z, k):
    """Boolean mask of the ``k`` largest entries of each row of ``Z``."""
    mask = np.zeros(Z.shape, dtype=bool)
    if k >= Z.shape[1]:
        mask[:] = True
        return mask
    top = np.argpartition(Z, Z.shape[1] - k, axis=1)[:, Z.shape[1] - k:]
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def loss_and_grads(params, X, y, l1=0.0, kwta=None):
    """Loss of a batch and its gradients with respect to ``params`` [W0, b0, W1, b1, …].

    loss = mean over rows of the softmax cross-entropy + ``l1`` · mean over rows of the
    sum of the hidden activations h = ReLU(Z), restricted to the ``kwta`` largest
    pre-activations of each row when ``kwta`` is given (the others are set to 0).
    """
    Ws, bs = params[0::2], params[1::2]
    n = X.shape[0]
    inputs, masks = [X], []
    for W, b in zip(Ws[:-1], bs[:-1]):
        Z = inputs[-1] @ W + b
        active = Z > 0
        if kwta is not None:
            active &= kwta_mask(Z, kwta)
        masks.append(active)
        inputs.append(np.where(active, Z, 0).astype(Z.dtype, copy=False))
    logits = inputs[-1] @ Ws[-1] + bs[-1]
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = -np.mean(np.log(P[rows, y])) + l1 * sum(float(H.sum()) for H in inputs[1:]) / n
    dZ = P
    dZ[rows, y] -= 1
    dZ /= n
    grads = [None] * len(params)
    for i in reversed(range(len(Ws))):
        grads[2 * i], grads[2 * i + 1] = inputs[i].T @ dZ, dZ.sum(axis=0)
        if i:
            dH = dZ @ Ws[i].T + l1 / n  # h ≥ 0, so d|h|/dh = 1 where h is active
            dZ = np.where(masks[i - 1], dH, 0).astype(dH.dtype, copy=False)
    return float(loss), grads


def train_layers(params, X, y, epochs, batch_size, learning_rate, l1=0.0, kwta=None, rng=None,
                 progress=True):
    """Adam on shuffled mini-batches, updating ``params`` (see :func:`loss_and_grads`) in
    place for a fixed number of epochs; ``rng`` (seed or Generator) orders the batches."""
    rng = np.random.default_rng(rng)
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
    step = 0
    bar = tqdm(range(epochs), desc="train MLP", disable=not progress, leave=False)
    for _ in bar:
        order = rng.permutation(len(X))
        total = 0.0
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            loss, grads = loss_and_grads(params, X[batch], y[batch], l1, kwta)
            total += loss * len(batch)
            step += 1
            rate = float(learning_rate * np.sqrt(1 - b2 ** step) / (1 - b1 ** step))
            for p, g, m, v in zip(params, grads, first, second):
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                p -= rate * m / (np.sqrt(v) + eps)
        bar.set_postfix(loss=f"{total / len(X):.4f}")


def layers_and_codebooks(net, layers, ncodebooks):
    """The sorted indices of the ``layers`` of ``net`` to replace (all when None) and the
    number of codebooks of each (``ncodebooks``: an int, or one per replaced layer)."""
    last = len(net.layers) - 1
    if layers is not None and any(isinstance(i, (bool, np.bool_))
                                  or not isinstance(i, numbers.Integral) for i in layers):
        raise TypeError(f"layers must be integer indices in 0..{last}, got {layers!r}")
    targets = list(range(last + 1)) if layers is None else sorted(layers)
    if not targets or any(not 0 <= i <= last for i in targets):
        raise ValueError(f"layers must be indices in 0..{last}, got {layers!r}")
    counts = np.asarray(ncodebooks)
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"ncodebooks must be an integer or one integer per replaced layer, "
                        f"got {ncodebooks!r}")
    if counts.shape not in ((), (len(targets),)):
        raise ValueError(f"ncodebooks must be an integer or hold one per replaced layer "
                         f"({len(targets)}), got shape {counts.shape}")
    return targets, [int(C) for C in np.broadcast_to(counts, (len(targets),))]


def _replacement_targets(net, layers, ncodebooks):
    """:func:`layers_and_codebooks`, checking that the layers to replace and every layer
    after them are Dense (what replace_layers fits and fine-tunes)."""
    targets, counts = layers_and_codebooks(net, layers, ncodebooks)
    if any(not isinstance(layer, Dense) for layer in net.layers[targets[0]:]):
        raise ValueError("the layers to replace and every layer after them must be Dense")
    return targets, counts


def replace_layers(net, X_train, y_train, ncodebooks, layers=None, partition="contiguous",
                   lut_objective="ridge", finetune=True, finetune_settings=None,
                   random_state=0, progress=True):
    """Replace layers of ``net`` by fitted :class:`~lutengine.LutMatmul` (ITLUMM §2.3).

    From the input to the output, each layer in ``layers`` (default: all) is fitted on
    the activations it receives from the already-replaced network on ``X_train``, then
    frozen; with ``finetune`` the exact layers after it are trained on ``(X_train,
    y_train)`` for :data:`FINETUNE` (overridden by ``finetune_settings``).

    ``lut_objective`` "ridge" is MADDNESS's tables; "mse" fits the tables through each
    layer's nonlinearity (ReLU for hidden layers, softmax for the output); "kl" does so for
    the output layer with the KL divergence of the softmax, and uses "mse" for hidden
    layers (KL is defined for distributions only). ``partition`` and ``ncodebooks`` (an
    int, or one per replaced layer) go to every :class:`~lutengine.LutMatmul`.
    ``net`` may be an :class:`MLP` or a :class:`Network`. A Network of a Linear / ReLU
    chain is replaced as an MLP; in any other Network (convolutions, pooling…) a Conv2d
    is fitted on :data:`FIT_ROWS` patches drawn at random from the activations it receives,
    and ``finetune`` trains the exact Linear / ReLU chain at the end of the network, if
    any, after each replaced layer.
    Returns a new network of ``net``'s type; ``net`` is left unchanged.
    """
    if isinstance(net, Network):
        mlp = _mlp_of(net)
        if mlp is None:
            return _replace_network_layers(net, X_train, y_train, ncodebooks, layers, partition,
                                           lut_objective, finetune, finetune_settings,
                                           random_state, progress)
        X = net._validated(X_train)
        replaced = replace_layers(mlp, X.reshape(len(X), -1), y_train, ncodebooks, layers,
                                  partition, lut_objective, finetune, finetune_settings,
                                  random_state, progress)
        return net.with_layers(dict(enumerate(replaced.layers)))

    net = MLP(copy.deepcopy(net.layers), net.classes)
    X = as_float_matrix(X_train, "X_train")
    check_n_features(X, "X_train", _n_inputs(net.layers[0]))
    y = _class_indices(net.classes, y_train, len(X))
    targets, counts = _replacement_targets(net, layers, ncodebooks)
    settings = {**FINETUNE, **(finetune_settings or {})}
    rng = np.random.default_rng(random_state)
    H, fed = X, 0  # H is what layer ``fed`` receives, carried forward layer by layer
    for i, C in zip(tqdm(targets, desc="replace layers", disable=not progress), counts):
        for between in net.layers[fed:i]:
            H = relu(between.predict(H))
        layer = net.layers[i]
        output = i == len(net.layers) - 1
        objective = "mse" if lut_objective == "kl" and not output else lut_objective
        activation = None if objective == "ridge" else ("softmax" if output else "relu")
        net.layers[i] = LutMatmul(C, partition=partition, lut_objective=objective,
                                  activation=activation, random_state=random_state,
                                  progress=False).fit(H, layer.W, bias=layer.b)
        if not output:
            H, fed = relu(net.layers[i].predict(H)), i + 1
            if finetune:
                params = [p for later in net.layers[fed:] for p in (later.W, later.b)]
                train_layers(params, H, y, rng=rng, progress=progress, **settings)
    return net


#: rows (patches for a Conv2d) each layer of a :class:`Network` is fitted on
FIT_ROWS = 32768


def _mlp_of(net):
    """The :class:`MLP` of a Network that is a Linear / ReLU chain (after an optional
    Flatten, before an optional softmax head), sharing its layers; None for any other."""
    ops = list(net.ops)
    ops = ops[1:] if isinstance(ops[0], Flatten) else ops
    ops = ops[:-1] if ops and isinstance(ops[-1], Softmax) else ops
    if len(ops) % 2 == 0 or not all(isinstance(op, Linear) for op in ops[0::2]) \
            or not all(isinstance(op, ReLU) for op in ops[1::2]):
        return None
    return MLP([op.layer for op in ops[0::2]], net.classes)


def _activation_after(net, op_index, objective):
    """The nonlinearity the "mse" / "kl" table fit goes through: what follows the layer."""
    if objective == "ridge":
        return None
    following = net.ops[op_index + 1] if op_index + 1 < len(net.ops) else None
    if isinstance(following, ReLU):
        return "relu"
    return "softmax" if following is None or isinstance(following, Softmax) else None


def _fit_rows(net, X, op_index, rng):
    """At most :data:`FIT_ROWS` rows of what ``ops[op_index]`` multiplies for inputs X: its
    input rows, or patches drawn uniformly from the images' activations for a Conv2d."""
    op = net.ops[op_index]
    if not isinstance(op, Conv2d):
        rows = rng.choice(len(X), min(len(X), FIT_ROWS), replace=False)
        return net.inputs_of(X[np.sort(rows)], op_index)
    per_image = math.prod(net.shapes[op_index + 1][1:])
    keep = min(1.0, FIT_ROWS / (len(X) * per_image))
    chunk = max(1, 4096 // per_image)
    samples = []
    for start in range(0, len(X), chunk):
        P = op.patches(net.run(X[start:start + chunk], 0, op_index))
        samples.append(P[rng.random(len(P)) < keep])
    return np.ascontiguousarray(np.concatenate(samples))


def _dense_tail(net, op_index):
    """(op index, Dense layers) of the exact Linear / ReLU chain that ends the network after
    ``ops[op_index]`` (softmax head aside), or None when another weight layer comes first."""
    ops = list(net.ops[:-1] if isinstance(net.ops[-1], Softmax) else net.ops)
    first = next((i for i in range(op_index + 1, len(ops))
                  if isinstance(ops[i], (Linear, Conv2d))), None)
    if first is None or not all(isinstance(op, Linear) and isinstance(op.layer, Dense)
                                for op in ops[first::2]) \
            or not all(isinstance(op, ReLU) for op in ops[first + 1::2]) \
            or len(ops[first:]) % 2 == 0:
        return None
    return first, [op.layer for op in ops[first::2]]


def _replace_network_layers(net, X_train, y_train, ncodebooks, layers, partition, lut_objective,
                            finetune, finetune_settings, random_state, progress):
    """:func:`replace_layers` on a Network with convolutions (see there)."""
    net = copy.deepcopy(net)
    X = net._validated(X_train)
    y = _class_indices(net.classes, y_train, len(X))
    targets, counts = _replacement_targets(net, layers, ncodebooks)
    settings = {**FINETUNE, **(finetune_settings or {})}
    rng = np.random.default_rng(random_state)
    for i, C in zip(tqdm(targets, desc="replace layers", disable=not progress), counts):
        op_index = net.layer_indices[i]
        layer = net.layers[i]
        output = op_index == net.layer_indices[-1]
        objective = "mse" if lut_objective == "kl" and not output else lut_objective
        fitted = LutMatmul(C, partition=partition, lut_objective=objective,
                           activation=_activation_after(net, op_index, objective),
                           random_state=random_state, progress=False)
        net = net.with_layers({i: fitted.fit(_fit_rows(net, X, op_index, rng), layer.W,
                                             bias=layer.b)})
        tail = _dense_tail(net, op_index) if finetune else None
        if tail is not None:
            first, dense = tail
            H = net.inputs_of(X, first).reshape(len(X), -1)
            train_layers([p for d in dense for p in (d.W, d.b)], H, y, rng=rng,
                         progress=progress, **settings)
    return net


def from_torch(module, example_input):
    """The :class:`Network` computing a PyTorch ``module``: a chain of Linear, Conv2d,
    BatchNorm (folded), ReLU, GELU, MaxPool2d / AvgPool2d, Flatten, Dropout / Identity and
    a final Softmax / LogSoftmax, traced by ``torch.fx`` and checked against the module on
    ``example_input`` (a batch of its inputs) before it is returned. Any other op is
    rejected by name and node (:mod:`lutengine.importers`). Needs PyTorch."""
    from .importers import torch_network

    return torch_network(module, example_input)


def from_onnx(path):
    """The :class:`Network` of an ONNX file holding a chain of the ops :func:`from_torch`
    takes (Gemm, MatMul + Add, Conv, BatchNormalization, Relu, Gelu, MaxPool, AveragePool,
    Flatten, Softmax / LogSoftmax; :func:`lutengine.importers.onnx_network`), checked
    against onnxruntime when it is installed. Any other op is rejected by name and node.
    Needs the ``onnx`` package."""
    from .importers import onnx_network

    return onnx_network(path)


def learn_luts(net, X_train, y_train, ncodebooks, *, layers=None, epochs=None, distill=True,
               schedule="joint", partition="contiguous", learn_thresholds=True,
               learn_tables=True, settings=None, random_state=0, progress=True):
    """Replace layers of ``net`` by lookup-table layers trained end to end.

    Each layer in ``layers`` (default: all) is fitted as a :class:`~lutengine.LutMatmul`
    on the activations it receives (from the input to the output, as
    :func:`replace_layers`), then its thresholds, tables and bias are trained through a
    straight-through soft tree on the softmax cross-entropy of ``(X_train, y_train)``,
    with ``distill`` also on the KL divergence to ``net``'s outputs
    (:mod:`lutengine.learned`). ``schedule`` "joint" converts every layer first and
    trains them together for ``epochs`` (default 8); "progressive" trains after each
    conversion for ``epochs // len(layers)`` epochs, with the exact layers still to be
    converted (ITLUMM §2.3's incremental route). Exact layers that stay exact are frozen.
    ``learn_thresholds`` / ``learn_tables`` freeze either part (ablations); ``settings``
    overrides :data:`lutengine.learned.SETTINGS`.

    ``net`` is an :class:`MLP` or a :class:`Network` of Dense layers (a Conv2d learns
    over its im2col patches, fitted on :data:`FIT_ROWS` of them).
    Returns a new network of ``net``'s type whose learned layers are fitted :class:`~lutengine.LutMatmul`
    (hard codes, int8 tables) that run on the usual kernels; ``net`` is left unchanged.
    Needs PyTorch (``pip install "lutengine[train]"``); inference never imports it.
    """
    try:
        from . import learned
    except ImportError as exc:
        raise ImportError("learn_luts needs PyTorch: pip install 'lutengine[train]' (see "
                          "README for the CPU-only wheel)") from exc
    network = net.to_network() if isinstance(net, MLP) else net
    if isinstance(net, MLP):
        check_n_features(as_float_matrix(X_train, "X_train"), "X_train", network.input_shape[0])
    result = learned.learn_luts(network, X_train, y_train, ncodebooks, layers=layers,
                                epochs=epochs, distill=distill, schedule=schedule,
                                partition=partition, learn_thresholds=learn_thresholds,
                                learn_tables=learn_tables, settings=settings,
                                random_state=random_state, progress=progress)
    if isinstance(net, MLP):
        history, result = result.training_loss_, MLP(result.layers, net.classes)
        result.training_loss_ = history
    return result
