"""Top-k sparse activation of the first layer of an MNIST MLP: Table 1 of the MIPS paper.

A 784→H→10 ReLU/softmax network (H = 784 as in the paper, Medan 2021, Table 1) is trained,
then its first layer is approximated per test image x: only the hidden units with the k
largest and the k smallest pre-activations W1ᵀx + b1 are computed exactly, the others
get their bias b1 (then the ReLU and the exact output layer). The units are found by
exact search (``oracle``, np.argpartition) or by :class:`lutengine.TopKLinear` with
H2-ALSH (``h2alsh``: top-k ∪ bottom-k; ``h2alsh-top``: top-k only) or with the 4-bit PQ
fast scan (``fastscan``: top-k ∪ bottom-k, default codebooks, ``FASTSCAN_RERANK`` · k
candidates re-ranked exactly, so that the search stays approximate on 784 rows).

Two networks: ``plain`` (cross-entropy only) and ``sparse``, trained with an L1 penalty on
the hidden activations, which concentrates each image's response on few hidden units so
that the top-k keep the prediction. L1 was chosen over k-winners-take-all training by
measurement on full MNIST (H = 784, 15 epochs, exact top-k ∪ bottom-k, accuracy at
k = 10 / 20 / 40 / 80): L1 = 3e-4 gave full accuracy 0.983 and 0.974 / 0.978 / 0.981 /
0.981; L1 = 1e-3 gave 0.980 and 0.974 / 0.976 / 0.976 / 0.977; kWTA training with k = 20
gave full accuracy 0.978 (training and inference differ) and 0.964 / 0.979 / 0.979 /
0.978, and trains ~3x slower (a partial sort per batch). The plain network: 0.983 and
0.824 / 0.930 / 0.971 / 0.980.
"""

import time

import numpy as np
from tqdm import tqdm

import lutengine

from .. import nn
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "mips_mnist"

#: the networks: ``plain`` (cross-entropy only), ``sparse`` (plus the L1 penalty)
NETWORKS = ("plain", "sparse")

#: the search methods: name -> whether the bottom-k are computed too
METHODS = {"oracle": True, "h2alsh": True, "h2alsh-top": False, "fastscan": True}

#: fastscan: candidates re-ranked exactly per search, as a multiple of k
FASTSCAN_RERANK = 2

#: training budget of both networks (Adam, fixed epochs, no early stop)
TRAIN_SETTINGS = {"epochs": 15, "batch_size": 128, "learning_rate": 1e-3}

#: default L1 weight of the sparse network's hidden activations
L1 = 3e-4

#: plots for :func:`._common.write_results`: accuracy against active hidden units
PLOTS = {"accuracy": ("active_neurons", "accuracy", 2)}


def oracle_active(Z, k, bottom):
    """Mask of the exact top-k (and bottom-k when ``bottom``) entries of each row of ``Z``."""
    mask = nn.kwta_mask(Z, k)
    if bottom:
        mask |= nn.kwta_mask(-Z, k)
    return mask


def layer_active(W1, b1, X, k, bottom, random_state, method):
    """First-layer pre-activations and active mask from :class:`lutengine.TopKLinear`
    with the index ``method`` ("h2alsh" or "fastscan")."""
    options = {"rerank": FASTSCAN_RERANK * k} if method == "fastscan" else {}
    layer = lutengine.TopKLinear(np.ascontiguousarray(W1.T), b1, k, method=method,
                                 bottom=bottom, random_state=random_state, **options)
    return layer(X, return_active=True)


def _scores(Z, W2, b2):
    return np.maximum(Z, 0) @ W2 + b2


def run(dataset="mnist", ks=(10, 20, 40, 80, 784), networks=NETWORKS, methods=tuple(METHODS),
        hidden=784, l1=L1, epochs=TRAIN_SETTINGS["epochs"], random_state=0, progress=True,
        data_home=None, max_train=None):
    """Train each network, then approximate its first layer with each method and k.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
    ks : sequence of int
        Numbers k of top (and bottom) hidden units computed exactly; capped at ``hidden``.
    networks : sequence of {"plain", "sparse"}
    methods : sequence of {"oracle", "h2alsh", "h2alsh-top", "fastscan"}
    hidden : int
        Hidden units H (784 in the paper).
    l1 : float
        L1 weight on the hidden activations of the ``sparse`` network.
    epochs : int
        Training epochs of each network.
    random_state : int
        Seed of the training and of the hash functions.
    progress : bool
        Progress bars over training epochs and (network, method, k).
    data_home : str or Path, optional
        Root searched first for the IDX files (see :mod:`lutengine.datasets`).
    max_train : int, optional
        Train on the first ``max_train`` rows only.

    Returns
    -------
    dict
        ``dataset``, ``full_accuracy`` (per network), ``train_seconds`` (per network),
        ``rows`` (per network, method and k: ``network, method, k, active_neurons,
        active_ratio, accuracy, relative_accuracy, recall, search_seconds``), the
        training settings and the machine.
    """
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown methods or networks {unknown}; valid: "
                         f"{sorted(METHODS)} and {list(NETWORKS)}")
    started = time.perf_counter()
    Xtr, ytr, Xte, yte = _common.load_data(dataset, data_home, max_train)
    settings = {**TRAIN_SETTINGS, "epochs": epochs}
    full, seconds, rows = {}, {}, []
    for network in networks:
        start = time.perf_counter()
        net = nn.MLP.train(Xtr, ytr, [hidden], l1=l1 if network == "sparse" else 0.0,
                           random_state=random_state, progress=progress, **settings)
        (W1, b1), (W2, b2) = ((layer.W, layer.b) for layer in net.layers)
        seconds[network] = time.perf_counter() - start
        Z = Xte @ W1 + b1
        full[network] = _common.accuracy(_scores(Z, W2, b2), yte)
        jobs = [(m, k) for m in methods for k in ks]
        for method, k in tqdm(jobs, desc=f"{NAME} {network}", disable=not progress):
            k = min(int(k), hidden)
            bottom = METHODS[method]
            start = time.perf_counter()
            if method == "oracle":
                active = oracle_active(Z, k, bottom)
                Z_hat = np.where(active, Z, b1)
            else:
                Z_hat, active = layer_active(W1, b1, Xte, k, bottom, random_state,
                                             method.removesuffix("-top"))
            search_seconds = time.perf_counter() - start
            found = (active & nn.kwta_mask(Z, k)).sum(axis=1)
            acc = _common.accuracy(_scores(Z_hat, W2, b2), yte)
            nominal = min(2 * k if bottom else k, hidden)
            rows.append({"network": network, "method": method, "k": k,
                         "active_neurons": nominal, "active_ratio": nominal / hidden,
                         "accuracy": acc, "relative_accuracy": acc / full[network],
                         "recall": float(np.mean(found / k)),
                         "search_seconds": search_seconds})
    return {
        "dataset": dataset,
        "full_accuracy": full,
        "train_seconds": seconds,
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "hidden": int(hidden),
        "sparse_training": {"l1_hidden_activations": l1},
        "training": {**settings, "optimizer": "adam", "init": "he-uniform",
                     "activation": "relu", "random_state": random_state},
        "total_seconds": time.perf_counter() - started,
        "machine": _common.machine_info(),
        "rows": rows,
    }
