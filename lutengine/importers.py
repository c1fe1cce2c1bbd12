"""Networks from PyTorch: a traced module mapped to a :class:`~lutengine.nn.MLP`.

``torch_mlp`` traces the module with ``torch.fx`` and accepts a chain of ``Linear`` layers
with a ReLU between each two (``Flatten`` before the first, ``Dropout`` / ``Identity``
anywhere, and a final ``Softmax`` / ``LogSoftmax`` as the classifier head). Any other op
is rejected by name and node. The imported network is checked against the module on the
example input before it is returned. Needs torch (the ``train`` extra); it is imported
only when this runs.
"""

import numpy as np

from .nn import MLP, Dense

#: the ops the chain may hold, by kind: (module class names, function / method names)
_OPS = {"linear": ({"Linear"}, set()),
        "relu": ({"ReLU"}, {"relu"}),
        "flatten": ({"Flatten"}, {"flatten"}),
        "skip": ({"Dropout", "Identity"}, {"dropout"}),
        "head": ({"Softmax", "LogSoftmax"}, {"softmax", "log_softmax"})}

#: tolerance of the import check: outputs within this relative error of the module's
IMPORT_RTOL = 1e-4


def _kind(node, modules):
    """The kind of a traced node (a key of :data:`_OPS`) and its op's name, or a
    ValueError naming it."""
    if node.op == "call_module":
        name = type(modules[node.target]).__name__
        kind = next((k for k, (classes, _) in _OPS.items() if name in classes), None)
    else:
        name = getattr(node.target, "__name__", str(node.target))
        kind = next((k for k, (_, functions) in _OPS.items() if name in functions), None)
    if kind is None:
        raise ValueError(f"unsupported op {name!r} at node {node.name!r}: an MLP import takes "
                         "Linear layers with ReLU between them (Flatten first, Dropout or "
                         "Identity anywhere, Softmax or LogSoftmax last)")
    return kind, name


def _softmax_dim(node, modules):
    if node.op == "call_module":
        return modules[node.target].dim
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)


def torch_mlp(module, example_input):
    """The :class:`~lutengine.nn.MLP` that computes ``module`` (see the module docstring).

    ``example_input`` (a tensor or array, a batch of the module's inputs) is run through
    both; a final Softmax / LogSoftmax is compared with ``predict_proba`` (its log), else
    the output with ``decision_function``. Raises ValueError when they differ by more than
    :data:`IMPORT_RTOL` of the output's largest magnitude.
    """
    import torch
    import torch.fx

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise ValueError(f"module could not be traced by torch.fx: {exc}") from exc
    modules = dict(module.named_modules())
    ops, previous = [], None
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            if node.op == "output" and node.args[0] is not previous:
                raise ValueError(f"node {node.name!r}: the output must be the last op's result")
            previous = node if node.op == "placeholder" else previous
            continue
        if not node.args or node.args[0] is not previous:
            raise ValueError(f"node {node.name!r} does not take the previous op's result: "
                             "only a chain of ops can be imported")
        kind, name = _kind(node, modules)
        layer = None
        if kind == "linear":
            linear = modules[node.target]
            bias = linear.bias.detach().numpy() if linear.bias is not None else \
                np.zeros(linear.out_features, np.float32)
            layer = Dense(linear.weight.detach().numpy().T, bias)
        elif kind == "head" and _softmax_dim(node, modules) not in (1, -1):
            raise ValueError(f"node {node.name!r}: {name} must run over the classes "
                             "(dim=1 or -1)")
        ops.append((kind, name, node.name, layer))
        previous = node
    net, head = _chain_to_mlp(ops)
    _check_import(module, net, example_input, head)
    return net


def _chain_to_mlp(ops):
    """The MLP of a chain of ``(kind, op name, node name, Dense or None)`` and its head
    ("softmax", "log_softmax" or None), or a ValueError naming the node out of place."""
    layers, head, expect_linear = [], None, True
    for kind, name, node, layer in ops:
        if head is not None:
            raise ValueError(f"node {node!r} follows the {head} head: it must be last")
        if kind == "linear":
            if not expect_linear:
                raise ValueError(f"node {node!r}: two Linear layers need a ReLU between them")
            layers.append(layer)
            expect_linear = False
        elif kind == "relu":
            if expect_linear:
                raise ValueError(f"node {node!r}: a ReLU must follow a Linear layer")
            expect_linear = True
        elif kind == "flatten" and layers:
            raise ValueError(f"node {node!r}: Flatten is accepted before the first Linear only")
        elif kind == "head":
            head = "log_softmax" if name in ("LogSoftmax", "log_softmax") else "softmax"
    if not layers or expect_linear:
        raise ValueError("the model must end with a Linear layer (before an optional Softmax "
                         "or LogSoftmax)")
    return MLP(layers), head
def _check_import(module, net, example_input, head):
    """Raise unless ``net`` reproduces ``module`` on ``example_input`` (module in eval mode
    for the check, its mode restored)."""
    import torch

    x = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(x).numpy().astype(np.float64)
    finally:
        module.train(training)
    X = x.numpy().reshape(len(x), -1)
    if head is None:
        got = net.decision_function(X)
    else:
        got = net.predict_proba(X)
        got = np.log(got) if head == "log_softmax" else got
    error = float(np.max(np.abs(got - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if not error <= IMPORT_RTOL * max(scale, 1e-30):
        raise ValueError(f"the imported network differs from the module on example_input by "
                         f"{error:.3g} (outputs up to {scale:.3g}): an op it cannot see "
                         "(e.g. a parameter changed in forward) changes the result")


#: ONNX op type -> kind of :data:`_OPS` (Gemm and MatMul are the linear layers)
_ONNX_KINDS = {"Gemm": "linear", "MatMul": "linear", "Relu": "relu", "Flatten": "flatten",
               "Identity": "skip", "Dropout": "skip", "Softmax": "head", "LogSoftmax": "head"}


def onnx_mlp(path):
    """The :class:`~lutengine.nn.MLP` of an ONNX file holding the chain :func:`torch_mlp`
    accepts: ``Gemm`` (transA = 0), or ``MatMul`` with an optional ``Add`` of a bias, for
    Linear; ``Relu``; ``Flatten`` (axis 1) first; ``Identity`` / ``Dropout``; a final
    ``Softmax`` / ``LogSoftmax`` over axis 1 or −1. Weights must be initializers. Needs
    the ``onnx`` package; any other op is rejected by name and node."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{path}: the graph must have one input and one output, got inputs "
                         f"{inputs} and {len(graph.output)} outputs")
    ops, previous = [], inputs[0]
    for node in graph.node:
        label = node.name or node.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Add" and ops and ops[-1][1] == "MatMul" and node.input[0] == previous \
                and node.input[1] in weights:  # MatMul + Add: the bias of that Linear
            kind, name, matmul, dense = ops[-1]
            bias = weights[node.input[1]]
            if bias.size != dense.b.size:
                raise ValueError(f"node {label!r}: the bias must hold one value per output "
                                 f"({dense.b.size}), got shape {bias.shape}")
            ops[-1] = (kind, name, matmul, Dense(dense.W, dense.b + bias.reshape(-1)))
            previous = node.output[0]
            continue
        kind = _ONNX_KINDS.get(node.op_type)
        if kind is None:
            raise ValueError(f"unsupported op {node.op_type!r} at node {label!r}: an MLP import "
                             "takes Gemm / MatMul (+ Add) with Relu between them (Flatten first, "
                             "Identity or Dropout anywhere, Softmax or LogSoftmax last)")
        if node.input[0] != previous:
            raise ValueError(f"node {label!r} does not take the previous op's result: only a "
                             "chain of ops can be imported")
        layer = None
        if kind == "linear":
            layer = _onnx_linear(node, attrs, weights, label)
        elif kind == "flatten" and attrs.get("axis", 1) != 1:
            raise ValueError(f"node {label!r}: Flatten must keep the batch axis (axis=1)")
        elif kind == "head" and attrs.get("axis", -1) not in (1, -1):
            raise ValueError(f"node {label!r}: {node.op_type} must run over the classes "
                             "(axis=1 or -1)")
        ops.append((kind, node.op_type, label, layer))
        previous = node.output[0]
    if graph.output[0].name != previous:
        raise ValueError(f"{path}: the output must be the last op's result")
    return _chain_to_mlp(ops)[0]


def _onnx_linear(node, attrs, weights, label):
    """The Dense of a Gemm (``alpha·A·B' + beta·C``) or MatMul node."""
    if any(name not in weights for name in node.input[1:]):
        raise ValueError(f"node {label!r}: the weights and bias must be initializers")
    if node.op_type == "MatMul":
        W = weights[node.input[1]]
        return Dense(W, np.zeros(W.shape[1], np.float32))
    if attrs.get("transA", 0):
        raise ValueError(f"node {label!r}: Gemm with transA=1 is not a layer on rows")
    W = weights[node.input[1]]
    W = attrs.get("alpha", 1.0) * (W.T if attrs.get("transB", 0) else W)
    bias = np.zeros(W.shape[1])
    if len(node.input) > 2:
        bias = bias + attrs.get("beta", 1.0) * weights[node.input[2]]
    return Dense(W, bias)
