"""Learned lookup-table layers: MADDNESS trees and tables trained end to end (PyTorch).

ITLUMM (McCarter & Dronen 2022, §4) ends on the fixed 4-comparison hash as the accuracy
bottleneck and proposes a differentiable hash. Here every replaced layer of a
:class:`~lutengine.network.Network` becomes a :class:`LearnedLut` initialised from a fitted
:class:`~lutengine.LutMatmul` (MADDNESS, Blalock & Guttag 2021, §4), and the whole
network is trained on the task loss, optionally distilled from the exact network
(Hinton et al. 2015). Training needs the ``train`` extra (torch); the result is exported
to hard :class:`~lutengine.LutMatmul` layers that run on the Numba kernels, so inference
never imports torch.

The network trains as :class:`GraphModel`: each weight layer a product module (rows →
rows), :class:`Affine` for an exact layer (trained or frozen), :class:`LearnedLut` for a
lookup table; the nodes after a product that trains run in torch, each op by its
``torch_forward`` (the op table, :mod:`lutengine.ops`), and read the rest of the network
from its own forward (the deployed kernels). :func:`finetune` trains the exact layers after a replaced one
(:func:`lutengine.nn.replace_layers`, ITLUMM §2.3) with the same model and loop.

The forward pass is the deployed computation: codes by tree traversal (``x > θ`` goes
right, as :mod:`kernels.encode`), int8 tables exactly as :func:`kernels.lut.quantize_luts`
rounds them, dequantised as the scans do. The backward pass is straight-through
(Bengio et al. 2013), split in two:

* tables and bias get the gradient of the hard lookup (each row's chosen entries);
* thresholds and the layer's input get the gradient of a soft tree: node ``j`` sends a
  row right with probability ``sigmoid((x[dim_j] − θ_j) / (τ σ_j))`` and a leaf's
  probability is the product along its path. ``σ_j`` is the spread of the split value
  over the calibration rows reaching node j, so one temperature schedule τ (annealed
  geometrically from 1 to 0.1) suits every layer; thresholds are learned as
  ``θ = θ₀ + σ u`` from u = 0.
"""

import copy
import math

import numpy as np
import torch
from tqdm import tqdm

from . import _dispatch, ops
from .matmul import LutMatmul
from .nn import FIT_ROWS, _labelled, layer_rows, layers_and_codebooks
from ._validation import check_choice, check_int

#: training defaults (Adam, cosine decay, straight-through soft trees)
SETTINGS = {
    "batch_size": 256,
    "threshold_lr": 0.02,    # Adam step on u, in units of each node's spread σ
    "table_lr": 0.01,        # Adam step on the tables and bias, times their initial RMS
    "dense_lr": 1e-3,        # Adam step on the exact layers still in training
    "temperature": (1.0, 0.1),  # τ annealed geometrically, held at the end for the last 10 %
    "distill_weight": 0.5,   # α of (1 − α)·cross-entropy + α·KL(teacher ‖ student)
    "calibration_rows": 20000,  # rows each LutMatmul is fitted on (and σ measured on)
}

#: σ floor, relative to the split column's spread over all calibration rows
SPREAD_FLOOR = 1e-3


def _tree_paths():
    """(15, 16) 0/1 matrices: ``left[j, leaf]`` (``right``) when leaf's path goes left
    (right) at heap node j; and the level of every node (15,)."""
    left, right = np.zeros((15, 16), np.float32), np.zeros((15, 16), np.float32)
    for leaf in range(16):
        node = 0
        for level in range(4):
            bit = (leaf >> (3 - level)) & 1
            (right if bit else left)[2 ** level - 1 + node, leaf] = 1
            node = 2 * node + bit
    levels = np.repeat(np.arange(4), 2 ** np.arange(4))
    return left, right, levels


_LEFT, _RIGHT, _NODE_LEVEL = _tree_paths()


def _node_spreads(A, split_dims, thresholds):
    """σ (C, 15): standard deviation of each node's split value over the rows of A that
    reach it (floored by :data:`SPREAD_FLOOR` × the column's spread over all rows)."""
    codes, _ = _dispatch.lut.encode_tree(A, split_dims, thresholds)
    C = split_dims.shape[0]
    sigma = np.empty((C, 15), np.float32)
    for c in range(C):
        for j in range(15):
            level = _NODE_LEVEL[j]
            column = A[:, split_dims[c, level]]
            reach = (codes[:, c] >> (4 - level)) == j - (2 ** level - 1)
            overall = float(column.std())
            spread = float(column[reach].std()) if reach.sum() > 1 else overall
            sigma[c, j] = max(spread, SPREAD_FLOOR * overall, 1e-6)
    return sigma


def quantize_tables(T):
    """int8 tables of float32 ``T`` (C, 16, M), rounded exactly as
    :func:`kernels.lut.quantize_luts`: ``(q, offsets (C, M), scales (M,))``, q as float."""
    T64 = T.detach().double()
    low = T64.amin(dim=1)
    gap = (T64.amax(dim=1) - low).amax(dim=0)
    safe = torch.where(gap > 0, gap, torch.ones_like(gap))
    scale = torch.where(gap > 0, torch.exp2(-torch.ceil(torch.log2(safe))) * (255.5 - 1e-10),
                        torch.ones_like(gap)).float()
    q = torch.floor((T64 - low.float().double()[:, None, :]) * scale.double() + 0.5)
    return q.clamp(0, 255).float(), low.float(), scale


class _StraightThrough(torch.autograd.Function):
    """The deployed output forward; backward, the hard lookup's gradient to the tables and
    bias and the soft tree's to the leaf probabilities (tables held constant there)."""

    @staticmethod
    def forward(ctx, deployed, onehot, leaf_prob, tables, bias):
        ctx.save_for_backward(onehot, tables)
        return deployed

    @staticmethod
    def backward(ctx, grad):
        onehot, tables = ctx.saved_tensors
        flat = tables.reshape(onehot.shape[1], -1)
        return (None, None, grad @ flat.T, (onehot.T @ grad).reshape(tables.shape),
                grad.sum(dim=0))


class LearnedLut(torch.nn.Module):
    """A :class:`~lutengine.LutMatmul` in training: learned thresholds, tables and bias
    over frozen split columns, initialised from ``fitted`` and calibrated on ``A`` (the
    rows the layer receives). Without ``A`` the layer is frozen: its deployed forward,
    no soft tree, no gradient to its input (a fitted layer before the layers fine-tuned)."""

    def __init__(self, fitted, A=None, learn_thresholds=True, learn_tables=True):
        super().__init__()
        self.fitted = fitted
        split_dims = fitted.split_dims_
        self.register_buffer("node_dims", torch.from_numpy(split_dims[:, _NODE_LEVEL].copy()))
        self.register_buffer("theta0", torch.from_numpy(fitted.thresholds_[:, :15].copy()))
        self.soft = self.trains = A is not None
        learn_thresholds, learn_tables = learn_thresholds and self.soft, learn_tables and self.soft
        self.register_buffer("sigma", torch.from_numpy(
            _node_spreads(A, split_dims, fitted.thresholds_)) if self.soft
            else torch.ones_like(self.theta0))
        self.register_buffer("left", torch.from_numpy(_LEFT))
        self.register_buffer("right", torch.from_numpy(_RIGHT))
        self.shift = torch.nn.Parameter(torch.zeros_like(self.theta0),
                                        requires_grad=learn_thresholds)
        self.tables = torch.nn.Parameter(torch.from_numpy(fitted.luts_.copy()),
                                         requires_grad=learn_tables)
        self.bias = torch.nn.Parameter(torch.from_numpy(fitted.bias_.copy()),
                                       requires_grad=learn_tables)
        self.temperature = 1.0

    def thresholds(self):
        """θ = θ₀ + σ u (C, 15), float32: what the exported trees compare against."""
        return self.theta0 + self.sigma * self.shift

    def codes(self, x, theta):
        """Leaf index (n, C) of every row in every tree, by traversal (``x > θ`` right)."""
        n, C = x.shape[0], self.node_dims.shape[0]
        node = torch.zeros((n, C), dtype=torch.long)
        trees = torch.arange(C)
        for level in range(4):
            heap = 2 ** level - 1 + node
            value = torch.gather(x, 1, self.node_dims[trees[None, :], heap])
            node = 2 * node + (value > theta[trees[None, :], heap]).long()
        return node

    def forward(self, x):
        C, _, M = self.tables.shape
        theta = self.thresholds()
        with torch.no_grad():
            leaf = self.codes(x, theta) + 16 * torch.arange(C)
            onehot = torch.zeros((x.shape[0], C * 16)).scatter_(1, leaf, 1.0)
            q, low, scale = quantize_tables(self.tables)
            deployed = (onehot @ q.reshape(C * 16, M)) * (1.0 / scale) \
                + (low.double().sum(dim=0).float() + self.bias)
        if not torch.is_grad_enabled() or not self.soft:  # no soft tree where no gradient flows
            return deployed
        # clamped: empty subtrees have θ = ±inf, and sigmoid is flat beyond ±30 anyway
        z = ((x[:, self.node_dims] - theta) / (self.temperature * self.sigma)).clamp(-30, 30)
        leaf_prob = torch.exp(torch.nn.functional.logsigmoid(-z) @ self.left
                              + torch.nn.functional.logsigmoid(z) @ self.right)
        return _StraightThrough.apply(deployed, onehot, leaf_prob.reshape(-1, C * 16),
                                      self.tables, self.bias)

    def export(self):
        """The trained layer as a fitted :class:`~lutengine.LutMatmul` (hard codes, int8
        tables), whose kernels compute what :meth:`forward` computes (a frozen layer: the
        fitted one itself)."""
        if not self.soft:
            return self.fitted
        lut = copy.deepcopy(self.fitted)
        thresholds = lut.thresholds_.copy()
        thresholds[:, :15] = self.thresholds().detach().numpy()
        luts = self.tables.detach().numpy().copy()
        luts_q, offsets, scale = _dispatch.lut.quantize_luts(luts)
        state = {name: getattr(lut, name) for name in lut._state_attrs}
        state.update(thresholds_=thresholds, luts_=luts, luts_q_=luts_q, lut_offsets_=offsets,
                     lut_scale_=scale, bias_=self.bias.detach().numpy().copy())
        lut._set_state(state)
        return lut


class Affine(torch.nn.Module):
    """``rows @ W + b`` with W (n_in, n_out) and b of a :class:`~lutengine.nn.Dense`,
    trained or frozen (``trainable``); :meth:`lutengine.ops.Conv2d.torch_forward` runs it
    as ``conv2d``."""

    def __init__(self, dense, trainable):
        super().__init__()
        self.trains = trainable
        self.W = torch.nn.Parameter(torch.from_numpy(dense.W.copy()), requires_grad=trainable)
        self.b = torch.nn.Parameter(torch.from_numpy(dense.b.copy()), requires_grad=trainable)

    def forward(self, rows):
        return rows @ self.W + self.b

    def export(self):
        return ops.Dense(self.W.detach().numpy(), self.b.detach().numpy())


class GraphModel(torch.nn.Module):
    """A Network in training: weight layers as product modules (``products``, by node name:
    :class:`Affine` or :class:`LearnedLut`); exact layers whose index (into ``net.layers``)
    is in ``trainable`` train, the others are frozen.

    Only what training changes runs in torch: the nodes from the first product that trains
    (a trainable Affine, a LearnedLut in training) onwards, each op by its
    ``torch_forward``. The values they read from the rest of the network, which nothing in
    training changes, come from the Network's own forward (NumPy and the deployed kernels)
    per batch. Inputs are NumPy batches {input: array}; the output is the logits of a
    classifier (the input of a softmax head) unless another node is named."""

    def __init__(self, net, trainable):
        super().__init__()
        self.net = net
        self.products = torch.nn.ModuleDict()
        for i, node in enumerate(net.layer_nodes):
            layer = node.op.layer
            self.products[node.name] = Affine(layer, i in trainable) \
                if isinstance(layer, ops.Dense) else LearnedLut(layer)
        head = net.node(net.output)
        self.logits = head.inputs[0] if isinstance(head.op, ops.Softmax) else net.output

    def _torch_nodes(self, output):
        """The nodes torch computes for ``output`` (every node after a product that trains,
        on the way to it) and the values they read from the Network's forward."""
        live, needed = set(), {output}
        for name, _, sources in self.net.nodes:
            if (name in self.products and self.products[name].trains) \
                    or any(s in live for s in sources):
                live.add(name)
        for name, _, sources in reversed(self.net.nodes):
            if name in needed:
                needed.update(sources)
        nodes = [node for node in self.net.nodes if node.name in live & needed]
        read = dict.fromkeys(s for node in nodes for s in node.inputs if s not in live)
        return nodes, tuple(read) if output in live else (output,)

    def forward(self, X, output=None):
        """The value of node ``output`` (default: the logits) for X {input: NumPy array}."""
        output = self.logits if output is None else output
        nodes, read = self._torch_nodes(output)
        values = dict(zip(read, map(torch.from_numpy, self.net._values(X, read))))
        for name, op, sources in nodes:
            args = [values[source] for source in sources]
            if name in self.products:
                args.append(self.products[name])
            values[name] = op.torch_forward(*args)
        return values[output]

    def learned(self):
        return [m for m in self.modules() if isinstance(m, LearnedLut)]

    def values(self, X, output=None, batch=512):
        """The value of ``output`` (default: the logits) for X {input: array}, hard forward,
        as float32 NumPy blocks of ``batch`` examples."""
        self.eval()
        n = len(next(iter(X.values())))
        with torch.no_grad():
            for start in range(0, n, batch):
                yield self({k: v[start:start + batch] for k, v in X.items()}, output).numpy()

    def exported(self):
        """{layer index: estimator} of every weight layer: exported LutMatmul or Dense."""
        return {i: self.products[node.name].export()
                for i, node in enumerate(self.net.layer_nodes)}


def _optimizer(model, settings):
    groups = []
    for layer in model.learned():
        rms = float(layer.tables.detach().square().mean().sqrt()) or 1.0
        groups += [{"params": [layer.shift], "lr": settings["threshold_lr"]},
                   {"params": [layer.tables, layer.bias], "lr": settings["table_lr"] * rms}]
    learned = {id(p) for layer in model.learned() for p in layer.parameters()}
    groups.append({"params": [p for p in model.parameters() if id(p) not in learned],
                   "lr": settings["dense_lr"]})
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    return torch.optim.Adam(groups) if groups else None


def _train(model, X, y, teacher, epochs, settings, rng, progress, desc):
    """Adam on shuffled mini-batches of X ({input: array}) with cosine-decayed steps and an
    annealed τ; returns the mean loss of each epoch."""
    optimizer = _optimizer(model, settings)
    if optimizer is None or epochs == 0:
        return []
    n = len(y)
    batch = settings["batch_size"]
    steps = epochs * math.ceil(n / batch)
    bases = [g["lr"] for g in optimizer.param_groups]
    hot, cold = settings["temperature"]
    alpha = settings["distill_weight"] if teacher is not None else 0.0
    yt = torch.from_numpy(y)
    soft_targets = None if teacher is None else torch.softmax(torch.from_numpy(teacher), dim=1)
    losses, step = [], 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    model.train()
    for _ in bar:
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            tau = hot * (cold / hot) ** min(1.0, step / (0.9 * steps))
            for layer in model.learned():
                layer.temperature = tau
            for group, base in zip(optimizer.param_groups, bases):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / steps))
            logits = model({k: v[rows] for k, v in X.items()})
            picked = torch.from_numpy(rows)
            loss = torch.nn.functional.cross_entropy(logits, yt[picked])
            if alpha:
                distill = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1),
                                                     soft_targets[picked], reduction="batchmean")
                loss = (1 - alpha) * loss + alpha * distill
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            step += 1
        losses.append(total / n)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def finetune(net, X, y, trainable, settings, rng, progress):
    """``net`` with its exact layers ``trainable`` (indices into ``net.layers``, all after
    every lookup-table layer) trained on (X {input: array}, y class indices) for
    ``settings`` (:data:`lutengine.nn.FINETUNE`: epochs, batch_size, learning_rate); the
    other layers frozen. Returns a new Network."""
    trainable = [i for i in trainable if isinstance(net.layers[i], ops.Dense)]
    if not trainable:
        return net
    model = GraphModel(net, set(trainable))
    _train(model, X, y, None, settings["epochs"],
           {**SETTINGS, "batch_size": settings["batch_size"],
            "dense_lr": settings["learning_rate"]}, rng, progress, "fine-tune")
    exported = model.exported()
    return net.with_layers({i: exported[i] for i in trainable})


def learn_luts(net, X_train, y_train, ncodebooks, *, layers=None, epochs=None, distill=True,
               schedule="joint", partition="contiguous", learn_thresholds=True,
               learn_tables=True, settings=None, fit_rows=FIT_ROWS, random_state=0,
               progress=True):
    """See :func:`lutengine.nn.learn_luts`."""
    check_choice(schedule, "schedule", {"joint", "progressive"})
    X, y = _labelled(net, X_train, y_train)
    targets, counts = layers_and_codebooks(net, layers, ncodebooks)
    if any(not isinstance(layer, ops.Dense) for layer in net.layers):
        raise ValueError("every layer of net must be Dense (exact) to learn lookup tables")
    epochs = check_int(8 if epochs is None else epochs, "epochs", 0)
    check_int(fit_rows, "fit_rows", 16)
    settings = {**SETTINGS, **(settings or {})}
    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    # exact layers that stay exact are frozen; those still to convert train (progressive)
    model = GraphModel(net, set(targets) if schedule == "progressive" else set())
    teacher = np.concatenate(list(model.values(X))) if distill else None
    order = rng.permutation(len(y))[:settings["calibration_rows"]]
    calibration = {k: v[order] for k, v in X.items()}
    # progressive: the epochs shared among the stages, the first ones taking the remainder
    stage_epochs = [epochs // len(targets) + (s < epochs % len(targets))
                    for s in range(len(targets))] if schedule == "progressive" \
        else [0] * len(targets)
    history = []
    for i, C, stage in zip(tqdm(targets, desc="learn LUT layers", disable=not progress),
                           counts, stage_epochs):
        node = net.layer_nodes[i]
        A = layer_rows(net, node, model.values(calibration, node.inputs[0]),
                       len(order), fit_rows, rng)
        exact = model.products[node.name].export()
        fitted = LutMatmul(C, partition=partition, random_state=random_state,
                           progress=False).fit(A, exact.W, bias=exact.b)
        model.products[node.name] = LearnedLut(fitted, A, learn_thresholds, learn_tables)
        history += _train(model, X, y, teacher, stage, settings, rng, progress,
                          f"train (layer {i})")
    if schedule == "joint":
        history = _train(model, X, y, teacher, epochs, settings, rng, progress, "train (joint)")
    learned = net.with_layers(model.exported())
    learned.training_loss_ = history
    return learned
