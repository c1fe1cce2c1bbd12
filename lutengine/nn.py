"""Networks whose layers can be replaced by lookup-table products.

A network is a :class:`Network` (:mod:`lutengine.network`): a graph of the ops of
:mod:`lutengine.ops`, built by hand, by :class:`MLP` (a Linear / ReLU chain with a softmax
head: ``MLP(layers)``, :meth:`MLP.train`, :meth:`MLP.from_sklearn`) or imported
(:func:`from_torch`, :func:`from_onnx`). Every function here takes any Network:

* :func:`replace_layers` is the incremental replacement of ITLUMM (McCarter & Dronen 2022,
  §2.3): from the input to the output, each weight layer is fitted as a
  :class:`~lutengine.LutMatmul` on (at most ``fit_rows`` of) the rows it really multiplies in
  the network already replaced, frozen, and the exact layers after it are fine-tuned;
* :func:`learn_luts` trains the lookup-table layers end to end (:mod:`lutengine.learned`).

:meth:`MLP.train` is a small float32 NumPy Adam loop (Kingma & Ba 2015) on the softmax
cross-entropy, with two optional ways to concentrate the hidden activations (the MIPS
experiment needs them): an L1 penalty on them, and k-winners-take-all. It needs no PyTorch;
fine-tuning and learned layers train with PyTorch's autograd (the ``train`` extra).
"""

import numbers

import numpy as np
from tqdm import tqdm

from ._validation import as_float_matrix, check_int
from .matmul import LutMatmul
# the network type and the op table are part of this module's API (nn.Network, nn.Conv2d, …)
from .network import Input, Network, Node  # noqa: F401
from .ops import (Add, AvgPool2d, BatchNorm, Concat, Conv2d, Dense, Embedding,  # noqa: F401
                  Flatten, GELU, Identity, Linear, LogSoftmax, MaxPool2d, Mul, ReLU, Softmax)

#: Adam's constants (the paper's defaults)
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

#: fine-tuning after each replaced layer: Adam epochs, batch size and step size (ITLUMM §2.3)
FINETUNE = {"epochs": 3, "batch_size": 128, "learning_rate": 5e-4}

#: rows (patches for a Conv2d) each layer is fitted on at most, drawn uniformly from the rows
#: it multiplies for the training examples (every row when there are no more)
FIT_ROWS = 65536


def relu(Z):
    """max(Z, 0) as C-contiguous float32 (what the estimators read without a copy)."""
    return np.ascontiguousarray(np.maximum(Z, 0), dtype=np.float32)


class MLP(Network):
    """A classifier chain as a :class:`Network`: ``layers[0]`` → ReLU → … → ``layers[-1]``
    → Softmax. Each layer is a :class:`Dense` or a fitted estimator such as
    :class:`~lutengine.LutMatmul`; ``classes`` label the outputs (default 0..k − 1)."""

    def __init__(self, layers, classes=None):
        if isinstance(layers, Dense) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers must be a list of layers, got {type(layers).__name__}")
        layers = list(layers)
        if not layers:
            raise ValueError("layers must not be empty")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense) and not hasattr(type(layer), "n_outputs_"):
                raise TypeError(f"layers[{i}] must be a Dense or a fitted estimator such as "
                                f"LutMatmul, got {type(layer).__name__}")
        ops = [op for layer in layers for op in (Linear(layer), ReLU())][:-1]
        super().__init__([*ops, Softmax()], (layers[0].n_features_in_,), classes=classes)

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
    if not isinstance(net, Network):
        raise TypeError(f"net must be a Network, got {type(net).__name__}")
    last = len(net.layers) - 1
    if last < 0:
        raise ValueError("net has no weight layers (Linear or Conv2d) to replace")
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


def _labelled(net, X_train, y_train):
    """(X as {input: array}, y as class indices) for training ``net`` on labels."""
    X, n = net._validated(X_train, "X_train")
    if net.classes is None:
        raise ValueError(f"net must be a classifier ((n, classes) outputs) to train on labels, "
                         f"its output is (n, {', '.join(map(str, net.shapes[net.output]))})")
    return X, _class_indices(net.classes, y_train, n)


def _activation_after(net, node, objective):
    """The nonlinearity the "mse" / "kl" table fit goes through: what reads the layer
    (ReLU, or a softmax head; the logits of a classifier's output)."""
    if objective == "ridge":
        return None
    readers = [other.op for other in net.nodes if node.name in other.inputs]
    if len(readers) == 1 and isinstance(readers[0], ReLU):
        return "relu"
    if (len(readers) == 1 and isinstance(readers[0], Softmax)) \
            or (node.name == net.output and net.classes is not None):
        return "softmax"
    return None


def layer_rows(net, node, inputs, n, fit_rows, rng):
    """At most ``fit_rows`` of the rows the layer of ``node`` multiplies (its input rows, or
    a Conv2d's patches) for ``n`` examples, drawn uniformly without replacement, in order;
    all when there are no more. ``inputs`` yields what the node receives, in blocks of
    examples, in order; only each block's chosen rows are kept."""
    total = n * node.op.rows_per_example(net.shapes[node.name])
    chosen = None if total <= fit_rows else np.sort(rng.choice(total, fit_rows, replace=False))
    kept, start = [], 0
    for rows in map(node.op.rows, inputs):
        if chosen is None:
            kept.append(rows)
        else:
            pick = chosen[np.searchsorted(chosen, start):np.searchsorted(chosen, start + len(rows))]
            kept.append(rows[pick - start])
        start += len(rows)
    return np.ascontiguousarray(np.concatenate(kept), dtype=np.float32)


def replace_layers(net, X_train, y_train, ncodebooks, layers=None, partition="contiguous",
                   lut_objective="ridge", finetune=True, finetune_settings=None,
                   fit_rows=FIT_ROWS, random_state=0, progress=True):
    """Replace weight layers of ``net`` by fitted :class:`~lutengine.LutMatmul` (ITLUMM §2.3).

    From the input to the output (the order of :attr:`Network.layers`), each layer in
    ``layers`` (default: all) is fitted on at most ``fit_rows`` of the rows it multiplies
    (its input rows, or a Conv2d's patches) for ``X_train`` in the network already
    replaced, then frozen; with ``finetune`` every exact layer after it is trained on
    ``(X_train, y_train)`` for :data:`FINETUNE` (overridden by ``finetune_settings``; needs
    PyTorch, the ``train`` extra). The same steps whatever the graph.

    ``lut_objective`` "ridge" is MADDNESS's tables; "mse" fits the tables through the
    nonlinearity that reads the layer (a ReLU, or the softmax of a classifier's output); "kl"
    does so for the output layer with the KL divergence of the softmax, and uses "mse" for
    the others (KL is defined for distributions only). ``partition`` and ``ncodebooks`` (an
    int, or one per replaced layer) go to every :class:`~lutengine.LutMatmul`.
    The layers to replace and every layer after them must be exact (:class:`Dense`).
    Returns a new Network; ``net`` is left unchanged.
    """
    X, y = _labelled(net, X_train, y_train)
    targets, counts = layers_and_codebooks(net, layers, ncodebooks)
    if any(not isinstance(layer, Dense) for layer in net.layers[targets[0]:]):
        raise ValueError("the layers to replace and every layer after them must be Dense")
    check_int(fit_rows, "fit_rows", 16)
    settings = {**FINETUNE, **(finetune_settings or {})}
    learned = _learned("replace_layers(finetune=True)") if finetune else None
    rng = np.random.default_rng(random_state)
    last = len(net.layers) - 1
    for i, C in zip(tqdm(targets, desc="replace layers", disable=not progress), counts):
        node = net.layer_nodes[i]
        objective = "mse" if lut_objective == "kl" and i < last else lut_objective
        fitted = LutMatmul(C, partition=partition, lut_objective=objective,
                           activation=_activation_after(net, node, objective),
                           random_state=random_state, progress=False)
        n, step = len(y), net._chunk_rows
        inputs = (net.forward({k: v[s:s + step] for k, v in X.items()}, output=node.inputs[0])
                  for s in range(0, n, step))  # what the layer receives, chunk by chunk
        fitted.fit(layer_rows(net, node, inputs, n, fit_rows, rng), node.op.layer.W,
                   bias=node.op.layer.b)
        net = net.with_layers({i: fitted})
        if learned is not None and i < last:
            net = learned.finetune(net, X, y, range(i + 1, last + 1), settings, rng, progress)
    return net


def _learned(what):
    """lutengine.learned, or an ImportError saying what needs PyTorch."""
    try:
        from . import learned
    except ImportError as exc:
        raise ImportError(f"{what} needs PyTorch: pip install 'lutengine[train]' (see README "
                          "for the CPU-only wheel)") from exc
    return learned


def from_torch(module, example_input):
    """The :class:`Network` computing a PyTorch ``module``, traced by ``torch.fx`` and
    checked against the module on ``example_input`` (a batch of its inputs; a tuple or dict
    for several) and on random inputs of the same batch size before it is returned. The ops
    it takes are those of docs/ops.md (:mod:`lutengine.ops`); any other is rejected by name
    and node (:mod:`lutengine.importers`). Needs PyTorch."""
    from .importers import torch_network

    return torch_network(module, example_input)


def from_onnx(path):
    """The :class:`Network` of an ONNX file of the ops of docs/ops.md, checked against
    onnxruntime on random inputs of the model's batch size when onnxruntime is installed.
    Every declared size is checked against the limits of :mod:`lutengine.config` before
    anything is allocated; external data is read only from inside the model's folder. Needs
    the ``onnx`` package."""
    from .importers import onnx_network

    return onnx_network(path)


def learn_luts(net, X_train, y_train, ncodebooks, *, layers=None, epochs=None, distill=True,
               schedule="joint", partition="contiguous", learn_thresholds=True,
               learn_tables=True, settings=None, fit_rows=FIT_ROWS, random_state=0,
               progress=True):
    """Replace weight layers of ``net`` by lookup-table layers trained end to end.

    Each layer in ``layers`` (default: all) is fitted as a :class:`~lutengine.LutMatmul`
    on at most ``fit_rows`` of the rows it multiplies (as :func:`replace_layers`, for at
    most ``settings["calibration_rows"]`` examples), then its thresholds, tables and bias are
    trained through a straight-through soft tree on the softmax cross-entropy of
    ``(X_train, y_train)``, with ``distill`` also on the KL divergence to ``net``'s outputs
    (:mod:`lutengine.learned`). ``schedule`` "joint" converts every layer first and trains
    them together for ``epochs`` (default 8); "progressive" trains after each conversion,
    ``epochs`` in all shared among the stages, with the exact layers still to be converted
    (ITLUMM §2.3's incremental route). Exact layers that stay exact are frozen.
    ``learn_thresholds`` / ``learn_tables`` freeze either part (ablations); ``settings``
    overrides :data:`lutengine.learned.SETTINGS`. Every weight layer of ``net`` must be
    exact (:class:`Dense`).

    Returns a new Network whose learned layers are fitted :class:`~lutengine.LutMatmul`
    (hard codes, int8 tables) that run on the usual kernels, with ``training_loss_`` (the
    mean loss of each epoch); ``net`` is left unchanged. Needs PyTorch (``pip install
    "lutengine[train]"``); inference never imports it.
    """
    return _learned("learn_luts").learn_luts(
        net, X_train, y_train, ncodebooks, layers=layers, epochs=epochs, distill=distill,
        schedule=schedule, partition=partition, learn_thresholds=learn_thresholds,
        learn_tables=learn_tables, settings=settings, fit_rows=fit_rows,
        random_state=random_state, progress=progress)
