"""Models from PyTorch and ONNX, as a :class:`~lutengine.network.Network`.

Both importers walk the source graph node by node and look each node up in the op table
(:mod:`lutengine.ops`: ``TORCH_MODULES``, ``TORCH_FUNCTIONS``, ``ONNX_OPS``); the op's
``from_torch`` / ``from_onnx`` converter reads its settings and weights. Nothing here knows
one op from another, but for three rewrites of the imported graph: Identity / Dropout
removed, BatchNorm and a constant Add folded into the Linear or Conv2d before them where that
layer feeds only them. Any op or setting the table cannot honour is a ``ValueError`` (a
``TypeError`` for a wrong kind of object) naming the op, the node and the attribute.

The imported network is checked against its source before it is returned: the module (or
onnxruntime, when installed) on the example and on random inputs of the same batch size,
outputs within :data:`IMPORT_RTOL`. ONNX files are read with every declared size checked
first against the limits of :mod:`lutengine.config` (initializers, input shapes, windows,
each value of the graph), and external data only from inside the model's folder. torch and
onnx are imported only when these run.
"""

import math
import os

import numpy as np

from . import ops
from ._validation import check_limit
from .network import Input, Network, Node

#: tolerance of the import check: outputs within this relative error of the source's
IMPORT_RTOL = 1e-4

#: what a converter raises for a node it cannot read beyond ValueError / TypeError (an
#: attribute of the wrong type, a missing input)
_MALFORMED = (AttributeError, IndexError, KeyError, OverflowError, ZeroDivisionError)


def _unsupported(name, label, source):
    return ValueError(f"unsupported op {name!r} at node {label!r}: lutengine imports the "
                      f"{source} ops listed in docs/ops.md")


def _converted(cls, convert, name, label):
    """``convert()`` (a converter of ``cls``), its errors naming the op and the node."""
    try:
        return convert()
    except TypeError as exc:
        raise TypeError(f"op {name!r} at node {label!r}: {exc}") from exc
    except ValueError as exc:
        target = f" as {cls.name}" if cls.name else ""
        raise ValueError(f"op {name!r} at node {label!r} cannot be imported{target}: "
                         f"{exc}") from exc
    except _MALFORMED as exc:
        raise ValueError(f"op {name!r} at node {label!r} is malformed: "
                         f"{type(exc).__name__}: {exc}") from exc


def _add_node(nodes, values, name, op, sources, label):
    """Append ``op`` on the Values ``sources`` as node ``name``; its output Value."""
    shapes = [v.shape for v in sources]
    try:
        if op.arity is not None and len(sources) != op.arity:
            raise ValueError(f"it takes {op.arity} value inputs, got {len(sources)}")
        if tuple(v.dtype for v in sources) != op.input_dtypes(len(sources)):
            raise TypeError(f"it takes {list(op.input_dtypes(len(sources)))} inputs, gets "
                            f"{[v.dtype for v in sources]}")
        shape = op.output_shape(*shapes)
        check_limit(op.work(*shapes), "MAX_VALUE_ELEMENTS",
                    "the elements it holds per example")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"op {op.name} at node {label!r}: {exc}") from None
    nodes.append(Node(name, op, tuple(v.name for v in sources)))
    values[name] = ops.Value(name, shape, "float32")
    return values[name]


def _simplified(net):
    """``net`` without Identity nodes, with each BatchNorm and constant Add folded into the
    exact Linear / Conv2d before it when that layer feeds only it."""
    readers = {}
    for node in net.nodes:
        for source in node.inputs:
            readers[source] = readers.get(source, 0) + 1
    alias, kept, output = {}, {}, net.output
    for name, op, sources in net.nodes:
        sources = tuple(alias.get(s, s) for s in sources)
        if isinstance(op, ops.Identity):
            alias[name] = sources[0]
            output = sources[0] if output == name else output
            continue
        before = kept.get(sources[0])
        folded = None
        if before is not None and readers.get(before.name) == 1 and before.name != output:
            folded = _fold(before.op, op, net.shapes[before.name])
        if folded is not None:  # the layer, now computing both, keeps its name
            kept[before.name] = Node(before.name, folded, before.inputs)
            alias[name] = before.name
            output = before.name if output == name else output
        else:
            kept[name] = Node(name, op, sources)
    if output in net.inputs:
        raise ValueError("the model's output is its input: there is nothing to run")
    return Network(list(kept.values()), net.inputs, output=output)


def _fold(layer_op, op, shape):
    """The exact weight op ``layer_op`` with ``op`` (BatchNorm, or Add of a constant)
    applied to its output of per-example ``shape``, or None where that is not one layer."""
    if not layer_op.lut or not isinstance(layer_op.layer, ops.Dense):
        return None
    axis = 0 if isinstance(layer_op, ops.Conv2d) else len(shape) - 1
    W, b = layer_op.layer.W.astype(np.float64), layer_op.layer.b.astype(np.float64)
    if isinstance(op, ops.BatchNorm) and axis == 0:
        scale, shift = op.scale.astype(np.float64), op.shift.astype(np.float64)
        return layer_op.with_layer(ops.Dense(W * scale, b * scale + shift))
    if isinstance(op, ops.Add) and op.constant is not None \
            and np.broadcast_shapes(shape, op.constant.shape) == shape:
        per_channel = np.moveaxis(np.broadcast_to(op.constant, shape), axis, -1).reshape(
            -1, shape[axis])
        if (per_channel == per_channel[0]).all():
            return layer_op.with_layer(ops.Dense(W, b + per_channel[0]))
    return None


def _check(net, inputs, expected, source):
    """Raise unless ``net`` reproduces ``expected`` for ``inputs``."""
    got = net.forward(inputs).astype(np.float64)
    expected = np.asarray(expected, np.float64)
    if expected.shape != got.shape:
        raise ValueError(f"the imported network gives shape {got.shape}, {source} "
                         f"{expected.shape}")
    error = float(np.max(np.abs(got - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if not error <= IMPORT_RTOL * max(scale, 1e-30):
        raise ValueError(f"the imported network differs from {source} by {error:.3g} (outputs "
                         f"up to {scale:.3g}): an op it cannot see (e.g. a parameter changed "
                         "in forward) changes the result")


def _random_inputs(net, batch, rng, like=None):
    """Random inputs {name: array} of ``batch`` examples: floats ~ N(μ, σ) of ``like``'s
    values (N(0, 1) without), ids uniform in [0, the smallest table that reads them)."""
    inputs = {}
    for name, spec in net.inputs.items():
        check_limit(batch * math.prod(spec.shape), "MAX_VALUE_ELEMENTS",
                    f"input {name!r} of the import check (batch {batch})")
        shape = (batch, *spec.shape)
        if spec.dtype == "int64":
            vocab = min([len(node.op.table) for node in net.nodes
                         if isinstance(node.op, ops.Embedding) and name in node.inputs] or [2])
            inputs[name] = rng.integers(0, vocab, shape)
        else:
            sample = np.zeros(1) if like is None else like[name]
            inputs[name] = (rng.standard_normal(shape) * (sample.std() or 1.0)
                            + sample.mean()).astype(np.float32)
    return inputs


# -- PyTorch ----------------------------------------------------------------------------------

class _TorchCall:
    """A torch call as a converter sees it: ``module`` (for a module call, else None), its
    positional ``args`` and ``kwargs`` with the graph's tensors as :class:`ops.Value`."""

    def __init__(self, module, args, kwargs):
        self.module, self.args, self.kwargs = module, args, kwargs
        self.values = [a for a in _flat([*args, *kwargs.values()]) if isinstance(a, ops.Value)]

    def arg(self, index, name, default):
        """Argument ``name`` (position ``index``), or ``default``."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)

    def input_shape(self, i):
        """The per-example shape of the i-th tensor argument."""
        return self.values[i].shape


def _flat(items):
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flat(item)
        else:
            yield item


def _torch_examples(example_input, placeholders):
    """The example batch of each placeholder, as arrays (float32, or int64 ids)."""
    import torch

    if isinstance(example_input, dict):
        missing = [p for p in placeholders if p not in example_input]
        if missing or len(example_input) != len(placeholders):
            raise ValueError(f"example_input must hold the module's inputs {placeholders}, got "
                             f"{sorted(example_input)}")
        example_input = [example_input[p] for p in placeholders]
    elif not isinstance(example_input, (tuple, list)) or len(placeholders) == 1:
        example_input = [example_input]
    if len(example_input) != len(placeholders):
        raise ValueError(f"example_input must hold one batch per input of the module "
                         f"{placeholders}, got {len(example_input)}")
    examples = {}
    for name, value in zip(placeholders, example_input):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) \
            else np.asarray(value)
        if array.dtype.kind not in "fiub" or array.ndim < 2 or len(array) == 0:
            raise ValueError(f"example_input for {name!r} must be a non-empty batch of numbers, "
                             f"got shape {array.shape} and dtype {array.dtype}")
        floating = array.dtype.kind == "f"
        examples[name] = np.ascontiguousarray(array, np.float32 if floating else np.int64)
        if floating and not np.isfinite(examples[name]).all():
            raise ValueError(f"example_input for {name!r} contains NaN or Inf")
    return examples


def torch_network(module, example_input):
    """The :class:`~lutengine.network.Network` computing ``module`` (traced by ``torch.fx``;
    see the module docstring), checked on ``example_input`` (a batch of its inputs: tensor or
    array, or a tuple / dict of them for several inputs) and on random inputs of its batch
    size: outputs within :data:`IMPORT_RTOL` of the module's."""
    import torch
    import torch.fx

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    dtypes = {p.dtype for p in module.parameters()} | {b.dtype for b in module.buffers()
                                                         if b.is_floating_point()}
    if dtypes - {torch.float32, torch.float64}:
        raise TypeError(f"module has {sorted(map(str, dtypes))} weights: lutengine runs float32; "
                        "convert it with module.float() first")
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # torch.fx raises many types for untraceable code
        raise ValueError(f"module could not be traced by torch.fx: {exc}") from exc
    placeholders = [node.name for node in graph.nodes if node.op == "placeholder"]
    examples = _torch_examples(example_input, placeholders)
    modules = dict(module.named_modules())
    values, nodes, output = {}, [], None
    inputs = {}
    for name, array in examples.items():
        inputs[name] = Input(array.shape[1:], "int64" if array.dtype == np.int64 else "float32")
        values[name] = ops.Value(name, *inputs[name])
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise ValueError(f"node {node.name!r}: the module must return one tensor, got "
                                 f"{type(result).__name__}")
            output = result.name
            continue
        _torch_node(node, modules, values, nodes)
    net = _simplified(Network(nodes, inputs, output=output))
    _check_torch(net, module, examples, dtypes)
    return net


def _torch_node(node, modules, values, nodes):
    """Convert one fx node (call_module / call_function / call_method) and append it."""
    import torch

    if node.op == "get_attr":
        raise ValueError(f"node {node.name!r} reads the tensor {node.target!r} directly: only "
                         "modules' own weights can be imported")
    module = modules[node.target] if node.op == "call_module" else None
    if module is not None:
        name = type(module).__name__
        cls = ops.TORCH_MODULES.get(name)
        if cls is not None and type(module) is not getattr(torch.nn, name, None):
            cls = None  # a user module of the same name
    else:
        name = node.target if isinstance(node.target, str) else getattr(node.target,
                                                                         "__name__", "?")
        cls = ops.TORCH_FUNCTIONS.get(name)
    if cls is None:
        raise _unsupported(name, node.name, "PyTorch")

    def value(arg):
        if isinstance(arg, torch.fx.Node):
            if arg.name not in values:
                raise ValueError(f"node {node.name!r} reads {arg.name!r}, which is not a "
                                 "tensor of the graph")
            return values[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        return arg

    call = _TorchCall(module, tuple(value(a) for a in node.args),
                      {k: value(v) for k, v in node.kwargs.items()})
    op = _converted(cls, lambda: cls.from_torch(call), name, node.name)
    _add_node(nodes, values, node.name, op, call.values, node.name)


def _check_torch(net, module, examples, dtypes):
    """The import check: the module (eval mode, in its own float type) against ``net`` on
    the examples and on random inputs of their batch size."""
    import torch

    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    batch = len(next(iter(examples.values())))
    rng = np.random.default_rng(0)
    training = module.training
    module.eval()
    try:
        for inputs, source in ((examples, "the module on the example input"),
                               (_random_inputs(net, batch, rng, examples),
                                "the module on random inputs")):
            args = [torch.from_numpy(v).to(dtype) if v.dtype == np.float32
                    else torch.from_numpy(v) for v in inputs.values()]
            with torch.no_grad():
                expected = module(*args)
            if not isinstance(expected, torch.Tensor):
                raise ValueError(f"the module must return one tensor, got "
                                 f"{type(expected).__name__}")
            _check(net, inputs, expected.double().numpy(), source)
    finally:
        module.train(training)


# -- ONNX ------------------------------------------------------------------------------------

#: ONNX tensor element types an initializer may have (numpy dtype), and inputs
_ONNX_TENSORS = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32,
                 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}
_ONNX_INPUTS = {1: "float32", 11: "float32", 6: "int64", 7: "int64"}


class _OnnxNode:
    """An ONNX node as a converter sees it: ``op_type``, ``attrs`` (decoded), ``inputs`` and
    ``outputs`` (names), ``opset``; ``constant(i)`` (an initializer), ``value_inputs`` (the
    graph's :class:`ops.Value` among its inputs) and ``input_shape(i)``."""

    def __init__(self, node, attrs, constants, values, opset):
        self.op_type, self.attrs, self.opset = node.op_type, attrs, opset
        self.inputs, self.outputs = list(node.input), [o for o in node.output if o]
        self._constants = constants
        missing = [name for name in self.inputs if name and name not in constants
                   and name not in values]
        if missing:
            raise ValueError(f"it reads {missing}, which no input, initializer or earlier node "
                             "gives")
        self.value_inputs = [values[name] for name in self.inputs
                             if name and name not in constants]

    def has_input(self, i):
        return i < len(self.inputs) and self.inputs[i] != ""

    def constant_index(self, i):
        return self.has_input(i) and self.inputs[i] in self._constants

    def constant(self, i, what):
        if not self.constant_index(i):
            raise ValueError(f"{what} (input {i}) must be an initializer")
        return self._constants[self.inputs[i]]

    def input_shape(self, i):
        if i >= len(self.value_inputs):
            raise ValueError(f"it needs at least {i + 1} value inputs, got "
                             f"{len(self.value_inputs)}")
        return self.value_inputs[i].shape


def _onnx_array(tensor, where, total):
    """The array of an initializer or Constant ``tensor``, its declared size checked against
    the limits (and against the data it holds) before it is read."""
    from onnx import numpy_helper

    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{where} has negative dims {dims}")
    dtype = _ONNX_TENSORS.get(tensor.data_type)
    if dtype is None:
        raise TypeError(f"{where} has ONNX element type {tensor.data_type}, not one of "
                        f"lutengine's numbers {sorted(_ONNX_TENSORS)}")
    count = math.prod(dims)
    nbytes = count * np.dtype(dtype).itemsize
    check_limit(max(count, nbytes), "MAX_ARRAY_BYTES", f"the size in bytes of {where}")
    check_limit(total + nbytes, "MAX_FILE_BYTES", "the bytes of the model's initializers")
    if tensor.data_location == 1:  # external data, checked by _external_data
        held = count
    elif tensor.HasField("raw_data"):
        held = len(tensor.raw_data) // np.dtype(dtype).itemsize
    else:
        fields = {1: "float_data", 11: "double_data", 7: "int64_data"}
        held = len(getattr(tensor, fields.get(tensor.data_type, "int32_data")))
    if held != count:
        raise ValueError(f"{where} declares dims {dims} ({count} values) but holds {held}")
    return numpy_helper.to_array(tensor), nbytes


def _external_data(model, folder):
    """Read the external data of ``model``'s tensors, only from regular files inside
    ``folder`` and within the declared lengths and limits."""
    root, total = os.path.realpath(folder), 0
    tensors = [*model.graph.initializer, *(a.t for node in model.graph.node
                                           for a in node.attribute if a.HasField("t"))]
    for tensor in tensors:
        if tensor.data_location != 1:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        path = os.path.realpath(os.path.join(root, location))
        if not location or os.path.isabs(location) or os.path.commonpath([root, path]) != root \
                or not os.path.isfile(path):
            raise ValueError(f"tensor {tensor.name!r}: external data {location!r} must be a "
                             "file inside the model's folder")
        count = math.prod(tensor.dims)
        itemsize = np.dtype(_ONNX_TENSORS.get(tensor.data_type, np.float32)).itemsize
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", count * itemsize))
        except ValueError:
            raise ValueError(f"tensor {tensor.name!r}: external data offset and length must be "
                             f"integers, got {info.get('offset')!r}, {info.get('length')!r}") \
                from None
        if offset < 0 or length != count * itemsize or offset + length > os.path.getsize(path):
            raise ValueError(f"tensor {tensor.name!r}: external data {location!r} (offset "
                             f"{offset}, length {length}) does not hold its {count} values")
        check_limit(length, "MAX_ARRAY_BYTES", f"the size in bytes of tensor {tensor.name!r}")
        total += length
        check_limit(total, "MAX_FILE_BYTES", "the bytes of the model's external data")
        with open(path, "rb") as stream:
            stream.seek(offset)
            tensor.raw_data = stream.read(length)
        tensor.data_location = 0
        del tensor.external_data[:]


def _onnx_inputs(graph, constants):
    """{name: Input} of the graph's inputs (initializers aside) and the batch size they
    declare (None when symbolic)."""
    inputs, batches = {}, set()
    for value in graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        dtype = _ONNX_INPUTS.get(tensor.elem_type)
        if dtype is None:
            raise TypeError(f"input {value.name!r} has ONNX element type {tensor.elem_type}: "
                            "lutengine takes float32 / float64 features and int32 / int64 ids")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not dims or any(d is None or d < 1 for d in dims[1:]):
            raise ValueError(f"input {value.name!r}: every dim after the batch must be fixed, "
                             f"got {dims}")
        check_limit(math.prod(dims[1:]), "MAX_VALUE_ELEMENTS",
                    f"input {value.name!r} size per example")
        inputs[value.name] = Input(tuple(dims[1:]), dtype)
        batches.add(dims[0] if dims[0] and dims[0] > 0 else None)
    if not inputs:
        raise ValueError("the graph has no inputs (besides initializers)")
    if len(batches) > 1:
        raise ValueError(f"the inputs declare different batch sizes {sorted(batches, key=str)}")
    return inputs, batches.pop()


def onnx_network(path):
    """The :class:`~lutengine.network.Network` of an ONNX file of the op table's ops, every
    size checked first (see the module docstring); checked against onnxruntime on random
    inputs of the model's batch size (its declared one, else 4) when it is installed."""
    import onnx

    path = os.fspath(path)
    check_limit(os.path.getsize(path), "MAX_FILE_BYTES", f"the size of {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and others
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc
    _external_data(model, os.path.dirname(os.path.abspath(path)))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    check_limit(len(graph.node), "MAX_NODES", "the number of nodes")
    constants, total = {}, 0
    for init in graph.initializer:
        constants[init.name], nbytes = _onnx_array(init, f"initializer {init.name!r}", total)
        total += nbytes
    inputs, batch = _onnx_inputs(graph, constants)
    values = {name: ops.Value(name, *spec) for name, spec in inputs.items()}
    nodes = []
    for index, node in enumerate(graph.node):
        label = node.name or (node.output[0] if node.output else f"#{index}")
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(f"{node.domain}.{node.op_type}", label, "ONNX")
        if not node.output or not node.output[0]:
            raise ValueError(f"op {node.op_type!r} at node {label!r} has no output")
        attrs = _converted(ops.Op, lambda: _attributes(node), node.op_type, label)
        if node.op_type == "Constant":
            constants[node.output[0]], nbytes = _converted(
                ops.Op, lambda: _constant_node(attrs, label, total), node.op_type, label)
            total += nbytes
            continue
        cls = ops.ONNX_OPS.get(node.op_type)
        if cls is None:
            raise _unsupported(node.op_type, label, "ONNX")
        view = _converted(cls, lambda: _OnnxNode(node, attrs, constants, values, opset),
                          node.op_type, label)
        op = _converted(cls, lambda: cls.from_onnx(view), node.op_type, label)
        if not view.value_inputs:
            raise ValueError(f"op {node.op_type!r} at node {label!r} reads no value of the "
                             "graph (only constants)")
        _add_node(nodes, values, node.output[0], op, view.value_inputs, label)
    if len(graph.output) != 1 or graph.output[0].name not in values:
        raise ValueError(f"the graph must have one output computed by its nodes, got "
                         f"{[o.name for o in graph.output]}")
    net = _simplified(Network(nodes, inputs, output=graph.output[0].name))
    _check_onnx(net, path, model, batch or 4)
    return net


def _attributes(node):
    """The node's attributes as Python values (strings decoded), tensors refused."""
    from onnx import helper

    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, (list, tuple)):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    return attrs


def _constant_node(attrs, label, total):
    """The array of a Constant node (``value`` tensor, or ``value_float(s)`` /
    ``value_int(s)``)."""
    from onnx import TensorProto

    if "value" in attrs and isinstance(attrs["value"], TensorProto):
        return _onnx_array(attrs["value"], f"the value of Constant {label!r}", total)
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            array = np.asarray(attrs[key], np.float32 if "float" in key else np.int64)
            return array, array.nbytes
    raise ValueError(f"attribute {sorted(attrs)} is not a tensor value lutengine can read")


def _check_onnx(net, path, model, batch):
    """onnxruntime against ``net`` on random inputs of ``batch`` examples (skipped without
    onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    inputs = _random_inputs(net, batch, np.random.default_rng(0))
    feed = {}
    for value in model.graph.input:
        if value.name in inputs:
            elem = value.type.tensor_type.elem_type
            feed[value.name] = inputs[value.name].astype(
                {1: np.float32, 11: np.float64, 6: np.int32, 7: np.int64}[elem])
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        expected = session.run(None, feed)[0]
    except Exception as exc:  # onnxruntime's own error types
        raise ValueError(f"onnxruntime cannot run {path} to check the import: {exc}") from exc
    _check(net, inputs, expected, "onnxruntime on random inputs")
