"""Every layer of an MNIST MLP replaced by lookup tables: the MNIST results of ITLUMM.

The paper's network (McCarter & Dronen 2022, §3.2, Table 1): 784→30→30→30→10, ReLU,
softmax. It is trained with :meth:`lutengine.nn.MLP.train`, then approximated three ways
for each method and number of codebooks C:

* ``per_layer``: one layer replaced by a :class:`~lutengine.LutMatmul`, the others exact
  (the sensitivity of each layer);
* ``all_layers``: every layer replaced incrementally by :func:`lutengine.nn.replace_layers`,
  with and without fine-tuning the exact layers after each replaced one. At C = 1 the
  first layer sorts every image into one of 16 groups, so the accuracy depends on the luck
  of the grouping: there the mean over ``seeds`` replacement seeds is reported;
* ``breakeven``: single-thread ``LutMatmul.predict`` against the BLAS product on each
  layer's real shape and 10 000 test rows.

Methods: ``maddness`` (contiguous subspaces, ridge tables) and ITLUMM's
``itlumm-{partition}-{objective}``: subspaces permuted by R² clustering or OPQ (or kept
contiguous, ITLUMM's "pq" partition), tables fitted through each layer's nonlinearity
(squared error through the ReLU; at the output the KL divergence of the softmax for
``kl``, the squared error for ``mse``).
"""

import time

import numpy as np
from tqdm import tqdm

from .. import nn
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "itlumm_mnist"

#: method -> (partition, lut_objective) of :func:`lutengine.nn.replace_layers`
METHODS = {"maddness": ("contiguous", "ridge"), "itlumm-r2-kl": ("r2", "kl"),
           "itlumm-opq-kl": ("opq", "kl"), "itlumm-r2-mse": ("r2", "mse"),
           "itlumm-contiguous-kl": ("contiguous", "kl")}

#: the paper's hidden layers
HIDDEN = (30, 30, 30)

#: the paper's all-layer accuracies (%, Table 1), by number of codebooks
PAPER_ALL_LAYERS = {1: 36.1, 2: 36.3, 4: 52.0, 8: 70.5, 16: 84.9}

#: plots for :func:`._common.write_results`
PLOTS = {"all_layers": ("ncodebooks", "accuracy", 2, "all_layers"),
         "per_layer": ("ncodebooks", "accuracy", 2, "per_layer"),
         "breakeven": ("ncodebooks", "speedup_vs_blas", 2, "breakeven")}


def run(dataset="mnist", ncodebooks=(1, 2, 4, 8, 16), methods=tuple(METHODS),
        hidden_sizes=HIDDEN,
        epochs=15, seeds=3, random_state=0, progress=True, data_home=None, max_train=None):
    """Train the network, then replace its layers with each method and C.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
    ncodebooks : sequence of int
        Numbers of codebooks C per replaced layer (each ≤ the narrowest layer input).
    methods : sequence of names in :data:`METHODS`
    hidden_sizes : sequence of int
        Hidden layer widths.
    epochs : int
        Training epochs of the network (Adam; fine-tuning uses :data:`lutengine.nn.FINETUNE`).
    seeds : int
        Replacement seeds averaged at C = 1 in ``all_layers``.
    random_state : int
        Seed of the training, of the OPQ partitions and of the fine-tuning.
    progress : bool
        Progress bars.
    data_home : str or Path, optional
        Root searched first for the IDX files (see :mod:`lutengine.datasets`).
    max_train : int, optional
        Train on the first ``max_train`` rows only.

    Returns
    -------
    dict
        ``dataset``, ``exact_accuracy``, ``per_layer`` (``layer, method, ncodebooks,
        accuracy``), ``all_layers`` (``method, finetune, ncodebooks, accuracy, seeds,
        seconds``), ``breakeven`` (``layer, shape, ncodebooks, predict_ms, blas_ms,
        speedup_vs_blas``), the paper's all-layer table, the settings and the machine.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {sorted(METHODS)}")
    if min(hidden_sizes) < max(ncodebooks):
        raise ValueError(f"ncodebooks must be <= the narrowest layer input {min(hidden_sizes)}, "
                         f"got {max(ncodebooks)}")
    started = time.perf_counter()
    Xtr, ytr, Xte, yte = _common.load_data(dataset, data_home, max_train)
    start = time.perf_counter()
    net = nn.MLP.train(Xtr, ytr, list(hidden_sizes), epochs=epochs, random_state=random_state,
                       progress=progress)
    train_seconds = time.perf_counter() - start
    exact = net.score(Xte, yte)

    def replaced(method, C, seed, **options):
        partition, objective = METHODS[method]
        return nn.replace_layers(net, Xtr, ytr, C, partition=partition,
                                 lut_objective=objective, random_state=seed, progress=False,
                                 **options)

    per_layer, breakeven = [], []
    jobs = [(m, C, i) for m in methods for C in ncodebooks for i in range(len(net.layers))]
    for method, C, layer in tqdm(jobs, desc=f"{NAME} per layer", disable=not progress):
        new = replaced(method, C, random_state, layers=[layer], finetune=False)
        per_layer.append({"layer": layer, "method": method, "ncodebooks": int(C),
                          "accuracy": new.score(Xte, yte)})
        if method == methods[0]:  # every method runs the same kernels on the same shape
            W = net.layers[layer].W
            received = net.forward(Xte, output=net.layer_nodes[layer].inputs[0])
            breakeven.append({"layer": layer, "shape": f"{W.shape[0]}x{W.shape[1]}",
                              "ncodebooks": int(C),
                              **_common.time_vs_blas(new.layers[layer], received, W)})

    all_layers = []
    jobs = [(m, C, f) for m in methods for C in ncodebooks for f in (False, True)]
    for method, C, finetune in tqdm(jobs, desc=f"{NAME} all layers", disable=not progress):
        start = time.perf_counter()
        tried = range(random_state, random_state + (seeds if C == 1 else 1))
        accs = [replaced(method, C, seed, finetune=finetune).score(Xte, yte) for seed in tried]
        all_layers.append({"method": method, "finetune": finetune, "ncodebooks": int(C),
                           "accuracy": float(np.mean(accs)), "seeds": accs,
                           "seconds": (time.perf_counter() - start) / len(accs)})
    return {
        "dataset": dataset,
        "exact_accuracy": exact,
        "network": "x".join(map(str, [Xtr.shape[1], *hidden_sizes, len(net.classes)])),
        "train_seconds": train_seconds,
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "training": {"epochs": epochs, "optimizer": "adam", "random_state": random_state},
        "finetune": nn.FINETUNE,
        "paper_all_layers_percent": PAPER_ALL_LAYERS,
        "threads": 1,
        "timing": f"best of {_common.TIMING_REPEATS}, predict and BLAS alternating",
        "total_seconds": time.perf_counter() - started,
        "machine": _common.machine_info(),
        "per_layer": per_layer,
        "all_layers": all_layers,
        "breakeven": breakeven,
    }
