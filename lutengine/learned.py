"""Learned lookup-table layers: MADDNESS trees and tables trained end to end (PyTorch).

ITLUMM (McCarter & Dronen 2022, §4) ends on the fixed 4-comparison hash as the accuracy
bottleneck and proposes a differentiable hash. Here every replaced layer of an
:class:`~lutengine.nn.MLP` becomes a :class:`LearnedLut` initialised from a fitted
:class:`~lutengine.LutMatmul` (MADDNESS, Blalock & Guttag 2021, §4), and the whole
network is trained on the task loss, optionally distilled from the exact network
(Hinton et al. 2015). Training needs the ``train`` extra (torch); the result is exported
to hard :class:`~lutengine.LutMatmul` layers that run on the Numba kernels, so inference
never imports torch.

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

from . import _dispatch
from .matmul import LutMatmul
from . import network as nw
from .nn import FIT_ROWS, Dense, _class_indices, layers_and_codebooks
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
    rows the layer receives)."""

    def __init__(self, fitted, A, learn_thresholds=True, learn_tables=True):
        super().__init__()
        self.fitted = fitted
        split_dims = fitted.split_dims_
        self.register_buffer("node_dims", torch.from_numpy(split_dims[:, _NODE_LEVEL].copy()))
        self.register_buffer("theta0", torch.from_numpy(fitted.thresholds_[:, :15].copy()))
        self.register_buffer("sigma", torch.from_numpy(
            _node_spreads(A, split_dims, fitted.thresholds_)))
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
        if not torch.is_grad_enabled():  # inference passes need no soft tree
            return deployed
        # clamped: empty subtrees have θ = ±inf, and sigmoid is flat beyond ±30 anyway
        z = ((x[:, self.node_dims] - theta) / (self.temperature * self.sigma)).clamp(-30, 30)
        leaf_prob = torch.exp(torch.nn.functional.logsigmoid(-z) @ self.left
                              + torch.nn.functional.logsigmoid(z) @ self.right)
        return _StraightThrough.apply(deployed, onehot, leaf_prob.reshape(-1, C * 16),
                                      self.tables, self.bias)

    def export(self):
        """The trained layer as a fitted :class:`~lutengine.LutMatmul` (hard codes, int8
        tables), whose kernels compute what :meth:`forward` computes."""
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


class _LearnedConv(torch.nn.Module):
    """A :class:`LearnedLut` over the im2col patches of a Conv2d (``unfold`` order)."""

    def __init__(self, lut, op):
        super().__init__()
        self.lut, self.op = lut, op

    def forward(self, x):
        op = self.op
        patches = torch.nn.functional.unfold(x, op.kernel_size, padding=op.padding,
                                             stride=op.stride)
        rows, cols = ((n + 2 * p - k) // s + 1 for n, k, s, p in
                      zip(x.shape[2:], op.kernel_size, op.stride, op.padding))
        out = self.lut(patches.transpose(1, 2).reshape(-1, patches.shape[1]))
        return out.reshape(len(x), rows * cols, -1).transpose(1, 2).reshape(len(x), -1, rows,
                                                                            cols)


def _torch_op(op, trainable):
    """The torch module computing a (Dense) op of a Network; None for a softmax head."""
    if isinstance(op, (nw.Linear, nw.Conv2d)):
        W, b = op.layer.W, op.layer.b
        if isinstance(op, nw.Linear):
            module = torch.nn.Linear(*W.shape)
            weight = W.T
        else:
            module = torch.nn.Conv2d(op.in_channels, W.shape[1], op.kernel_size, op.stride,
                                     op.padding)
            weight = W.T.reshape(module.weight.shape)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            module.bias.copy_(torch.from_numpy(b))
        return module.requires_grad_(trainable)
    if isinstance(op, (nw.MaxPool2d, nw.AvgPool2d)):
        pool = torch.nn.MaxPool2d if isinstance(op, nw.MaxPool2d) else torch.nn.AvgPool2d
        return pool(op.kernel_size, op.stride, op.padding)
    if isinstance(op, nw.GELU):
        return torch.nn.GELU(op.approximate)
    if isinstance(op, nw.Softmax):
        return None
    return {nw.ReLU: torch.nn.ReLU, nw.Flatten: torch.nn.Flatten}[type(op)]()


class _Model(torch.nn.Module):
    """A Network's ops as torch modules, up to its logits (a softmax head is left out)."""

    def __init__(self, net, trainable):
        super().__init__()
        ops = [_torch_op(op, i in trainable) for i, op in enumerate(net.ops)]
        self.ops = torch.nn.ModuleList(ops[:-1] if ops[-1] is None else ops)

    def forward(self, x, stop=None):
        """Logits, or with ``stop`` what ``ops[stop]`` receives."""
        for op in self.ops[:stop]:
            x = op(x)
        return x

    def learned(self):
        return [m for m in self.modules() if isinstance(m, LearnedLut)]


def _inputs_of(model, X, op_index, batch=512):
    """What ``ops[op_index]`` receives from ``model`` (hard forward) for X: float32."""
    model.eval()
    with torch.no_grad():
        parts = [model(torch.from_numpy(X[s:s + batch]), stop=op_index).numpy()
                 for s in range(0, len(X), batch)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _calibration(model, net, X, op_index, rng):
    """The rows the layer at ``op_index`` is fitted and calibrated on: its inputs for X, or
    :data:`lutengine.nn.FIT_ROWS` of their patches for a Conv2d."""
    A = _inputs_of(model, X, op_index)
    op = net.ops[op_index]
    if isinstance(op, nw.Conv2d):
        A = op.patches(A)
        A = A[np.sort(rng.choice(len(A), min(len(A), FIT_ROWS), replace=False))]
    return np.ascontiguousarray(A)


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
    """Adam on shuffled mini-batches with cosine-decayed steps and an annealed τ; returns
    the mean loss of each epoch."""
    optimizer = _optimizer(model, settings)
    if optimizer is None or epochs == 0:
        return []
    batch = settings["batch_size"]
    steps = epochs * math.ceil(len(X) / batch)
    bases = [g["lr"] for g in optimizer.param_groups]
    hot, cold = settings["temperature"]
    alpha = settings["distill_weight"] if teacher is not None else 0.0
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    soft_targets = None if teacher is None else torch.softmax(torch.from_numpy(teacher), dim=1)
    losses, step = [], 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    model.train()
    for _ in bar:
        order = torch.from_numpy(rng.permutation(len(X)))
        total = 0.0
        for start in range(0, len(X), batch):
            rows = order[start:start + batch]
            progress_frac = min(1.0, step / (0.9 * steps))
            tau = hot * (cold / hot) ** progress_frac
            for layer in model.learned():
                layer.temperature = tau
            for group, base in zip(optimizer.param_groups, bases):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / steps))
            logits = model(Xt[rows])
            loss = torch.nn.functional.cross_entropy(logits, yt[rows])
            if alpha:
                log_student = torch.log_softmax(logits, dim=1)
                distill = torch.nn.functional.kl_div(log_student, soft_targets[rows],
                                                     reduction="batchmean")
                loss = (1 - alpha) * loss + alpha * distill
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            step += 1
        losses.append(total / len(X))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def learn_luts(net, X_train, y_train, ncodebooks, *, layers=None, epochs=None, distill=True,
               schedule="joint", partition="contiguous", learn_thresholds=True,
               learn_tables=True, settings=None, random_state=0, progress=True):
    """See :func:`lutengine.nn.learn_luts`; ``net`` is a :class:`~lutengine.network.Network`
    of Dense layers."""
    check_choice(schedule, "schedule", {"joint", "progressive"})
    X = net._validated(X_train)
    y = _class_indices(net.classes, y_train, len(X))
    targets, counts = layers_and_codebooks(net, layers, ncodebooks)
    if any(not isinstance(layer, Dense) for layer in net.layers):
        raise ValueError("every layer of net must be Dense (exact) to learn lookup tables")
    if epochs is None:
        epochs = 8
    check_int(epochs, "epochs", 0)
    settings = {**SETTINGS, **(settings or {})}
    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    positions = [net.layer_indices[i] for i in targets]
    # exact layers that stay exact are frozen; those still to convert train (progressive)
    model = _Model(net, set(positions) if schedule == "progressive" else set())
    teacher = _inputs_of(model, X, len(model.ops)) if distill else None
    calibration = X[rng.permutation(len(X))[:settings["calibration_rows"]]]
    stage_epochs = max(1, epochs // len(targets)) if schedule == "progressive" else 0
    history = []
    for i, C, position in zip(tqdm(targets, desc="learn LUT layers", disable=not progress),
                              counts, positions):
        A = _calibration(model, net, calibration, position, rng)
        exact = model.ops[position]
        W = exact.weight.detach().numpy().reshape(len(exact.weight), -1).T.copy()
        fitted = LutMatmul(C, partition=partition, random_state=random_state,
                           progress=False).fit(A, W, bias=exact.bias.detach().numpy().copy())
        lut = LearnedLut(fitted, A, learn_thresholds, learn_tables)
        model.ops[position] = lut if isinstance(exact, torch.nn.Linear) \
            else _LearnedConv(lut, net.ops[position])
        history += _train(model, X, y, teacher, stage_epochs, settings, rng, progress,
                          f"train (layer {i})")
    if schedule == "joint":
        history = _train(model, X, y, teacher, epochs, settings, rng, progress, "train (joint)")
    learned = net.with_layers({i: _exported(model.ops[position])
                               for i, position in enumerate(net.layer_indices)})
    learned.training_loss_ = history
    return learned


def _exported(module):
    """The estimator of a trained op: an exported LutMatmul, or a Dense."""
    if isinstance(module, (LearnedLut, _LearnedConv)):
        return (module if isinstance(module, LearnedLut) else module.lut).export()
    W = module.weight.detach().numpy().reshape(len(module.weight), -1).T
    return Dense(W, module.bias.detach().numpy())
