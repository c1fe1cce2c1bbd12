"""Networks: directed acyclic graphs of the ops in :mod:`lutengine.ops`, run in NumPy and the
Numba kernels, whose weight layers can be lookup tables.

A :class:`Network` has named inputs (float32 features or images, or int64 token ids; axis 0 of
every value is the batch), nodes that each apply an op to named values, and one output. A
chain is one line: ``Network([Linear(d1), ReLU(), Linear(d2), Softmax()], (784,))``; a graph
names each node's inputs: ``Network([("c", Conv2d(...), ["x"]), ("s", Add(), ["c", "x"])],
{"x": (8, 32, 32)})``. Shapes and dtypes are checked node by node when it is built.

:meth:`Network.forward` runs the graph in chunks of examples. It runs each run of LUT
``Linear`` layers with ReLU between them as one fused kernel call
(:class:`lutengine.runtime.FusedChain`: MADDNESS's encoding and int8 scans of every layer per
block of rows, Blalock & Guttag 2021, §4) and a ReLU feeding a max pool as the pool then the
ReLU (the same bits, on a quarter of the values). The plan is rebuilt whenever a layer's
fitted state changes; ``forward(X, fused=False)`` runs every op alone, the oracle of the fused
plan.
"""

import math
import numbers
import operator
from itertools import chain
from typing import NamedTuple

import numpy as np

from . import _persist, config, ops
from ._validation import _real_array, check_all_finite, check_int, check_limit


class Input(NamedTuple):
    """A network input: its per-example ``shape`` and its ``dtype`` ("float32" or "int64")."""

    shape: tuple
    dtype: str = "float32"


class Node(NamedTuple):
    """``op`` applied to the values named ``inputs``; its output is the value ``name``."""

    name: str
    op: ops.Op
    inputs: tuple


class _Step(NamedTuple):
    run: object       # callable on the input values
    inputs: tuple     # names of the values it reads
    output: str       # name of the value it writes
    free: tuple       # values no later step reads (dropped after it)


#: what tells a fused plan that a LUT layer changed, compared by identity: the tables (every
#: fit sets a new fitted state, new tables included) and whether they are quantised
_layer_state = operator.attrgetter("quantize", "luts_q_")


_FLOAT32 = np.dtype(np.float32)


def _check_inputs(inputs):
    """``inputs`` as {name: Input}: a shape (one float32 input "x") or {name: shape or Input}."""
    if not isinstance(inputs, dict):
        inputs = {"x": inputs}
    if not inputs:
        raise ValueError("a network needs at least one input")
    checked = {}
    for name, spec in inputs.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"input names must be non-empty strings, got {name!r}")
        spec = spec if isinstance(spec, Input) else Input(spec)
        if isinstance(spec.shape, (str, bytes)) or not hasattr(spec.shape, "__iter__"):
            raise TypeError(f"input {name!r}: shape must be a sequence of sizes, got "
                            f"{spec.shape!r}")
        shape = tuple(check_int(n, f"input {name!r} shape", 1) for n in spec.shape)
        if spec.dtype not in ops.DTYPES:
            raise ValueError(f"input {name!r}: dtype must be one of {list(ops.DTYPES)}, got "
                             f"{spec.dtype!r}")
        check_limit(math.prod(shape), "MAX_VALUE_ELEMENTS", f"input {name!r} ({shape}) size")
        checked[name] = Input(shape, spec.dtype)
    return checked


def _check_nodes(items, inputs):
    """The nodes as Node tuples: a bare op takes the previous node's output (the one input
    for the first); a ``(name, op, inputs)`` triple names its own."""
    if isinstance(items, (ops.Op, str)) or not hasattr(items, "__iter__"):
        raise TypeError(f"nodes must be a list of ops or (name, op, inputs) triples, got "
                        f"{type(items).__name__}")
    items = list(items)
    if not items:
        raise ValueError("nodes must not be empty")
    check_limit(len(items), "MAX_NODES", "the number of nodes")
    taken = set(inputs) | {item[0] for item in items if isinstance(item, (tuple, list))
                           and item and isinstance(item[0], str)}
    nodes, previous, counts = [], None, {}
    for i, item in enumerate(items):
        if isinstance(item, ops.Op):
            if previous is None and len(inputs) != 1:
                raise ValueError(f"nodes[0] is a bare op, but the network has inputs "
                                 f"{list(inputs)}: give it as (name, op, inputs)")
            op, sources = item, (previous or next(iter(inputs)),)
            base = op.name.lower()
            while True:
                k = counts.get(base, 0)
                counts[base] = k + 1
                name = base if k == 0 else f"{base}_{k}"
                if name not in taken:
                    break
            taken.add(name)
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            name, op, sources = item
            if not isinstance(name, str) or not name:
                raise TypeError(f"nodes[{i}]: the name must be a non-empty string, got {name!r}")
            if isinstance(sources, str) or not hasattr(sources, "__iter__"):
                raise TypeError(f"nodes[{i}] ({name!r}): inputs must be a list of names, got "
                                f"{sources!r}")
            sources = tuple(sources)
        else:
            raise TypeError(f"nodes[{i}] must be an op or a (name, op, inputs) triple, got "
                            f"{type(item).__name__}")
        if not isinstance(op, ops.Op):
            raise TypeError(f"nodes[{i}] ({name!r}): the op must be one of "
                            f"{[c.name for c in ops.OPS]}, got {type(op).__name__}")
        nodes.append(Node(name, op, sources))
        previous = name
    return nodes


class Network:
    """A directed acyclic graph of ops (see the module docstring).

    Parameters
    ----------
    nodes : list
        In topological order: ops (each takes the previous node's output) or
        ``(name, op, input names)`` triples.
    inputs : tuple or dict
        A per-example shape (one float32 input named "x"), or {name: shape or
        :class:`Input` (shape, dtype)} for several, or for int64 token ids.
    output : str, optional
        The node whose value :meth:`forward` returns (default: the last).
    classes : array, optional
        Labels of a classifier's outputs (default 0..k − 1 for (n, k) outputs).

    Attributes: ``inputs`` ({name: Input}), ``nodes`` (tuple of :class:`Node`), ``output``,
    ``classes`` (None for outputs that are not (n, k)), ``shapes`` and ``dtypes`` (of every
    value, per example).
    """

    def __init__(self, nodes, inputs, *, output=None, classes=None):
        self.inputs = _check_inputs(inputs)
        self.nodes = tuple(_check_nodes(nodes, self.inputs))
        self.shapes = {name: spec.shape for name, spec in self.inputs.items()}
        self.dtypes = {name: spec.dtype for name, spec in self.inputs.items()}
        work = max(math.prod(shape) for shape in self.shapes.values())
        for i, (name, op, sources) in enumerate(self.nodes):
            where = f"nodes[{i}] ({name!r}, {op.name})"
            if name in self.shapes:
                raise ValueError(f"{where}: the name {name!r} is already taken")
            unknown = [s for s in sources if s not in self.shapes]
            if unknown:
                raise ValueError(f"{where} reads {unknown}, which no input or earlier node "
                                 "gives (nodes must be in topological order)")
            if (op.arity is not None and len(sources) != op.arity) or not sources:
                raise ValueError(f"{where} takes {op.arity or 'one or more'} inputs, got "
                                 f"{len(sources)}")
            got = tuple(self.dtypes[s] for s in sources)
            if got != op.input_dtypes(len(sources)):
                raise TypeError(f"{where} takes {list(op.input_dtypes(len(sources)))} inputs, "
                                f"gets {list(got)}")
            shapes = [self.shapes[s] for s in sources]
            try:
                shape = op.output_shape(*shapes)
                size = op.work(*shapes)
            except ValueError as exc:
                raise ValueError(f"{where} {exc}") from None
            check_limit(size, "MAX_VALUE_ELEMENTS", f"{where}: the elements it holds per example")
            work = max(work, size)
            self.shapes[name], self.dtypes[name] = shape, "float32"
        self.output = self.nodes[-1].name if output is None else output
        if not isinstance(self.output, str) or self.output not in self.shapes \
                or self.output in self.inputs:
            raise ValueError(f"output must name a node, got {self.output!r}")
        self.classes = self._check_classes(classes)
        self._chunk_rows = max(1, config.FORWARD_CHUNK_ELEMENTS // work)
        self._plans = {}
        # what forward's fast path accepts as is: one float32 input's (name, shape)
        (name, spec), *others = self.inputs.items()
        self._single = None if others or spec.dtype != "float32" else (name, spec.shape)
        # the layers a fused plan may copy from (tree-encoded estimators)
        self._lut_layers = [op.layer for op in self.ops if op.lut
                            and hasattr(op.layer, "split_dims_")]

    def _check_classes(self, classes):
        shape = self.shapes[self.output]
        if classes is None:
            return np.arange(shape[0]) if len(shape) == 1 else None
        classes = np.asarray(classes)
        if len(shape) != 1 or classes.shape != shape:
            raise ValueError(f"classes must have one label per output "
                             f"({', '.join(map(str, shape))}), got shape {classes.shape}")
        if classes.dtype.kind not in "biufU":
            raise TypeError(f"classes must be numbers or strings, got dtype {classes.dtype}")
        return classes

    # -- structure ------------------------------------------------------------------------
    @property
    def ops(self):
        """The ops of the nodes, in order."""
        return tuple(node.op for node in self.nodes)

    @property
    def input_shape(self):
        """The per-example shape of the one input (an error for several inputs)."""
        if len(self.inputs) != 1:
            raise ValueError(f"this network has {len(self.inputs)} inputs {list(self.inputs)}")
        return next(iter(self.inputs.values())).shape

    def node(self, name):
        """The node named ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}")

    @property
    def layer_nodes(self):
        """The weight-layer nodes (Linear, Conv2d), in topological order."""
        return [node for node in self.nodes if node.op.lut]

    @property
    def layers(self):
        """The estimators of the weight layers (Dense or LutMatmul), in order."""
        return [node.op.layer for node in self.layer_nodes]

    def with_layers(self, replacements):
        """A new Network whose weight layer ``i`` (an index into :attr:`layers`) holds
        ``replacements[i]``; every other op is shared."""
        names = {node.name: i for i, node in enumerate(self.layer_nodes)}
        positions = list(names.values())
        for i in replacements:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral) \
                    or not 0 <= i < len(positions):
                raise ValueError(f"replacements must be keyed by layer indices in "
                                 f"0..{len(positions) - 1}, got {i!r}")
        nodes = [Node(name, op.with_layer(replacements[names[name]]), sources)
                 if names.get(name) in replacements else Node(name, op, sources)
                 for name, op, sources in self.nodes]
        return Network(nodes, self.inputs, output=self.output, classes=self.classes)

    # -- running --------------------------------------------------------------------------
    def _validated(self, X, argument="X"):
        """(X as {input name: array}: float32 (finite) or int64, C-contiguous; the batch
        size), errors naming ``argument``."""
        if self._single is not None and type(X) is np.ndarray and X.dtype is _FLOAT32 \
                and X.flags.c_contiguous and X.shape[1:] == self._single[1] and len(X) \
                and X.ndim == len(self._single[1]) + 1:
            if not np.isfinite(X).all():  # one row, typically: a whole-array check is cheap
                raise ValueError(f"{argument} contains NaN or Inf values")
            return {self._single[0]: X}, len(X)
        if isinstance(X, dict):
            if set(X) != set(self.inputs):
                raise ValueError(f"{argument} must hold the inputs {sorted(self.inputs)}, got "
                                 f"{sorted(X, key=str)}")
        elif len(self.inputs) == 1:
            X = {next(iter(self.inputs)): X}
        else:
            raise TypeError(f"{argument} must be a dict of the inputs {list(self.inputs)}")
        values, batch = {}, None
        for name, spec in self.inputs.items():
            label = argument if len(self.inputs) == 1 else f"{argument}[{name!r}]"
            value = _real_array(X[name], label, "array")
            if spec.dtype == "int64" and value.dtype.kind not in "iu":
                raise TypeError(f"{label} must hold integer ids, got dtype {value.dtype}")
            if value.shape[1:] != spec.shape or value.ndim != len(spec.shape) + 1:
                dims = ", ".join(map(str, ("n", *spec.shape)))
                rank = "" if value.ndim == len(spec.shape) + 1 else \
                    f"be {len(spec.shape) + 1}-D, "
                raise ValueError(f"{label} must {rank}have shape ({dims}), got {value.shape}")
            if value.shape[0] == 0:
                raise ValueError(f"{label} must not be empty, got shape {value.shape}")
            if batch is not None and value.shape[0] != batch:
                raise ValueError(f"the inputs must have one batch size, got {batch} and "
                                 f"{value.shape[0]} for {label}")
            batch = value.shape[0]
            values[name] = np.ascontiguousarray(value, dtype=spec.dtype)
            if spec.dtype == "float32":
                check_all_finite(values[name], label)
        return values, batch

    def forward(self, X, output=None, fused=True):
        """The value of the output node (or of node ``output``, any node or input) for the
        examples ``X``, float32 (n, *its shape). ``X`` is an array (n, *input shape) for a
        network of one input, else {input name: array}. Runs in chunks of examples;
        ``fused=False`` runs every op alone (the oracle of the fused plan)."""
        if output is not None and not isinstance(output, str):
            raise TypeError(f"output must name a node of the network, got {output!r}")
        return self._values(X, (self.output if output is None else output,), fused)[0]

    def _values(self, X, outputs, fused=True):
        """The values named ``outputs`` (a tuple) for X, from one pass."""
        values, n = self._validated(X)
        steps = self._plan(outputs, fused)
        if n <= self._chunk_rows:
            return [np.ascontiguousarray(v) for v in self._run(values, steps, outputs)]
        parts = [self._run({k: v[i:i + self._chunk_rows] for k, v in values.items()}, steps,
                           outputs) for i in range(0, n, self._chunk_rows)]
        return [np.concatenate(chunks) for chunks in zip(*parts)]

    @staticmethod
    def _run(values, steps, outputs):
        for run, inputs, out, free in steps:
            values[out] = run(*[values[name] for name in inputs])
            for name in free:
                del values[name]
        return [values[name] for name in outputs]

    def predict(self, X):
        """The class of the largest output of each example (a classifier's prediction)."""
        if self.classes is None:
            raise ValueError(f"predict needs (n, classes) outputs, this network gives "
                             f"(n, {', '.join(map(str, self.shapes[self.output]))})")
        return self.classes[np.argmax(self.forward(X), axis=1)]

    def score(self, X, y):
        """Accuracy on (X, y)."""
        predicted, y = self.predict(X), np.asarray(y)
        if y.shape != predicted.shape:
            raise ValueError(f"y must hold one label per example of X, shape "
                             f"{predicted.shape}, got shape {y.shape}")
        return float(np.mean(predicted == y))

    # -- the plan -------------------------------------------------------------------------
    def _plan(self, outputs, fused):
        """The steps computing ``outputs``, cached while the LUT layers' fitted arrays are
        the ones the plan was built from (a refit or set_params rebuilds it)."""
        state = tuple(chain.from_iterable(map(_layer_state, self._lut_layers)))
        cached = self._plans.get((outputs, fused))
        if cached is None or not all(map(operator.is_, cached[0], state)):
            cached = state, self._build_plan(outputs, fused)
            self._plans[(outputs, fused)] = cached
        return cached[1]

    def _build_plan(self, outputs, fused):
        for name in outputs:
            if not isinstance(name, str) or name not in self.shapes:
                raise ValueError(f"output must name a node of the network, got {name!r}")
        by_name = {node.name: node for node in self.nodes}
        needed, stack = set(), list(outputs)
        while stack:
            name = stack.pop()
            if name in by_name and name not in needed:
                needed.add(name)
                stack.extend(by_name[name].inputs)
        consumers = {}
        for node in self.nodes:
            if node.name in needed:
                for source in node.inputs:
                    consumers.setdefault(source, []).append(node)

        def sole_consumer(name, kind):
            """The one node reading value ``name``, if it is an op of ``kind``."""
            readers = consumers.get(name, [])
            if name not in outputs and len(readers) == 1 and isinstance(readers[0].op, kind):
                return readers[0]
            return None

        steps, covered = [], set()
        for node in self.nodes:
            if node.name not in needed or node.name in covered:
                continue
            chain = [node]
            while fused and _lut_linear(chain[-1]):
                relu = sole_consumer(chain[-1].name, ops.ReLU)
                following = relu and sole_consumer(relu.name, ops.Linear)
                if not following or not _lut_linear(following):
                    break
                chain += [relu, following]
            pool = fused and isinstance(node.op, ops.ReLU) and sole_consumer(node.name,
                                                                            ops.MaxPool2d)
            if len(chain) > 1:
                run = _fused_chain([n.op.layer for n in chain[0::2]])
            elif pool:
                chain, run = [node, pool], lambda H, pool=pool.op, relu=node.op: relu(pool(H))
            else:
                run = node.op
            covered.update(n.name for n in chain)
            steps.append(_Step(run, node.inputs, chain[-1].name, ()))
        last_read = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                last_read[name] = i
        return [step._replace(free=tuple(name for name, i in last_read.items()
                                         if i == s and name not in outputs))
                for s, step in enumerate(steps)]

    # -- files ----------------------------------------------------------------------------
    def save(self, path):
        """Write the network (graph, ops, exact and LUT layers, inputs, classes) to ``path``
        (.npz, read back by :func:`lutengine.load` with allow_pickle=False)."""
        _persist.save(self, path)

    def _to_file(self):
        """(header params, arrays) of the file :meth:`save` writes."""
        arrays = {} if self.classes is None else {"classes": self.classes}
        nodes = []
        for i, (name, op, sources) in enumerate(self.nodes):
            entry = {"name": name, "op": op.name, "inputs": list(sources),
                     "config": op.config(), "arrays": sorted(op.arrays()), "layer": None}
            arrays.update({f"{i}.{key}": value for key, value in op.arrays().items()})
            if op.lut:
                layer = op.layer
                entry["layer"] = {"class": type(layer).__name__, "params": layer.get_params()}
                arrays.update({f"{i}.layer.{key}": np.asarray(getattr(layer, key))
                               for key in layer._state_attrs})
            nodes.append(entry)
        params = {"inputs": [[name, list(spec.shape), spec.dtype]
                             for name, spec in self.inputs.items()],
                  "nodes": nodes, "output": self.output, "classes": self.classes is not None}
        return params, arrays

    @staticmethod
    def _file_members(params):
        """The array names a file with header ``params`` must hold (checked before any is
        read)."""
        _expect(params, dict, "params")
        nodes = _expect(params.get("nodes"), list, "nodes")
        check_limit(len(nodes), "MAX_NODES", "the number of nodes")
        names = {"classes"} if _expect(params.get("classes"), bool, "classes") else set()
        for i, entry in enumerate(nodes):
            _expect(entry, dict, f"nodes[{i}]")
            op = ops.BY_NAME.get(entry.get("op"))
            if op is None:
                raise ValueError(f"nodes[{i}]: unknown op {entry.get('op')!r}; known: "
                                 f"{sorted(ops.BY_NAME)}")
            own = _expect(entry.get("arrays"), list, f"nodes[{i}].arrays")
            if not set(own) <= set(op.array_names()) or len(set(own)) != len(own):
                raise ValueError(f"nodes[{i}]: a {op.name} holds arrays among "
                                 f"{list(op.array_names())}, got {own}")
            names.update(f"{i}.{key}" for key in own)
            layer = entry.get("layer")
            if op.lut:
                cls = _layer_class(_expect(layer, dict, f"nodes[{i}].layer").get("class"))
                names.update(f"{i}.layer.{key}" for key in cls._state_attrs)
            elif layer is not None:
                raise ValueError(f"nodes[{i}]: a {op.name} has no layer")
        return names

    @classmethod
    def _from_file(cls, params, arrays):
        """The Network of a file (see :meth:`_to_file`); every op, layer and shape checked."""
        inputs = {}
        for spec in _expect(params.get("inputs"), list, "inputs"):
            if not isinstance(spec, list) or len(spec) != 3 or not isinstance(spec[0], str) \
                    or spec[0] in inputs:
                raise ValueError(f"inputs must be [name, shape, dtype] triples with distinct "
                                 f"names, got {spec!r}")
            inputs[spec[0]] = Input(_expect(spec[1], list, "input shape"), spec[2])
        nodes = []
        for i, entry in enumerate(params["nodes"]):
            op = ops.BY_NAME[entry["op"]]
            config = _expect(entry.get("config"), dict, f"nodes[{i}].config")
            own = {key: arrays[f"{i}.{key}"] for key in entry["arrays"]}
            if op.lut:
                layer = entry["layer"]
                layer_cls = _layer_class(layer["class"])
                state = {key: arrays[f"{i}.layer.{key}"] for key in layer_cls._state_attrs}
                own["layer"] = _persist.restore(layer_cls, layer.get("params"), state)
            nodes.append((entry.get("name"), op(**config, **own), entry.get("inputs")))
        return cls(nodes, inputs, output=params.get("output"), classes=arrays.get("classes"))

    def __repr__(self):
        lines = [f"  {name} = {op!r}({', '.join(sources)})" for name, op, sources in self.nodes]
        inputs = ", ".join(f"{name}: {spec.shape}" + ("" if spec.dtype == "float32" else
                                                      f" {spec.dtype}")
                           for name, spec in self.inputs.items())
        return f"Network({inputs} → {self.output},\n" + "\n".join(lines) + ")"


def _expect(value, kind, what):
    if not isinstance(value, kind):
        raise ValueError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _layer_class(name):
    """The estimator class a weight layer read from a file may have."""
    cls = _persist.savable_class(name)
    if cls is None or not hasattr(cls, "n_outputs_"):
        raise ValueError(f"a weight layer must be a Dense, LutMatmul or PQMatmul, got {name!r}")
    return cls


def _lut_linear(node):
    return isinstance(node.op, ops.Linear) and ops.is_lut(node.op.layer)


def _fused_chain(layers):
    """The forward of a FusedChain of ``layers`` on any (…, features) value."""
    from .runtime import FusedChain

    chain = FusedChain(layers)

    def run(H):
        if H.ndim == 2:
            return chain.forward(H)
        return chain.forward(H.reshape(-1, H.shape[-1])).reshape(*H.shape[:-1], -1)

    return run


_persist.savable(Network)
_persist.savable(ops.Dense)
