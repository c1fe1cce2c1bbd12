"""Models from PyTorch and ONNX, mapped to a :class:`~lutengine.network.Network`.

Both importers accept a chain of ops (each takes the previous one's result): Linear
(``Linear``; ONNX ``Gemm``, or ``MatMul`` with an optional ``Add`` of a bias), Conv2d
(groups 1, dilation 1, zero padding), BatchNorm right after a Linear or Conv2d (folded into
it: ``W·γ/√(var + ε)``, ``(b − mean)·γ/√(var + ε) + β``), ReLU, GELU, MaxPool2d /
AvgPool2d (no ceil mode), Flatten (from dim 1), Dropout / Identity (dropped), and a final
Softmax / LogSoftmax over the classes. Any other op is rejected by name and node. The
network is checked against its source (the module, or onnxruntime when installed) on an
example input before it is returned. torch and onnx are imported only when these run.
"""

import numpy as np

from . import network as nw
from .nn import Dense

#: tolerance of the import check: outputs within this relative error of the source's
IMPORT_RTOL = 1e-4

_SUPPORTED = ("Linear / Gemm / MatMul (+ Add), Conv2d, BatchNorm after a layer, ReLU, GELU, "
              "MaxPool2d, AvgPool2d, Flatten, Dropout, Identity, and Softmax or LogSoftmax last")


def _unsupported(name, node, why=""):
    return ValueError(f"unsupported op {name!r} at node {node!r}{': ' + why if why else ''} "
                      f"(a network import takes {_SUPPORTED})")


def _fold_batchnorm(ops, node, gamma, beta, mean, var, eps):
    """Fold a BatchNorm into the weight layer that ops end with."""
    if not ops or not isinstance(ops[-1], (nw.Linear, nw.Conv2d)):
        raise _unsupported("BatchNorm", node, "it must follow a Linear or Conv2d layer")
    layer = ops[-1].layer
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    if scale.shape != layer.b.shape:
        raise ValueError(f"node {node!r}: BatchNorm over {scale.size} channels follows a layer "
                         f"with {layer.b.size} outputs")
    folded = Dense(layer.W * scale, (layer.b - np.asarray(mean)) * scale + np.asarray(beta))
    previous = ops[-1]
    ops[-1] = nw.Linear(folded) if isinstance(previous, nw.Linear) else nw.Conv2d(
        folded, previous.in_channels, previous.kernel_size, previous.stride, previous.padding)


def _conv(weight, bias, stride, padding, node):
    """The Conv2d of filters (out, in, kh, kw)."""
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 4:
        raise _unsupported("Conv", node, f"only 2-D convolutions, got filters {weight.shape}")
    out_channels = weight.shape[0]
    bias = np.zeros(out_channels, np.float32) if bias is None else bias
    return nw.Conv2d(Dense(weight.reshape(out_channels, -1).T, bias), weight.shape[1],
                     weight.shape[2:], stride, padding)


# -- PyTorch ------------------------------------------------------------------------------

def _torch_module_op(module, node, ops):
    """Append the op of a call to ``module`` to ops (or fold it into them)."""
    import torch.nn as tnn

    name = type(module).__name__
    if isinstance(module, tnn.Linear):
        bias = module.bias.detach().numpy() if module.bias is not None else None
        ops.append(nw.Linear(Dense(module.weight.detach().numpy().T, np.zeros(
            module.out_features, np.float32) if bias is None else bias)))
    elif isinstance(module, tnn.Conv2d):
        if module.groups != 1 or tuple(module.dilation) != (1, 1) \
                or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(name, node, "groups 1, dilation 1 and numeric zero padding only")
        bias = module.bias.detach().numpy() if module.bias is not None else None
        ops.append(_conv(module.weight.detach().numpy(), bias, module.stride, module.padding,
                         node))
    elif isinstance(module, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
        if module.running_mean is None:
            raise _unsupported(name, node, "it needs running statistics")
        weight = module.weight.detach().numpy() if module.affine else 1.0
        bias = module.bias.detach().numpy() if module.affine else 0.0
        _fold_batchnorm(ops, node, weight, bias, module.running_mean.numpy(),
                        module.running_var.numpy(), module.eps)
    elif isinstance(module, tnn.ReLU):
        ops.append(nw.ReLU())
    elif isinstance(module, tnn.GELU):
        ops.append(nw.GELU(module.approximate))
    elif isinstance(module, (tnn.MaxPool2d, tnn.AvgPool2d)):
        if module.ceil_mode or (isinstance(module, tnn.MaxPool2d) and module.dilation not in (1, (1, 1))) \
                or (isinstance(module, tnn.AvgPool2d) and (not module.count_include_pad
                                                         or module.divisor_override)):
            raise _unsupported(name, node, "no ceil mode, dilation, or padding left out of "
                                           "the average")
        pool = nw.MaxPool2d if isinstance(module, tnn.MaxPool2d) else nw.AvgPool2d
        ops.append(pool(module.kernel_size, module.stride, module.padding))
    elif isinstance(module, tnn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(name, node, "Flatten must keep the batch axis (start_dim=1)")
        ops.append(nw.Flatten())
    elif isinstance(module, (tnn.Softmax, tnn.LogSoftmax)):
        if module.dim not in (1, -1):
            raise _unsupported(name, node, "it must run over the classes (dim=1 or -1)")
        ops.append(nw.Softmax() if isinstance(module, tnn.Softmax) else nw.LogSoftmax())
    elif not isinstance(module, (tnn.Dropout, tnn.Identity)):
        raise _unsupported(name, node)


def _torch_function_op(fx_node, ops):
    """Append the op of a call to a function or method (relu, gelu, flatten, softmax)."""
    name = getattr(fx_node.target, "__name__", str(fx_node.target))
    args, kwargs = fx_node.args, fx_node.kwargs
    if name in ("relu", "relu_"):
        ops.append(nw.ReLU())
    elif name == "gelu":
        ops.append(nw.GELU(kwargs.get("approximate", "none")))
    elif name == "flatten":
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        if start != 1 or kwargs.get("end_dim", args[2] if len(args) > 2 else -1) != -1:
            raise _unsupported(name, fx_node.name, "flatten must start at dim 1")
        ops.append(nw.Flatten())
    elif name in ("softmax", "log_softmax"):
        if kwargs.get("dim", args[1] if len(args) > 1 else None) not in (1, -1):
            raise _unsupported(name, fx_node.name, "it must run over the classes (dim=1 or -1)")
        ops.append(nw.Softmax() if name == "softmax" else nw.LogSoftmax())
    elif name != "dropout":
        raise _unsupported(name, fx_node.name)


def torch_network(module, example_input):
    """The :class:`~lutengine.network.Network` computing ``module`` (traced by
    ``torch.fx``; see the module docstring), checked on ``example_input`` (a batch of its
    inputs, tensor or array): outputs within :data:`IMPORT_RTOL` of the module's."""
    import torch
    import torch.fx

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    example = np.asarray(example_input, dtype=np.float32)
    if example.ndim < 2 or len(example) == 0:
        raise ValueError(f"example_input must be a non-empty batch, got shape {example.shape}")
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise ValueError(f"module could not be traced by torch.fx: {exc}") from exc
    modules = dict(module.named_modules())
    ops, previous = [], None
    for node in graph.nodes:
        if node.op == "placeholder":
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise ValueError(f"node {node.name!r}: the output must be the last op's result")
            continue
        if not node.args or node.args[0] is not previous:
            raise ValueError(f"node {node.name!r} does not take the previous op's result: "
                             "only a chain of ops can be imported")
        if node.op == "call_module":
            _torch_module_op(modules[node.target], node.name, ops)
        else:
            _torch_function_op(node, ops)
        previous = node
    net = nw.Network(ops, example.shape[1:])
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(torch.from_numpy(example)).numpy()
    finally:
        module.train(training)
    _check(net, example, expected, "the module")
    return net


def _check(net, example, expected, source):
    """Raise unless ``net`` reproduces ``expected`` on ``example``."""
    got = net.forward(example).astype(np.float64)
    expected = np.asarray(expected, np.float64).reshape(got.shape)
    error = float(np.max(np.abs(got - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if not error <= IMPORT_RTOL * max(scale, 1e-30):
        raise ValueError(f"the imported network differs from {source} on the example input by "
                         f"{error:.3g} (outputs up to {scale:.3g}): an op it cannot see "
                         "(e.g. a parameter changed in forward) changes the result")


# -- ONNX ---------------------------------------------------------------------------------

def _onnx_linear(node, attrs, weights, label):
    """The Dense of a Gemm (``alpha·A·B' + beta·C``) or MatMul node."""
    if any(name not in weights for name in node.input[1:]):
        raise ValueError(f"node {label!r}: the weights and bias must be initializers")
    W = weights[node.input[1]]
    if node.op_type == "MatMul":
        return Dense(W, np.zeros(W.shape[1], np.float32))
    if attrs.get("transA", 0):
        raise _unsupported("Gemm", label, "transA=1 is not a layer on rows")
    W = attrs.get("alpha", 1.0) * (W.T if attrs.get("transB", 0) else W)
    bias = np.zeros(W.shape[1])
    if len(node.input) > 2:
        bias = bias + attrs.get("beta", 1.0) * weights[node.input[2]]
    return Dense(W, bias)


def _onnx_window(attrs, label, op):
    """(kernel, stride, padding) of a Conv / pooling node, or an error for what a Network
    cannot run (asymmetric pads, auto_pad, dilation, ceil mode)."""
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("ceil_mode", 0):
        raise _unsupported(op, label, "symmetric explicit pads, dilation 1, no ceil mode only")
    return attrs.get("kernel_shape"), tuple(attrs.get("strides", [1, 1])), tuple(pads[:2])


def _onnx_op(node, attrs, weights, label, ops):
    """Append the op of an ONNX node to ops (or fold it into them)."""
    op = node.op_type
    if op in ("Gemm", "MatMul"):
        ops.append(nw.Linear(_onnx_linear(node, attrs, weights, label)))
    elif op == "Conv":
        if attrs.get("group", 1) != 1 or any(name not in weights for name in node.input[1:]):
            raise _unsupported(op, label, "group 1 with initializer weights only")
        _, stride, padding = _onnx_window(attrs, label, op)
        bias = weights[node.input[2]] if len(node.input) > 2 else None
        ops.append(_conv(weights[node.input[1]], bias, stride, padding, label))
    elif op == "BatchNormalization":
        if any(name not in weights for name in node.input[1:5]):
            raise _unsupported(op, label, "its parameters must be initializers")
        _fold_batchnorm(ops, label, *(weights[name] for name in node.input[1:5]),
                        attrs.get("epsilon", 1e-5))
    elif op == "Relu":
        ops.append(nw.ReLU())
    elif op == "Gelu":
        ops.append(nw.GELU(attrs.get("approximate", "none")))
    elif op in ("MaxPool", "AveragePool"):
        kernel, stride, padding = _onnx_window(attrs, label, op)
        if op == "AveragePool" and any(padding) and not attrs.get("count_include_pad", 0):
            raise _unsupported(op, label, "padding must count in the average")
        ops.append((nw.MaxPool2d if op == "MaxPool" else nw.AvgPool2d)(kernel, stride, padding))
    elif op == "Flatten":
        if attrs.get("axis", 1) != 1:
            raise _unsupported(op, label, "Flatten must keep the batch axis (axis=1)")
        ops.append(nw.Flatten())
    elif op in ("Softmax", "LogSoftmax"):
        if attrs.get("axis", -1) not in (1, -1):
            raise _unsupported(op, label, "it must run over the classes (axis=1 or -1)")
        ops.append(nw.Softmax() if op == "Softmax" else nw.LogSoftmax())
    elif op not in ("Identity", "Dropout"):
        raise _unsupported(op, label)


def onnx_network(path):
    """The :class:`~lutengine.network.Network` of an ONNX file holding a chain of the ops
    of the module docstring (weights as initializers; the input's dims fixed but the batch).
    Checked against onnxruntime on random inputs when onnxruntime is installed."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{path}: the graph must have one input and one output, got inputs "
                         f"{[i.name for i in inputs]} and {len(graph.output)} outputs")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
    if not dims or min(dims) < 1:
        raise ValueError(f"{path}: the input's dims after the batch must be fixed, got {dims}")
    ops, previous = [], inputs[0].name
    for node in graph.node:
        label = node.name or node.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        if node.op_type == "Add" and ops and isinstance(ops[-1], nw.Linear) \
                and node.input[0] == previous and node.input[1] in weights:
            dense, bias = ops[-1].layer, weights[node.input[1]]  # MatMul + Add: its bias
            if bias.size != dense.b.size:
                raise ValueError(f"node {label!r}: the bias must hold one value per output "
                                 f"({dense.b.size}), got shape {bias.shape}")
            ops[-1] = nw.Linear(Dense(dense.W, dense.b + bias.reshape(-1)))
        elif node.input[0] != previous:
            raise ValueError(f"node {label!r} does not take the previous op's result: only a "
                             "chain of ops can be imported")
        else:
            _onnx_op(node, attrs, weights, label, ops)
        previous = node.output[0]
    if graph.output[0].name != previous:
        raise ValueError(f"{path}: the output must be the last op's result")
    net = nw.Network(ops, dims)
    try:
        import onnxruntime
    except ImportError:
        return net
    example = np.random.default_rng(0).standard_normal((4, *dims)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _check(net, example, session.run(None, {inputs[0].name: example})[0], "onnxruntime")
    return net
