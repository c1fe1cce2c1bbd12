"""Fuzzing ``lutengine.nn.from_onnx`` with generated and damaged ONNX graphs, in a process
whose address space is limited (the harness of tests/fuzz_network.py; run in a subprocess
by tests/test_fuzz.py).

Small graphs of the supported ops are generated with ``onnx.helper`` (Gemm with transB,
alpha, beta and a (1, N) bias, MatMul + Add, Conv with pads or auto_pad, BatchNormalization,
Relu, Gelu, MaxPool, AveragePool, Flatten, Softmax / LogSoftmax, Add / Mul of two values or
a constant, Concat, Gather of int64 ids, Identity / Dropout, Constant nodes; fixed and
dynamic batch sizes), then mutated: dims blown up (inputs, initializers), windows huge or
negative, attributes of wrong types or values, initializers truncated or retyped, nodes
dropped, duplicated, reordered or rewired, the opset changed, external data pointing
outside the model's folder ("../", absolute paths, symlinks), file bytes truncated or
flipped. Each model must either be rejected by ``from_onnx`` with a ``ValueError`` /
``TypeError``, or import into a Network whose ``forward`` agrees with onnxruntime on fresh
random inputs at the model's batch size. Prints a JSON summary by mutation kind and exits
nonzero on any failure.

    python tests/fuzz_onnx.py --examples 1000 --seed 0
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_network import (  # noqa: E402 (sets thread counts)
    Fuzz, agree, limit_address_space, main, random_inputs)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lutengine import nn  # noqa: E402

onnxruntime.set_default_logger_severity(3)  # no warnings about the damaged models

#: batch sizes a generated model declares ("N": dynamic, imported at batch 4)
BATCHES = ("N", 1, 2, 3)


# -- the models --------------------------------------------------------------------------------

def _tensor(name, array, rng):
    """An initializer: raw bytes, or for float32 sometimes the typed ``float_data`` field."""
    array = np.asarray(array)
    if array.dtype == np.float32 and rng.random() < 0.3:
        return helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.ravel().tolist())
    return numpy_helper.from_array(array, name)


def _normal(rng):
    """f(*shape): float32 N(0, 1) values of that shape."""
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, inits, opset):
    graph = helper.make_graph(nodes, "fuzz", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _input(name, batch, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, [batch, *shape])


def gemm_mlp(rng, batch):
    """Gemm (transB, alpha, beta, a bias of shape (N,), (1, N) or ()) → Relu → Gemm →
    Softmax / LogSoftmax."""
    f = _normal(rng)
    trans = int(rng.integers(2))
    bias = _pick(rng, [f(8), f(1, 8), f()])
    inits = [_tensor("W1", f(8, 6) if trans else f(6, 8), rng), _tensor("C1", bias, rng),
             _tensor("W2", f(8, 3), rng)]
    head = _pick(rng, ["Softmax", "LogSoftmax"])
    nodes = [helper.make_node("Gemm", ["x", "W1", "C1"], ["h"], transB=trans,
                              alpha=float(_pick(rng, [1.0, 0.5, 2.0])),
                              beta=float(_pick(rng, [1.0, 0.25]))),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["z"]),
             helper.make_node(head, ["z"], ["y"], axis=_pick(rng, [-1, 1]))]
    return _model(nodes, [_input("x", batch, (6,))], inits, _pick(rng, [13, 17, 20]))


def matmul_gelu(rng, batch):
    """MatMul → Add (bias) → Gelu → Dropout → Identity → MatMul → Add ((1, N) bias)."""
    f = _normal(rng)
    inits = [_tensor("W1", f(5, 7), rng), _tensor("b1", f(7), rng), _tensor("W2", f(7, 4), rng),
             _tensor("b2", f(1, 4), rng)]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"]),
             helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Gelu", ["a"], ["g"], approximate=_pick(rng, ["none", "tanh"])),
             helper.make_node("Dropout", ["g"], ["d"]),
             helper.make_node("Identity", ["d"], ["i"]),
             helper.make_node("MatMul", ["i", "W2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    return _model(nodes, [_input("x", batch, (5,))], inits, 20)


def conv_net(rng, batch):
    """Conv (pads, auto_pad, strides) → BatchNormalization → Relu → MaxPool → AveragePool
    (padding counted) → Flatten (axis 1 or -3) → Gemm (transB) → LogSoftmax."""
    f = _normal(rng)
    padding = _pick(rng, [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"},
                          {"auto_pad": "VALID"}, {"pads": [1, 1, 1, 1], "strides": [2, 2]},
                          {}])
    padded = "pads" in padding or padding.get("auto_pad") == "SAME_UPPER"
    side = (4 if "strides" in padding else 7 if padded else 5) // 2  # after Conv and MaxPool
    inits = [_tensor("W", f(4, 2, 3, 3), rng), _tensor("B", f(4), rng),
             _tensor("scale", rng.uniform(0.5, 2, 4).astype(np.float32), rng),
             _tensor("shift", f(4), rng), _tensor("mean", f(4), rng),
             _tensor("var", rng.uniform(0.5, 2, 4).astype(np.float32), rng),
             _tensor("Wf", f(5, 4 * side * side), rng)]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3], **padding),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"],
                              ["n"], epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], count_include_pad=1),
             helper.make_node("Flatten", ["a"], ["fl"], axis=_pick(rng, [1, -3])),
             helper.make_node("Gemm", ["fl", "Wf"], ["z"], transB=1),
             helper.make_node("LogSoftmax", ["z"], ["y"], axis=-1)]
    return _model(nodes, [_input("x", batch, (2, 7, 7))], inits, _pick(rng, [13, 17, 20]))


def ids_graph(rng, batch):
    """Gather (a table, int64 ids) → Flatten → Concat with float features → Gemm → Relu →
    Add and Mul of two values → Mul by a Constant node → Add of a constant → Gemm →
    Softmax."""
    f = _normal(rng)
    inits = [_tensor("table", f(7, 4), rng), _tensor("W", f(18, 8) / 4, rng),
             _tensor("C", f(8), rng), _tensor("half", np.float32(0.5), rng),
             _tensor("W2", f(8, 3), rng)]
    constant = _pick(rng, [helper.make_node("Constant", [], ["k"],
                                            value=numpy_helper.from_array(f(8))),
                           helper.make_node("Constant", [], ["k"], value_float=1.5),
                           helper.make_node("Constant", [], ["k"], value_floats=[0.5] * 8)])
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
             helper.make_node("Flatten", ["e"], ["fe"], axis=1),
             helper.make_node("Concat", ["x", "fe"], ["c"], axis=_pick(rng, [1, -1])),
             helper.make_node("Gemm", ["c", "W", "C"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "h"], ["s"]),
             helper.make_node("Mul", ["s", "r"], ["m"]),
             constant,
             helper.make_node("Mul", ["m", "k"], ["mk"]),
             helper.make_node("Add", ["mk", "half"], ["a"]),
             helper.make_node("Gemm", ["a", "W2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"])]
    inputs = [_input("x", batch, (6,)), _input("ids", batch, (3,), TensorProto.INT64)]
    return _model(nodes, inputs, inits, _pick(rng, [13, 17, 20]))


def pool_head(rng, batch):
    """MaxPool → AveragePool → Relu → Mul by a per-channel gain → Softmax over the last
    axis, on images (any size fits: blown-up input dims can import)."""
    first = _pick(rng, [{"kernel_shape": [2, 2], "strides": [2, 2]},
                        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}])
    gain = rng.uniform(0.5, 2, (3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], **first),
             helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], count_include_pad=1),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Mul", ["r", "gain"], ["g"]),
             helper.make_node("Softmax", ["g"], ["y"], axis=-1)]
    return _model(nodes, [_input("x", batch, (3, 8, 8))], [_tensor("gain", gain, rng)],
                  _pick(rng, [13, 17, 20]))


GENERATORS = {f.__name__: f for f in (gemm_mlp, matmul_gelu, conv_net, ids_graph, pool_head)}


# -- mutations ---------------------------------------------------------------------------------

def _pick(rng, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


HUGE = (10**6, 2**31, 2**40, 2**62, 0, -1, -2**40)
WRONG_TYPES = (1.5, "x", [1, 2], [1.5, 2.5], ["a", "b"], float("nan"),
               numpy_helper.from_array(np.zeros(2, np.float32)))


def _attribute(node, name, value):
    """Set attribute ``name`` of ``node`` to ``value`` (replacing any)."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def mutate(kind, model, folder, rng):
    """Damage ``model`` (a copy) in place, or write files beside it; a description, and the
    file bytes where the kind damages those."""
    graph = model.graph
    node = _pick(rng, graph.node)
    if kind == "dims":
        value = _pick(rng, graph.input)
        dims = value.type.tensor_type.shape.dim
        change = _pick(rng, ["one", "all", "batch", "symbolic", "rank"])
        if change == "one":
            dims[int(rng.integers(1, len(dims)))].dim_value = _pick(rng, HUGE)
        elif change == "all":
            factor = _pick(rng, [2, 10, 100, 1000, 2**20])
            for dim in dims[1:]:
                dim.dim_value *= factor
        elif change == "batch":
            dims[0].dim_value = _pick(rng, [10**6, 2**40, 0, -1, 4])
        elif change == "symbolic":
            dims[int(rng.integers(1, len(dims)))].dim_param = "M"
        elif rng.random() < 0.5:
            dims.add().dim_value = 2
        else:
            del dims[-1]
        return f"input {value.name} {change}: {[d.dim_value or d.dim_param for d in dims]}"
    if kind == "init_dims":
        if not graph.initializer:
            return "no initializers (unchanged)"
        init = _pick(rng, graph.initializer)
        change = _pick(rng, ["huge", "plus_one", "negative", "drop", "swap", "scalar"])
        new = {"huge": [d * 1000 for d in init.dims] or [1000], "plus_one": [*init.dims[:-1],
               (init.dims[-1] if init.dims else 0) + 1], "negative": [-1, *init.dims[1:]],
               "drop": list(init.dims[1:]), "swap": list(init.dims[::-1]),
               "scalar": []}[change]
        if change == "huge" and rng.random() < 0.5:
            new = _pick(rng, [[2**40], [2**31, 2**31], [2**62, 2]])
        del init.dims[:]
        init.dims.extend(new)
        return f"initializer {init.name} dims {change}: {new}"
    if kind == "window":
        windowed = [n for n in graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")]
        node = _pick(rng, windowed) if windowed else node
        size = _pick(rng, [7, 64, 1023, 1024, 1025, 2**31, 2**62, -1, 0])
        name = _pick(rng, ["pads", "kernel_shape", "strides", "dilations", "auto_pad", "all"])
        if name == "all":
            _attribute(node, "kernel_shape", [size, size])
            _attribute(node, "pads", [size // 2] * 4)
        elif name == "pads":
            _attribute(node, name, _pick(rng, [[size] * 4, [0, 0, size, size], [size, 0, size, 0]]))
        elif name == "auto_pad":
            _attribute(node, name, _pick(rng, ["SAME_LOWER", "SAME_UPPER", "VALID", "bogus", ""]))
        else:
            _attribute(node, name, _pick(rng, [[size, size], [size, 1], [size], [size] * 3]))
        return f"{node.op_type} {name} {size}"
    if kind == "attr_type":
        names = [a.name for a in node.attribute] + ["axis", "alpha", "transB", "epsilon",
                                                    "approximate", "kernel_shape", "pads"]
        name = _pick(rng, names)
        value = _pick(rng, WRONG_TYPES)
        _attribute(node, name, value)
        return f"{node.op_type} {name} = {type(value).__name__}"
    if kind == "attr_value":
        name, value = _pick(rng, [("axis", 0), ("axis", 2), ("axis", 5), ("axis", -5),
                                  ("axis", 2**40), ("alpha", float("nan")), ("alpha", 1e30),
                                  ("beta", float("inf")), ("transA", 1), ("transB", 2),
                                  ("group", 2), ("ceil_mode", 1), ("count_include_pad", 0),
                                  ("training_mode", 1), ("epsilon", -1.0),
                                  ("epsilon", float("nan")), ("approximate", "x"),
                                  ("storage_order", 1), ("dilations", [2, 2]),
                                  ("value_float", 2.0), ("seed", 3)])
        _attribute(node, name, value)
        return f"{node.op_type} {name} = {value!r}"
    if kind in ("init_truncate", "init_dtype"):
        if not graph.initializer:
            return "no initializers (unchanged)"
        init = _pick(rng, graph.initializer)
        if kind == "init_dtype":
            init.data_type = _pick(rng, [10, 11, 7, 6, 2, 3, 9, 8, 14, 16, 21, 0, 999])
            return f"initializer {init.name} data_type {init.data_type}"
        if init.HasField("raw_data"):
            cut = _pick(rng, [0, 1, len(init.raw_data) // 2, len(init.raw_data) - 1])
            init.raw_data = init.raw_data[:cut] if rng.random() < 0.7 \
                else init.raw_data + bytes(int(rng.integers(1, 9)))
            return f"initializer {init.name} raw_data {len(init.raw_data)} bytes"
        del init.float_data[int(rng.integers(len(init.float_data))):]
        return f"initializer {init.name} float_data {len(init.float_data)} values"
    if kind == "node_drop":
        graph.node.remove(node)
        return f"{node.op_type} dropped"
    if kind == "node_dup":
        graph.node.insert(int(rng.integers(len(graph.node) + 1)), node)
        return f"{node.op_type} duplicated"
    if kind == "node_reorder":
        nodes = list(graph.node)
        i, j = rng.choice(len(nodes), 2, replace=False)
        nodes[i], nodes[j] = nodes[j], nodes[i]
        del graph.node[:]
        graph.node.extend(nodes)
        return f"{nodes[j].op_type} and {nodes[i].op_type} swapped"
    if kind == "rename":
        later = [o for n in graph.node for o in n.output]
        new = _pick(rng, ["nowhere", "", _pick(rng, later), "x"])
        if node.input and rng.random() < 0.7:
            at = int(rng.integers(len(node.input)))
            node.input[at] = new
            return f"{node.op_type} input {at} -> {new!r}"
        node.output[0] = new
        return f"{node.op_type} output -> {new!r}"
    if kind == "opset":
        change = _pick(rng, ["version", "none", "domain", "node_domain"])
        if change == "version":
            model.opset_import[0].version = _pick(rng, [1, 6, 7, 11, 12, 13, 18, 21, 23, 99])
        elif change == "none":
            del model.opset_import[:]
        elif change == "domain":
            model.opset_import[0].domain = _pick(rng, ["com.microsoft", "x", "ai.onnx.ml"])
        else:
            node.domain = _pick(rng, ["com.microsoft", "x", "ai.onnx"])
        return f"opset {change}: {list(model.opset_import)} {node.domain!r}"
    if kind == "external":
        return _external(model, folder, rng)
    if kind == "graph_io":
        change = _pick(rng, ["elem_type", "drop_input", "outputs", "output_name", "no_shape"])
        value = _pick(rng, graph.input)
        if change == "elem_type":
            value.type.tensor_type.elem_type = _pick(rng, [6, 10, 8, 11, 9, 0, 16])
        elif change == "drop_input":
            graph.input.remove(value)
        elif change == "outputs":
            graph.output.add().CopyFrom(helper.make_tensor_value_info(
                _pick(rng, [o for n in graph.node for o in n.output]), TensorProto.FLOAT, None))
        elif change == "output_name":
            graph.output[0].name = _pick(rng, ["nowhere", graph.input[0].name, ""])
        else:
            value.type.tensor_type.ClearField("shape")
        return f"graph {change} ({value.name})"
    if kind == "constant":
        name = _pick(rng, [i.name for i in graph.initializer] or ["k"])
        value = _pick(rng, [{"value_string": "x"}, {"value_ints": [1, 2]},
                            {"value_float": float("nan")},
                            {"sparse_value": helper.make_sparse_tensor(
                                numpy_helper.from_array(np.ones(1, np.float32)),
                                numpy_helper.from_array(np.zeros(1, np.int64)), [8])},
                            {"value": numpy_helper.from_array(np.ones((2, 2), np.float32))},
                            "initializer"])
        if value == "initializer":  # the initializer as a Constant node: the same model
            init = next((i for i in graph.initializer if i.name == name), None)
            if init is None:
                return "no initializers (unchanged)"
            graph.initializer.remove(init)
            graph.node.insert(0, helper.make_node("Constant", [], [name], value=init))
            return f"initializer {name} as a Constant node"
        graph.node.insert(0, helper.make_node("Constant", [], [name], **value))
        for init in [i for i in graph.initializer if i.name == name]:
            graph.initializer.remove(init)
        return f"Constant {name} {sorted(value)}"
    return "unchanged"


def _external(model, folder, rng):
    """Move the data of an initializer or a Constant node's tensor to an external file:
    inside the folder (valid), or out of it, or declared wrongly."""
    graph = model.graph
    tensors = [*graph.initializer, *(a.t for n in graph.node if n.op_type == "Constant"
                                     for a in n.attribute if a.name == "value")]
    if not tensors:
        return "no tensors (unchanged)"
    init = _pick(rng, tensors)
    data = numpy_helper.to_array(init).tobytes()
    outside = folder.parent / "outside.bin"
    outside.write_bytes(data)
    (folder / "inside.bin").write_bytes(b"\0" * 16 + data)
    (folder / "sub").mkdir(exist_ok=True)
    change = _pick(rng, ["inside", "parent", "absolute", "symlink_out", "symlink_in",
                         "missing", "directory", "offset", "length", "huge", "text", "nul"])
    location, offset, length = "inside.bin", 16, len(data)
    if change == "parent":
        location = "../outside.bin"
    elif change == "absolute":
        location = str(outside)
    elif change == "symlink_out":
        os.symlink(outside, folder / "link.bin")
        location, offset = "link.bin", 0
    elif change == "symlink_in":
        os.symlink(folder / "inside.bin", folder / "sub" / "link.bin")
        location = "sub/link.bin"
    elif change == "missing":
        location = "missing.bin"
    elif change == "directory":
        location = "sub"
    elif change == "offset":
        offset = _pick(rng, [-1, 10**9, len(data)])
    elif change == "length":
        length = _pick(rng, [0, len(data) - 1, len(data) + 4])
    elif change == "huge":
        length = 2**40
    elif change == "text":
        offset = "sixteen"
    elif change == "nul":
        location = "inside\0.bin"
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = init.external_data.add()
        entry.key, entry.value = key, str(value)
    return f"tensor {init.name!r} external {change}: {location!r} {offset} {length}"


KINDS = ("none", "dims", "init_dims", "window", "attr_type", "attr_value", "init_truncate",
         "init_dtype", "node_drop", "node_dup", "node_reorder", "rename", "opset", "external",
         "graph_io", "constant", "truncate", "flip")


def damaged_bytes(kind, data, rng):
    if kind == "truncate":
        cut = int(rng.integers(len(data)))
        return f"{cut} of {len(data)} bytes", data[:cut]
    flipped = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        flipped[int(rng.integers(len(flipped)))] ^= int(rng.integers(1, 256))
    return "bytes flipped", bytes(flipped)


# -- checking ----------------------------------------------------------------------------------

_ELEMENTS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
             TensorProto.INT32: np.int32, TensorProto.INT64: np.int64}


def check_import(net, path, rng):
    """forward against onnxruntime on fresh random inputs at the model's batch size (its
    declared one, else 4)."""
    if not isinstance(net, nn.Network):
        raise AssertionError(f"imported a {type(net).__name__}, not a Network")
    model = onnx.load(path, load_external_data=False)
    values = {v.name: v for v in model.graph.input}
    dims = values[next(iter(net.inputs))].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims[0].dim_value > 0 else 4
    inputs = random_inputs(net, rng, batch)
    feed = {name: inputs[name].astype(_ELEMENTS[values[name].type.tensor_type.elem_type])
            for name in inputs}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree(net.forward(inputs), session.run(None, feed)[0], "forward against onnxruntime")


def run(examples, seed):
    fuzz = Fuzz()
    root = Path(tempfile.mkdtemp(prefix="fuzz_onnx_"))
    folder = root / "model"
    warm = np.random.default_rng(seed)
    for generate in GENERATORS.values():  # compile the kernels before the limit and the clock
        folder.mkdir()
        onnx.save(generate(warm, 2), folder / "model.onnx")
        check_import(nn.from_onnx(folder / "model.onnx"), folder / "model.onnx", warm)
        shutil.rmtree(folder)
    baseline, limit = limit_address_space()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for case in range(examples):
        name = list(GENERATORS)[case % len(GENERATORS)]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        folder.mkdir()
        path = folder / "model.onnx"
        model = GENERATORS[name](rng, _pick(rng, BATCHES))
        if kind in ("truncate", "flip"):
            detail, data = damaged_bytes(kind, model.SerializeToString(), rng)
        else:
            detail = mutate(kind, model, folder, rng)
            data = model.SerializeToString()
        path.write_bytes(data)
        check_rng = np.random.default_rng([seed, case])
        kept = root / f"failed-{case}"
        if fuzz.case(name, kind, detail, lambda: nn.from_onnx(path),
                     lambda net: check_import(net, path, check_rng), kept) == "failed":
            shutil.copytree(folder, kept, symlinks=True)
        shutil.rmtree(folder)
    if not fuzz.failures:
        shutil.rmtree(root)
    return fuzz.summary(seed=seed, seconds=round(time.perf_counter() - start, 1),
                        address_space_baseline=baseline, address_space_limit=limit)


if __name__ == "__main__":
    main(run, __doc__, "models")
