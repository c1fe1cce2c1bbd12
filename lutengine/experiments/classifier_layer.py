"""Replacing the output layer of an MNIST classifier by an approximate product.

The setting of MADDNESS §5.3 (Blalock & Guttag 2021) on a 784→512→10 ReLU MLP: the
hidden activations H and the output weights W2 are fixed, and ``H @ W2 + b2`` is
approximated by :class:`~lutengine.LutMatmul` (MADDNESS, and ITLUMM's
``itlumm-{partition}-{objective}``: permuted subspaces and tables fitted through the
softmax, McCarter & Dronen 2022 §3.1), :class:`~lutengine.PQMatmul`, and ``learned``
(:func:`lutengine.nn.learn_luts`: trees and tables trained end to end on the labels with
distillation from the exact layer) for several numbers of codebooks C. Reported per (method, C): test accuracy, accuracy
relative to the exact network, the NMSE of the logits, fit time, and single-thread
predict time against the BLAS product measured in the same process.
"""

import time

import numpy as np
from tqdm import tqdm

from .. import nn
from ..matmul import LutMatmul, PQMatmul
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "classifier_layer"

METHODS = {
    "maddness": lambda C, random_state: LutMatmul(C, random_state=random_state, progress=False),
    "pq": lambda C, random_state: PQMatmul(C, random_state=random_state, progress=False),
    **{f"itlumm-{partition}-{objective}":
       lambda C, random_state, partition=partition, objective=objective: LutMatmul(
           C, partition=partition, lut_objective=objective, activation="softmax",
           random_state=random_state, progress=False)
       for partition in ("contiguous", "opq", "r2") for objective in ("mse", "kl")},
    "learned": None,  # nn.learn_luts on the layer alone, trained on the labels (see run)
}


def run(dataset="mnist", ncodebooks=(2, 4, 8, 16, 32, 64), methods=tuple(METHODS),
        hidden=512, random_state=0, max_train=None, progress=True, data_home=None):
    """Train the MLP, then approximate its output layer with each method and C.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
    ncodebooks : sequence of int
        Numbers of codebooks C to try (each ≤ ``hidden``).
    methods : sequence of names in :data:`METHODS`
    hidden : int
        Width of the hidden layer.
    random_state : int
        Seed of the MLP and of PQ's k-means.
    max_train : int, optional
        Use only the first ``max_train`` training rows (MLP and approximations).
    progress : bool
        Show a progress bar over (method, C).
    data_home : str or Path, optional
        Root searched first for the IDX files (see :mod:`lutengine.datasets`).

    Returns
    -------
    dict
        ``dataset``, ``exact_accuracy``, ``mlp_train_seconds``, ``rows`` (one dict per
        method and C with ``method, ncodebooks, accuracy, relative_accuracy, nmse,
        fit_seconds, predict_ms, blas_ms, speedup_vs_blas``), ``threads`` (1, the timing
        setting), and the run's settings and machine.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {sorted(METHODS)}")
    started = time.perf_counter()
    Xtr, ytr, Xte, yte = _common.load_data(dataset, data_home, max_train)
    mlp, mlp_seconds = _common.train_mlp(Xtr, ytr, hidden, random_state)
    W1, b1, W2, b2 = _common.mlp_layers(mlp)
    H_train = _common.relu(Xtr @ W1 + b1)
    H_test64 = np.maximum(Xte @ W1 + b1, 0)
    H_test = H_test64.astype(np.float32)
    Y = H_test64 @ W2 + b2
    exact = _common.accuracy(Y, yte)

    rows = []
    jobs = [(m, C) for m in methods for C in ncodebooks]
    for method, C in tqdm(jobs, desc=f"{NAME} ({dataset})", disable=not progress):
        start = time.perf_counter()
        if method == "learned":  # the output layer as a one-layer network on H
            est = nn.learn_luts(nn.MLP([nn.Dense(W2, b2)]), H_train, ytr, C,
                                random_state=random_state, progress=False).layers[0]
        else:
            est = METHODS[method](C, random_state).fit(H_train, W2, bias=b2)
        fit_seconds = time.perf_counter() - start
        Y_hat = est.predict(H_test)
        acc = _common.accuracy(Y_hat, yte)
        rows.append({"method": method, "ncodebooks": int(C), "accuracy": acc,
                     "relative_accuracy": acc / exact, "nmse": _common.nmse(Y_hat, Y),
                     "fit_seconds": fit_seconds, **_common.time_vs_blas(est, H_test, W2)})
    return {
        "dataset": dataset,
        "exact_accuracy": exact,
        "mlp_train_seconds": mlp_seconds,
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "hidden": int(hidden),
        "random_state": random_state,
        "threads": 1,
        "timing": f"best of {_common.TIMING_REPEATS}, predict and BLAS alternating",
        "total_seconds": time.perf_counter() - started,
        "mlp": {**_common.MLP_SETTINGS, "hidden_layer_sizes": [int(hidden)],
                "activation": "relu"},
        "machine": _common.machine_info(),
        "rows": rows,
    }
