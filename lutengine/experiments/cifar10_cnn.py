"""A small CNN on CIFAR-10 with every convolution and linear layer on lookup tables.

A PyTorch CNN (:func:`build_cnn`, :data:`ARCHITECTURES`) is trained on CIFAR-10
(:func:`lutengine.datasets.load_cifar10`; random crops of the 4-pixel padded image and
horizontal flips, SGD with Nesterov momentum and the one-cycle learning rate), imported with
:func:`lutengine.nn.from_torch` (BatchNorm folded) and checked against the module. For each
number of codebooks C, every weight layer is replaced (a convolution by a
:class:`~lutengine.LutMatmul` on its im2col patches, as MADDNESS on Caltech-101 patches,
Blalock & Guttag 2021, §5.4); the first convolution has only 3·3·3 = 27 patch features, so
each layer gets ``min(C, its input features)`` codebooks. The rows are

* ``torch``, ``onnxruntime``, ``lutengine exact``: the trained network (the ONNX file is
  ``torch.onnx.export``'s of the module; lutengine's is the imported :class:`Network`);
* ``replace_layers``: MADDNESS layers fitted incrementally (:func:`lutengine.nn.replace_layers`);
* ``learned``: lookup-table layers trained end to end (:func:`lutengine.nn.learn_luts`);

each with its test accuracy, its throughput on ``timing_rows`` test images in one call on one
thread (timed alternately with onnxruntime on the same batch: ``speedup_vs_ort``) and its
latency on one image (best of ``batch1_calls`` calls).

PyTorch and onnxruntime are imported only when :func:`run` runs (``lutengine[train]`` and
onnxruntime, in the ``test`` extra); the networks it builds run without them.
"""

import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import datasets, nn
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "cifar10_cnn"

#: CNN shapes (:func:`build_cnn`): conv widths (3x3, padding 1, BatchNorm, ReLU, 2x2 max-pool
#: each), then Flatten, Linear(hidden), ReLU, Linear(10). "tiny" is for tests.
ARCHITECTURES = {"small": {"channels": (32, 64, 128), "hidden": 128},
                 "tiny": {"channels": (4, 8), "hidden": 16}}

#: training of the CNN (:func:`train_cnn`): SGD (Nesterov) with the one-cycle schedule,
#: augmentation by random crops of the zero-padded image and horizontal flips
TRAINING = {"batch_size": 128, "max_lr": 0.1, "pct_start": 0.25, "momentum": 0.9,
            "weight_decay": 5e-4, "crop_padding": 4, "flip": True, "threads": 2}

#: epochs of the CNN's training (about 90 s each on 2 idle cores of an AMD EPYC; test
#: accuracy 0.77 after 5)
EPOCHS = 6

#: numbers of codebooks (per layer at most its input features)
NCODEBOOKS = (8, 16, 32, 64)

#: training images the lookup-table layers are fitted on (replace_layers; each fit and
#: fine-tuning pass runs the partly replaced network over all of them, and each layer is
#: fitted on at most nn.FIT_ROWS of their rows or patches, drawn uniformly)
FIT_ROWS = 5_000

#: learn_luts on a CNN is slow (on 2 cores, with 5 000 images and its default 20 000
#: calibration images: 8 minutes converting the five layers, then 5 minutes per epoch), so it
#: runs at these C (None: every C), on LUT_ROWS training images, for LUT_EPOCHS epochs, each
#: layer fitted on (and its spreads measured on) patches of LUT_CALIBRATION_ROWS images
LEARNED_NCODEBOOKS = None
LUT_ROWS = 2_000
LUT_EPOCHS = 1
LUT_CALIBRATION_ROWS = 1_000
#: C of the layer ablation: replace_layers on one weight layer at a time, the others exact
ABLATION_NCODEBOOKS = 32

#: test images in the timed batch, timed calls per side, single-image calls
TIMING_ROWS = 10_000
TIMING_REPEATS = 2
BATCH1_CALLS = 200

#: the two PyTorch ops of the CNN's weight layers and how many inputs each multiplies
_WEIGHT_LAYERS = ("Conv2d", "Linear")

PLOTS = {"accuracy": ("ncodebooks", "accuracy", 2),
         "speed": ("speedup_vs_ort", "relative_accuracy", 2)}


def build_cnn(channels=(32, 64, 128), hidden=128, n_classes=10, image_size=32):
    """The PyTorch CNN: for each width in ``channels`` Conv2d(3x3, padding 1, no bias) →
    BatchNorm2d → ReLU → MaxPool2d(2), then Flatten → Linear(hidden) → ReLU →
    Linear(n_classes), on (n, 3, image_size, image_size) inputs. Needs PyTorch."""
    from torch import nn as tnn

    layers, width, size = [], 3, image_size
    for out in channels:
        layers += [tnn.Conv2d(width, out, 3, padding=1, bias=False), tnn.BatchNorm2d(out),
                   tnn.ReLU(), tnn.MaxPool2d(2)]
        width, size = out, size // 2
    layers += [tnn.Flatten(), tnn.Linear(width * size * size, hidden), tnn.ReLU(),
               tnn.Linear(hidden, n_classes)]
    return tnn.Sequential(*layers)


def layer_inputs(model):
    """Input features of each Conv2d / Linear of ``model`` in order (a convolution's
    in_channels · kernel area): the most codebooks each weight layer can have."""
    return [m.in_channels * math.prod(m.kernel_size) if type(m).__name__ == "Conv2d"
            else m.in_features for m in model.modules() if type(m).__name__ in _WEIGHT_LAYERS]


def augment(X, rng, padding=4, flip=True):
    """Random crops of the zero-padded images (offsets uniform in 0..2·padding) and, with
    ``flip``, horizontal flips of half of them (on average), as a new float32 array."""
    n, channels, height, width = X.shape
    if padding:
        padded = np.pad(X, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        dy, dx = rng.integers(0, 2 * padding + 1, (2, n))
        X = padded[np.arange(n)[:, None, None, None], np.arange(channels)[None, :, None, None],
                   (dy[:, None, None, None] + np.arange(height)[:, None]),
                   (dx[:, None, None, None] + np.arange(width))]
    else:
        X = X.copy()
    if flip:
        flipped = rng.random(n) < 0.5
        X[flipped] = X[flipped, :, :, ::-1]
    return np.ascontiguousarray(X, dtype=np.float32)


def torch_logits(model, X, batch_size=1000):
    """``model``'s outputs on ``X`` (eval mode, no gradients) as float32 NumPy."""
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size])))
                               .numpy() for i in range(0, len(X), batch_size)])


def train_cnn(model, X, y, epochs, X_test=None, y_test=None, random_state=0, settings=None,
              progress=True):
    """Train ``model`` on (X, y) for ``epochs`` with :data:`TRAINING` (overridden by
    ``settings``), seeded by ``random_state`` (weights: torch; order and augmentation:
    NumPy). Returns ``model`` in eval mode and a log: ``train_seconds`` (the training steps
    only), ``epoch_seconds``, ``epoch_loss`` and, with a test set, ``epoch_test_accuracy``
    (measured after each epoch, outside the timed steps; it selects nothing)."""
    import torch

    s = {**TRAINING, **(settings or {})}
    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    batches = math.ceil(len(X) / s["batch_size"])
    optimizer = torch.optim.SGD(model.parameters(), lr=s["max_lr"], momentum=s["momentum"],
                                nesterov=True, weight_decay=s["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s["max_lr"],
                                                   total_steps=epochs * batches,
                                                   pct_start=s["pct_start"])
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    log = {"epoch_seconds": [], "epoch_loss": [], "epoch_test_accuracy": []}
    with _common.torch_threads(s["threads"]):
        for epoch in range(epochs):
            model.train()
            order = rng.permutation(len(X))
            total, start = 0.0, time.perf_counter()
            bar = tqdm(range(batches), desc=f"train CNN, epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False)
            for b in bar:
                rows = order[b * s["batch_size"]:(b + 1) * s["batch_size"]]
                inputs = torch.from_numpy(augment(X[rows], rng, s["crop_padding"], s["flip"]))
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(inputs), labels[rows])
                loss.backward()
                optimizer.step()
                schedule.step()
                value = loss.detach().item()
                total += value * len(rows)
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{value:.3f}")
            log["epoch_seconds"].append(time.perf_counter() - start)
            log["epoch_loss"].append(total / len(X))
            if X_test is not None:
                accuracy = _common.accuracy(torch_logits(model, X_test), y_test)
                log["epoch_test_accuracy"].append(accuracy)
                if progress:
                    tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {total / len(X):.4f}, test "
                               f"accuracy {accuracy:.4f}, {log['epoch_seconds'][-1]:.0f} s")
    log["train_seconds"] = float(sum(log["epoch_seconds"]))
    return model.eval(), log


def ort_session(model, example):
    """An onnxruntime session (one thread, CPU) on ``torch.onnx.export``'s file of
    ``model`` (batch dimension dynamic), written to a temporary folder and removed; returns
    the session and its input name."""
    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cnn.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter (no onnxscript needed)
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.from_numpy(example),), str(path),
                              dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def batch1_ms(fn, X, calls):
    """Best milliseconds of ``fn`` on each single image of ``X`` in turn (one thread: Numba,
    BLAS), over ``calls`` calls after an untimed one."""
    with _common.single_thread():
        fn(X[:1])
        return 1e3 * min(_common._seconds(lambda i=i: fn(X[i % len(X)][None]))
                         for i in range(calls))


def run(ncodebooks=NCODEBOOKS, epochs=EPOCHS, methods=("replace_layers", "learned"),
        architecture="small", fit_rows=FIT_ROWS, learned_ncodebooks=LEARNED_NCODEBOOKS,
        lut_rows=LUT_ROWS, lut_epochs=LUT_EPOCHS, lut_calibration_rows=LUT_CALIBRATION_ROWS,
        timing_rows=TIMING_ROWS, timing_repeats=TIMING_REPEATS, batch1_calls=BATCH1_CALLS,
        ablation_ncodebooks=ABLATION_NCODEBOOKS, max_train=None, max_test=None, random_state=0, progress=True, data_home=None):
    """Train the CNN, import it, replace its layers at each C, measure accuracy and speed.

    Parameters
    ----------
    ncodebooks : sequence of int
        Numbers of codebooks C; each weight layer gets ``min(C, its input features)``.
        The ``learned`` rows are computed at those of ``learned_ncodebooks`` only (all of
        them when None).
    epochs : int
        Epochs of the CNN's training (:func:`train_cnn`).
    methods : sequence of {"replace_layers", "learned"}
    architecture : name in :data:`ARCHITECTURES`
    fit_rows, lut_rows : int
        First training images :func:`lutengine.nn.replace_layers` fits on and
        :func:`lutengine.nn.learn_luts` trains on.
    learned_ncodebooks : sequence of int, optional
        See ``ncodebooks``.
    lut_epochs, lut_calibration_rows : int
        Epochs of :func:`lutengine.nn.learn_luts` and its ``calibration_rows`` setting.
    timing_rows, timing_repeats, batch1_calls : int
        Test images in the timed batch, timed calls per side (best kept), single-image calls.
    ablation_ncodebooks : int, optional
        C of the ``ablation`` rows: each weight layer replaced alone (the others exact), to
        show where the accuracy goes; None skips them.
    max_train, max_test : int, optional
        Use the first rows of each split only.
    random_state : int
        Seed of the CNN's initialisation, data order and augmentation, and of the layer
        replacements.
    progress : bool
    data_home : str or Path, optional
        Root searched first for ``cifar10/`` (see :func:`lutengine.datasets.load_cifar10`).

    Returns
    -------
    dict
        ``rows`` (``method, ncodebooks, accuracy, relative_accuracy, images_per_second,
        speedup_vs_ort, batch1_ms``, the timed milliseconds and the build seconds), the
        training log, the import check, the settings and the machine.
    """
    unknown = sorted(set(methods) - {"replace_layers", "learned"})
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: ['learned', 'replace_layers']")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; valid: {sorted(ARCHITECTURES)}")
    counts = [int(C) for C in ncodebooks]
    if not counts or min(counts) < 1:
        raise ValueError(f"ncodebooks must be positive integers, got {ncodebooks!r}")
    import onnxruntime
    import torch

    started = time.perf_counter()
    Xtr, ytr = datasets.load_cifar10("train", data_home)
    Xte, yte = datasets.load_cifar10("test", data_home)
    Xtr, ytr = Xtr[:max_train], ytr[:max_train]
    Xte, yte = Xte[:max_test], yte[:max_test]
    X_time = np.ascontiguousarray(Xte[:timing_rows])

    torch.manual_seed(random_state)
    model = build_cnn(**ARCHITECTURES[architecture])
    model, log = train_cnn(model, Xtr, ytr, epochs, Xte, yte, random_state, progress=progress)
    torch_scores = torch_logits(model, Xte)
    torch_accuracy = _common.accuracy(torch_scores, yte)

    net = nn.from_torch(model, Xtr[:64])
    net_scores = net.forward(Xte)
    exact_accuracy = _common.accuracy(net_scores, yte)  # net.score(Xte, yte), one forward
    inputs = layer_inputs(model)
    if len(inputs) != len(net.layers):
        raise RuntimeError(f"the CNN has {len(inputs)} weight layers, its import "
                           f"{len(net.layers)}")

    session, input_name = ort_session(model, Xtr[:2])
    ort_scores = session.run(None, {input_name: Xte[:1000]})[0]

    def ort_forward(X):
        return session.run(None, {input_name: X})[0]

    def torch_forward(X):
        with torch.no_grad():
            return model(torch.from_numpy(X))

    def timed(method, C, accuracy, forward, build_seconds, reference=ort_forward):
        """A row: ``forward`` on X_time timed alternately with onnxruntime, batch-1 latency."""
        if forward is reference:
            seconds = _common.best_seconds(lambda: forward(X_time), timing_repeats)
            times = {"ms": 1e3 * seconds, "reference_ms": 1e3 * seconds, "speedup": 1.0}
        else:
            times = _common.time_pair(lambda: forward(X_time), lambda: reference(X_time),
                                      timing_repeats)
        return {"method": method, "ncodebooks": C, "accuracy": accuracy,
                "relative_accuracy": accuracy / torch_accuracy,
                "images_per_second": len(X_time) / (times["ms"] / 1e3),
                "speedup_vs_ort": times["speedup"],
                "batch1_ms": batch1_ms(forward, X_time, batch1_calls),
                "forward_ms": times["ms"], "ort_ms": times["reference_ms"],
                "build_seconds": build_seconds}

    with _common.torch_threads(1):
        rows = [timed("onnxruntime", None, _common.accuracy(ort_forward(Xte), yte), ort_forward,
                      None),
                timed("torch", None, torch_accuracy, torch_forward, None),
                timed("lutengine exact", None, exact_accuracy, net.forward, None)]
    X_fit, y_fit = Xtr[:fit_rows], ytr[:fit_rows]
    X_lut, y_lut = Xtr[:lut_rows], ytr[:lut_rows]
    per_layer = {}
    for C in tqdm(counts, desc=NAME, disable=not progress):
        layer_counts = [min(C, D) for D in inputs]
        per_layer[C] = layer_counts
        for method in methods:
            if method == "learned" and learned_ncodebooks is not None \
                    and C not in learned_ncodebooks:
                continue
            start = time.perf_counter()
            if method == "replace_layers":
                replaced = nn.replace_layers(net, X_fit, y_fit, layer_counts,
                                             random_state=random_state, progress=progress)
            else:
                replaced = nn.learn_luts(net, X_lut, y_lut, layer_counts, epochs=lut_epochs,
                                         settings={"calibration_rows": lut_calibration_rows},
                                         random_state=random_state, progress=progress)
            seconds = time.perf_counter() - start
            with _common.torch_threads(1):
                rows.append(timed(method, C, replaced.score(Xte, yte), replaced.forward,
                                  seconds))
    ablation = []
    for i, D in enumerate(inputs if ablation_ncodebooks else []):
        alone = nn.replace_layers(net, X_fit, y_fit, min(ablation_ncodebooks, D), layers=[i],
                                  random_state=random_state, progress=False)
        accuracy = alone.score(Xte, yte)
        ablation.append({"layer": i, "layer_inputs": D,
                         "ncodebooks": min(ablation_ncodebooks, D), "accuracy": accuracy,
                         "relative_accuracy": accuracy / torch_accuracy})
    return {
        "dataset": "cifar10",
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "architecture": {"name": architecture, **ARCHITECTURES[architecture],
                         "layer_inputs": inputs,
                         "parameters": int(sum(p.numel() for p in model.parameters()))},
        "training": {**TRAINING, "epochs": epochs, "optimizer": "SGD (Nesterov), OneCycleLR",
                     **{k: log[k] for k in ("train_seconds", "epoch_seconds", "epoch_loss",
                                            "epoch_test_accuracy")}},
        "torch_accuracy": torch_accuracy,
        "exact_accuracy": exact_accuracy,
        "import_check": {
            "max_abs_diff_vs_torch": float(np.max(np.abs(net_scores - torch_scores))),
            "predictions_differing": int(np.sum(np.argmax(net_scores, 1)
                                                != np.argmax(torch_scores, 1))),
            "ort_max_abs_diff_vs_torch": float(np.max(np.abs(ort_scores
                                                             - torch_scores[:1000])))},
        "ncodebooks_per_layer": {str(C): v for C, v in per_layer.items()},
        "replace_layers": {"fit_rows": int(len(X_fit)),
                           "fit_rows_per_layer": nn.FIT_ROWS,
                           "finetune": nn.FINETUNE},
        "learn_luts": {"rows": int(len(X_lut)), "epochs": lut_epochs,
                       "calibration_rows": lut_calibration_rows,
                       "ncodebooks": "all" if learned_ncodebooks is None
                       else [int(C) for C in learned_ncodebooks]},
        "seeds": {"torch_init_order_augmentation": random_state,
                  "replace_layers": random_state, "learn_luts": random_state},
        "threads": 1,
        "timing": f"forward of {len(X_time)} test images in one call, best of "
                  f"{timing_repeats}, each method alternating with onnxruntime (1 intra-op "
                  f"and 1 inter-op thread); torch on 1 thread; batch1_ms: best of "
                  f"{batch1_calls} single-image calls",
        "total_seconds": time.perf_counter() - started,
        "machine": {**_common.machine_info(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__},
        "rows": rows,
        "ablation": ablation,
    }
