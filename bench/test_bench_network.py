"""Whole networks on one thread: lutengine's ``Network.forward`` (exact, and with every
weight layer on lookup tables) against onnxruntime and PyTorch running the same weights.

Groups (``network|MODEL|rows=N``; the reference of the ratios in ``bench/report.py`` is
``ort``, onnxruntime with one intra-op and one inter-op thread):

- ``network|mlp|rows=10000`` and ``rows=1``: the 784-256-256-10 MLP of
  ``lutengine reproduce mlp-runtime``, trained briefly (:data:`MLP_TRAINING`) on MNIST from
  ``$LUTENGINE_DATA``, or on the embedded Fashion-MNIST subset when MNIST is absent
  (:func:`lutengine.datasets.load_default`), timed on 10 000 test rows (the subset's 1 000
  repeated) and on one row;
- ``network|cnn|rows=1000`` and ``rows=1``: a CIFAR-style CNN (:func:`cnn`; PyTorch's random
  initialisation, speed only), on 1 000 images (100 under ``--benchmark-disable``, where
  nothing is timed) and on one image; the lookup tables are fitted on patches of
  :data:`CNN_FIT_IMAGES` CIFAR-10 images (:func:`lutengine.datasets.load_cifar10`, test
  split) when the data are found, else of uniform random images.

Impls: ``ort`` (the ONNX file written with ``onnx.helper`` for the MLP, by
``torch.onnx.export`` for the CNN), ``torch`` (``torch.set_num_threads(1)``, no grad),
``lutengine-exact`` (the imported network: BLAS on one thread), ``lutengine-lut-C16`` /
``-C32`` (every weight layer replaced by :func:`lutengine.nn.replace_layers` with
``finetune=False``: the speed of the runtime, not an accuracy result; the LUT Linear layers
with ReLU between them run as one fused kernel). BLAS and Numba are pinned to one thread
(``pin_threads``).

Every result is checked after timing: onnxruntime, PyTorch and the exact lutengine network
agree to 1e-4 of the largest output; a LUT network gives the bits it gave before the timing
(and on one row, those of the batch's first row), and the MLP's LUT predictions mostly
agree with the exact ones.
"""

import contextlib
import math
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lutengine import datasets, nn  # noqa: E402
from lutengine.experiments import mlp_runtime  # noqa: E402

#: the MLP: hidden widths, training (nn.MLP.train) rows and epochs, rows the LUT layers are
#: fitted on, timed rows
MLP_HIDDEN = (256, 256)
MLP_TRAINING = {"rows": 10_000, "epochs": 1}
MLP_FIT_ROWS = 3_000
MLP_ROWS = 10_000
MLP_NCODEBOOKS = (16, 32)
#: least fraction of test rows whose LUT prediction equals the exact one (measured on
#: MNIST, replace_layers without fine-tuning: 0.76 at C = 16, 0.87 at C = 32)
MLP_AGREEMENT = {16: 0.5, 32: 0.6}

#: the CNN: images the LUT layers are fitted on (their patches; speed only), timed images
#: (CNN_CHECK_ROWS under --benchmark-disable, where nothing is timed), codebooks
CNN_FIT_IMAGES = 128
CNN_ROWS = 1_000
CNN_CHECK_ROWS = 100
CNN_NCODEBOOKS = (16,)

#: largest difference between the exact runtimes, relative to the largest output
EXACT_RTOL = 1e-4


def cnn():
    """Conv(3→32, 3, p1)-ReLU-MaxPool2 → Conv(32→64)-ReLU-MaxPool2 →
    Conv(64→128)-ReLU-MaxPool2 → Flatten → Linear(2048, 128)-ReLU → Linear(128, 10),
    PyTorch's default initialisation (seeded), in eval mode."""
    from torch import nn as tnn

    torch.manual_seed(0)
    layers, width = [], 3
    for out in (32, 64, 128):
        layers += [tnn.Conv2d(width, out, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2)]
        width = out
    layers += [tnn.Flatten(), tnn.Linear(128 * 4 * 4, 128), tnn.ReLU(), tnn.Linear(128, 10)]
    return tnn.Sequential(*layers).eval()


@contextlib.contextmanager
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _max_relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-30))


class Model:
    """What a group times: the inputs (``X``: the batch, ``X1``: its first row), a forward
    per impl, each impl's output on X computed before any timing (``reference``), and
    checks of a timed output."""

    def __init__(self, name, X, forwards, luts, exact_reference):
        self.name, self.X, self.X1 = name, X, np.ascontiguousarray(X[:1])
        self.forwards, self.luts = forwards, luts
        self.exact_reference = exact_reference
        self.reference = {impl: np.asarray(forward(X)) for impl, forward in forwards.items()}

    def check(self, impl, Y, rows):
        Y = np.asarray(Y)
        assert Y.shape == (rows, self.exact_reference.shape[1])
        assert np.isfinite(Y).all()
        if impl in self.luts:
            np.testing.assert_array_equal(Y, self.reference[impl][:rows])
        else:
            assert _max_relative_error(Y, self.exact_reference[:rows]) <= EXACT_RTOL


def _ort_forward(path):
    session = mlp_runtime.ort_session(path)
    name = session.get_inputs()[0].name
    return lambda X: session.run(None, {name: X})[0]


def _torch_forward(module):
    def forward(X):
        with torch.no_grad():
            return module(torch.from_numpy(X)).numpy()

    return forward


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory):
    """The MLP's forwards on MLP_ROWS test rows (see the module docstring)."""
    Xtr, ytr, Xte, yte, _ = datasets.load_default()
    with threadpool_limits(limits=1):
        mlp = nn.MLP.train(Xtr[:MLP_TRAINING["rows"]], ytr[:MLP_TRAINING["rows"]],
                           list(MLP_HIDDEN), epochs=MLP_TRAINING["epochs"], progress=False)
        luts = {f"lutengine-lut-C{C}": nn.replace_layers(mlp, Xtr[:MLP_FIT_ROWS],
                                                         ytr[:MLP_FIT_ROWS], C, finetune=False,
                                                         progress=False)
                for C in MLP_NCODEBOOKS}
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(mlp_runtime.onnx_model(mlp.layers), str(path))
    X = np.ascontiguousarray(np.resize(Xte, (MLP_ROWS, Xte.shape[1])))
    forwards = {"ort": _ort_forward(path),
                "torch": _torch_forward(mlp_runtime.torch_mlp(mlp.layers)),
                "lutengine-exact": nn.from_onnx(path).forward,
                **{impl: net.forward for impl, net in luts.items()}}
    model = Model("mlp", X, forwards, luts, mlp.forward(X))
    exact_predictions = np.argmax(model.exact_reference, axis=1)
    for C in MLP_NCODEBOOKS:
        impl = f"lutengine-lut-C{C}"
        agreement = np.mean(np.argmax(model.reference[impl], axis=1) == exact_predictions)
        assert agreement >= MLP_AGREEMENT[C], (impl, agreement)
    return model


def _cnn_images(n_fit, n_rows):
    """(images to fit on, their labels, timed images): CIFAR-10's test split when found,
    else uniform random images (random labels)."""
    load = getattr(datasets, "load_cifar10", None)
    if load is not None and datasets.find_dataset_dir("cifar10") is not None:
        X, y = load("test")
        X_time = X[:n_rows] if len(X) >= n_rows else np.resize(X, (n_rows, *X.shape[1:]))
        return X[-n_fit:], y[-n_fit:], np.ascontiguousarray(X_time)
    rng = np.random.default_rng(0)
    images = rng.random((n_fit + n_rows, 3, 32, 32), dtype=np.float32)
    return images[:n_fit], rng.integers(0, 10, n_fit), images[n_fit:]


@pytest.fixture(scope="module")
def cnn_model(request, tmp_path_factory):
    """The CNN's forwards on CNN_ROWS images (see the module docstring)."""
    disabled = request.config.getoption("benchmark_disable")
    X_fit, y_fit, X = _cnn_images(CNN_FIT_IMAGES, CNN_CHECK_ROWS if disabled else CNN_ROWS)
    module = cnn()
    exact = nn.from_torch(module, X[:8])
    with threadpool_limits(limits=1):
        luts = {f"lutengine-lut-C{C}": nn.replace_layers(exact, X_fit, y_fit, C, finetune=False,
                                                         progress=False)
                for C in CNN_NCODEBOOKS}
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter (no onnxscript needed)
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(X[:2]),), str(path), dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    forwards = {"ort": _ort_forward(path), "torch": _torch_forward(module),
                "lutengine-exact": exact.forward,
                **{impl: net.forward for impl, net in luts.items()}}
    with torch.no_grad():
        reference = np.concatenate([module(torch.from_numpy(X[i:i + 250])).numpy()
                                    for i in range(0, len(X), 250)])
    return Model("cnn", X, forwards, luts, reference)


MLP_IMPLS = ("ort", "torch", "lutengine-exact",
             *(f"lutengine-lut-C{C}" for C in MLP_NCODEBOOKS))
CNN_IMPLS = ("ort", "torch", "lutengine-exact",
             *(f"lutengine-lut-C{C}" for C in CNN_NCODEBOOKS))


def _bench(benchmark, pin_threads, model, impl, batch):
    X = model.X if batch == "all" else model.X1
    benchmark.group = f"network|{model.name}|rows={len(X)}"
    benchmark.extra_info.update(impl=impl, model=model.name, rows=len(X), threads=1,
                                ncodebooks=int(impl.rsplit("C", 1)[1]) if impl in model.luts
                                else None)
    forward = model.forwards[impl]
    pin_threads(1)
    with _one_torch_thread():
        Y = benchmark(forward, X)
    model.check(impl, Y, len(X))


@pytest.mark.parametrize("batch", ["all", "one"])
@pytest.mark.parametrize("impl", MLP_IMPLS)
def test_mlp_forward(benchmark, pin_threads, mlp_model, impl, batch):
    _bench(benchmark, pin_threads, mlp_model, impl, batch)


@pytest.mark.parametrize("batch", ["all", "one"])
@pytest.mark.parametrize("impl", CNN_IMPLS)
def test_cnn_forward(benchmark, pin_threads, cnn_model, impl, batch):
    _bench(benchmark, pin_threads, cnn_model, impl, batch)


def test_cnn_layers_are_all_replaced(cnn_model):
    """Every weight layer of the LUT CNN is a LutMatmul (C = min(16, its inputs))."""
    for impl in cnn_model.luts:
        net = cnn_model.luts[impl]
        assert all(type(layer).__name__ == "LutMatmul" for layer in net.layers)
        counts = [layer.split_dims_.shape[0] for layer in net.layers]
        inputs = [3 * 9, 32 * 9, 64 * 9, 2048, 128]
        assert counts == [min(int(impl.rsplit("C", 1)[1]), d) for d in inputs]
        assert math.prod(net.input_shape) == 3 * 32 * 32
