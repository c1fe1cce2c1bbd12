"""A whole MNIST MLP on lookup tables against onnxruntime and PyTorch, as a runtime.

The 784-256-256-10 network of :mod:`learned_mnist` (``wide``; :meth:`lutengine.nn.MLP.train`,
same settings) is written to an ONNX file (:func:`onnx_model`: Gemm, Relu, Gemm, Relu, Gemm,
Softmax, built with ``onnx.helper``) and imported back with :func:`lutengine.nn.from_onnx`;
the import is checked against onnxruntime on the whole test set (``onnx_check``: the largest
difference relative to the largest output, and the predictions that differ). Every layer of
the imported :class:`~lutengine.network.Network` is then replaced, for each number of
codebooks C, by

* ``learn_luts``: lookup-table layers trained end to end (:func:`lutengine.nn.learn_luts`,
  its default epochs, as :mod:`learned_mnist`);
* ``replace_layers``: MADDNESS layers fitted incrementally, the exact layers after each one
  fine-tuned (ITLUMM §2.3, :func:`lutengine.nn.replace_layers`).

Each row (and the ``onnxruntime``, ``torch`` and ``lutengine exact`` rows of the same
weights) has its test accuracy, its throughput on ``timing_rows`` test rows in one call
(``Network.forward``, which runs the LUT layers and the ReLUs between them as one fused
kernel; timed alternately with onnxruntime on the same rows, best of ``timing_repeats``:
``speedup_vs_ort``) and its batch-1 latency (median of ``batch1_calls`` single-row calls,
each alternating with an onnxruntime call on the same row: ``latency_vs_ort``). Everything
runs on one thread: BLAS and Numba (:func:`_common.single_thread`), onnxruntime (one
intra-op and one inter-op thread), PyTorch (``torch.set_num_threads(1)``).

:data:`TARGETS` are the figures the rows are reported against (``targets`` in the result);
nothing is tuned to them.

PyTorch, onnx and onnxruntime are imported only when :func:`run` (or the helpers that
need them) runs.
"""

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import nn
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "mlp_runtime"

#: hidden widths of the network (learned_mnist's "wide" net) and its training epochs
#: (MLP.train's default, as learned_mnist)
HIDDEN = (256, 256)
MLP_EPOCHS = 15

#: numbers of codebooks of the LUT rows
NCODEBOOKS = (16, 32, 64)

#: test rows in the timed batch, timed calls per side (best kept), single-row calls
TIMING_ROWS = 10_000
TIMING_REPEATS = _common.TIMING_REPEATS
BATCH1_CALLS = 200

#: what a LUT row is reported against: accuracy / exact accuracy at least, throughput over
#: onnxruntime's at least, batch-1 latency over onnxruntime's at most
TARGETS = {"relative_accuracy": 0.97, "speedup_vs_ort": 5.0, "latency_vs_ort": 1.5}

#: ONNX opset and IR version of the written file (what onnxruntime >= 1.16 reads)
ONNX_OPSET = 17
ONNX_IR_VERSION = 8

PLOTS = {"speed": ("speedup_vs_ort", "accuracy", 2),
         "latency": ("batch1_us", "accuracy", 2)}


# -- the same weights in ONNX and PyTorch --------------------------------------------------

def onnx_model(layers, softmax=True):
    """An ONNX model of the MLP whose affine layers are ``layers`` (objects with ``W`` (n_in,
    n_out) and ``b``, e.g. :class:`lutengine.nn.Dense`): Gemm, Relu, …, Gemm and, with
    ``softmax``, Softmax over the classes; input ``x`` (n, n_in) with a dynamic batch, output
    ``y``. Needs the ``onnx`` package."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, previous = [], [], "x"
    for i, layer in enumerate(layers):
        W, b = (np.asarray(a, np.float32) for a in (layer.W, layer.b))
        initializers += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [previous, f"W{i}", f"b{i}"], [f"z{i}"],
                                      name=f"gemm{i}"))
        previous = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"h{i}"], name=f"relu{i}"))
            previous = f"h{i}"
    if softmax:
        nodes.append(helper.make_node("Softmax", [previous], ["y"], name="softmax", axis=1))
    else:
        nodes.append(helper.make_node("Identity", [previous], ["y"], name="output"))
    n_in, n_out = np.shape(layers[0].W)[0], np.shape(layers[-1].W)[1]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="lutengine")
    model.ir_version = ONNX_IR_VERSION
    return model


def ort_session(path):
    """An onnxruntime session on the CPU with one intra-op and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_mlp(layers, softmax=True):
    """A ``torch.nn.Sequential`` of Linear / ReLU (and a Softmax head) holding the weights of
    ``layers`` (objects with ``W`` (n_in, n_out) and ``b``), in eval mode. Needs PyTorch."""
    import torch

    modules = []
    for i, layer in enumerate(layers):
        W, b = (np.asarray(a, np.float32) for a in (layer.W, layer.b))
        linear = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            linear.bias.copy_(torch.from_numpy(b))
        modules += [linear] + ([torch.nn.ReLU()] if i < len(layers) - 1 else [])
    if softmax:
        modules.append(torch.nn.Softmax(dim=1))
    return torch.nn.Sequential(*modules).eval()


# -- timing ------------------------------------------------------------------------------

def batch1_pair(fn, reference, X, calls):
    """Median microseconds of ``fn`` and of ``reference`` on single rows of ``X`` (cycled),
    ``calls`` calls each, alternating on the same row, on one thread (BLAS and Numba) after
    one untimed call of each. ``reference`` None times ``fn`` alone (its median twice)."""
    rows = [X[i % len(X):i % len(X) + 1] for i in range(calls)]
    with _common.single_thread():
        fn(rows[0])
        if reference is not None:
            reference(rows[0])
        times = []
        for row in rows:
            first = _common._seconds(lambda: fn(row))
            times.append((first, first if reference is None
                          else _common._seconds(lambda: reference(row))))
    median, median_reference = np.median(times, axis=0)
    return 1e6 * median, 1e6 * median_reference


def _max_relative_error(got, expected):
    """max |got − expected| / max |expected| over all entries (float64)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30))


def _is_fused(net):
    """Whether ``net.forward`` fuses some of its ops (here: LUT Linear layers and the ReLUs
    between them, one kernel call): its plan has fewer steps than running every op alone."""
    return len(net._plan((net.output,), True)) < len(net._plan((net.output,), False))


# -- the experiment ----------------------------------------------------------------------

def run(dataset="mnist", ncodebooks=NCODEBOOKS, epochs=None, seeds=1, max_train=None,
        timing_rows=TIMING_ROWS, timing_repeats=TIMING_REPEATS, batch1_calls=BATCH1_CALLS,
        methods=("learn_luts", "replace_layers"), mlp_epochs=MLP_EPOCHS, random_state=0,
        onnx_path=None, progress=True, data_home=None):
    """Train the MLP, export it to ONNX, import it, replace its layers, time every runtime.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
        ("digits": scikit-learn's 8x8 set, a 64-256-256-10 net, for tests.)
    ncodebooks : sequence of int
        Numbers of codebooks C of every layer.
    epochs : int, optional
        Epochs of :func:`lutengine.nn.learn_luts` (its default when None).
    seeds : int
        Seeds of each LUT conversion (``random_state``, ``random_state + 1``, …): the
        accuracy is their mean (spread in ``accuracy_std``), the first one is timed.
    max_train : int, optional
        Train (the MLP and the conversions) on the first ``max_train`` rows only.
    timing_rows, timing_repeats, batch1_calls : int
        Test rows in the timed batch, timed calls per side (best kept), single-row calls.
    methods : sequence of {"learn_luts", "replace_layers"}
    mlp_epochs : int
        Epochs of the exact MLP's training (:meth:`lutengine.nn.MLP.train`).
    random_state : int
        Seed of the MLP's training and of the first conversion seed.
    onnx_path : str or Path, optional
        Keep the exported ONNX file there (default: a temporary file, removed).
    progress : bool
    data_home : str or Path, optional
        Root searched first for the IDX files (see :mod:`lutengine.datasets`).

    Returns
    -------
    dict
        ``rows`` (``method, ncodebooks, accuracy, accuracy_std, relative_accuracy,
        rows_per_second, speedup_vs_ort, batch1_us, latency_vs_ort, forward_ms, ort_ms,
        ort_batch1_us, fused, build_seconds``), ``onnx_check`` (``max_relative_error`` of
        ``from_onnx``'s forward against onnxruntime on the test set and whether it is within
        ``tolerance``), ``targets`` and ``verdict`` (each LUT row against :data:`TARGETS`),
        the settings and the machine.
    """
    unknown = sorted(set(methods) - {"learn_luts", "replace_layers"})
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: ['learn_luts', 'replace_layers']")
    counts = [int(C) for C in ncodebooks]
    if not counts or min(counts) < 1:
        raise ValueError(f"ncodebooks must be positive integers, got {ncodebooks!r}")
    for name, value in (("seeds", seeds), ("timing_rows", timing_rows),
                        ("timing_repeats", timing_repeats), ("batch1_calls", batch1_calls),
                        ("mlp_epochs", mlp_epochs)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    import onnx
    import onnxruntime
    import torch

    from ..importers import IMPORT_RTOL

    started = time.perf_counter()
    Xtr, ytr, Xte, yte = _common.load_data(dataset, data_home, max_train)
    X_time = np.ascontiguousarray(Xte[:timing_rows])

    start = time.perf_counter()
    mlp = nn.MLP.train(Xtr, ytr, list(HIDDEN), epochs=mlp_epochs, random_state=random_state,
                       progress=progress)
    train_seconds = time.perf_counter() - start
    network_name = "x".join(map(str, [Xtr.shape[1], *HIDDEN, len(mlp.classes)]))

    with contextlib.ExitStack() as stack:
        if onnx_path is None:
            onnx_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "mlp.onnx"
        onnx_path = Path(onnx_path)
        onnx.save(onnx_model(mlp.layers), str(onnx_path))
        onnx_bytes = onnx_path.stat().st_size
        onnx_ops = [node.op_type for node in onnx.load(str(onnx_path)).graph.node]
        net = nn.from_onnx(onnx_path)
        session = ort_session(onnx_path)
    input_name = session.get_inputs()[0].name
    model = torch_mlp(mlp.layers)

    def ort_forward(X):
        return session.run(None, {input_name: X})[0]

    def torch_forward(X):
        with torch.no_grad():
            return model(torch.from_numpy(X)).numpy()

    ort_out, net_out = ort_forward(Xte), net.forward(Xte)
    with _common.torch_threads(1):
        torch_out = torch_forward(Xte)
    error = _max_relative_error(net_out, ort_out)
    onnx_check = {
        "rows": int(len(Xte)),
        "max_relative_error": error,
        "max_abs_error": float(np.max(np.abs(net_out.astype(np.float64) - ort_out))),
        "tolerance": IMPORT_RTOL,
        "within_tolerance": bool(error <= IMPORT_RTOL),
        "predictions_differing": int(np.sum(np.argmax(net_out, 1) != np.argmax(ort_out, 1))),
        "torch_max_relative_error": _max_relative_error(torch_out, ort_out),
        "ops": onnx_ops,
        "file_bytes": onnx_bytes,
    }
    exact_accuracy = net.score(Xte, yte)

    def timed(method, C, accuracies, forward, fused, build_seconds):
        """A row: ``forward`` on X_time against onnxruntime (throughput and batch-1)."""
        if forward is ort_forward:
            seconds = _common.best_seconds(lambda: forward(X_time), timing_repeats)
            times = {"ms": 1e3 * seconds, "reference_ms": 1e3 * seconds, "speedup": 1.0}
            batch1, ort_batch1 = batch1_pair(forward, None, X_time, batch1_calls)
        else:
            times = _common.time_pair(lambda: forward(X_time), lambda: ort_forward(X_time),
                                      timing_repeats)
            batch1, ort_batch1 = batch1_pair(forward, ort_forward, X_time, batch1_calls)
        accuracy = float(np.mean(accuracies))
        return {"method": method, "ncodebooks": C, "accuracy": accuracy,
                "accuracy_std": float(np.std(accuracies)),
                "relative_accuracy": accuracy / exact_accuracy,
                "rows_per_second": len(X_time) / (times["ms"] / 1e3),
                "speedup_vs_ort": float(times["speedup"]),
                "batch1_us": float(batch1), "latency_vs_ort": float(batch1 / ort_batch1),
                "forward_ms": float(times["ms"]), "ort_ms": float(times["reference_ms"]),
                "ort_batch1_us": float(ort_batch1), "fused": fused, "build_seconds": build_seconds}

    with _common.torch_threads(1):
        rows = [timed("onnxruntime", None, [_common.accuracy(ort_out, yte)], ort_forward,
                      None, None),
                timed("torch", None, [_common.accuracy(torch_out, yte)], torch_forward, None,
                      None),
                timed("lutengine exact", None, [exact_accuracy], net.forward, _is_fused(net),
                      None)]
    seed_list = list(range(random_state, random_state + int(seeds)))
    for C in tqdm(counts, desc=NAME, disable=not progress):
        for method in methods:
            converted, seconds = [], []
            for seed in seed_list:
                start = time.perf_counter()
                if method == "learn_luts":
                    converted.append(nn.learn_luts(net, Xtr, ytr, C, epochs=epochs,
                                                   random_state=seed, progress=False))
                else:
                    converted.append(nn.replace_layers(net, Xtr, ytr, C, random_state=seed,
                                                       progress=False))
                seconds.append(time.perf_counter() - start)
            with _common.torch_threads(1):
                rows.append(timed(method, C, [c.score(Xte, yte) for c in converted],
                                  converted[0].forward, _is_fused(converted[0]),
                                  float(np.mean(seconds))))
    verdict = [{"method": r["method"], "ncodebooks": r["ncodebooks"],
                "relative_accuracy_met": bool(r["relative_accuracy"]
                                              >= TARGETS["relative_accuracy"]),
                "speedup_vs_ort_met": bool(r["speedup_vs_ort"] >= TARGETS["speedup_vs_ort"]),
                "latency_vs_ort_met": bool(r["latency_vs_ort"] <= TARGETS["latency_vs_ort"])}
               for r in rows if r["ncodebooks"] is not None]
    from ..learned import SETTINGS as learned_settings

    return {
        "dataset": dataset,
        "network": network_name,
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "mlp_training": {"epochs": mlp_epochs, "seed": random_state,
                         "train_seconds": train_seconds, "method": "lutengine.nn.MLP.train"},
        "exact_accuracy": exact_accuracy,
        "onnx_check": onnx_check,
        "seeds": int(seeds),
        "learn_luts": {"epochs": epochs or "default", **learned_settings},
        "replace_layers": {"finetune": nn.FINETUNE},
        "threads": 1,
        "timing": f"forward of {len(X_time)} test rows in one call, best of {timing_repeats}, "
                  f"each method alternating with onnxruntime (1 intra-op and 1 inter-op "
                  f"thread); torch on 1 thread; lutengine through Network.forward with BLAS "
                  f"and Numba on 1 thread; batch1_us: median of {batch1_calls} single-row "
                  f"calls, each alternating with onnxruntime on the same row",
        "targets": TARGETS,
        "total_seconds": time.perf_counter() - started,
        "machine": {**_common.machine_info(), "torch": torch.__version__,
                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "rows": rows,
        "verdict": verdict,
    }
