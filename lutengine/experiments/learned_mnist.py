"""Whole networks on lookup tables, learned end to end (:func:`lutengine.nn.learn_luts`).

Two MLPs are trained with :meth:`lutengine.nn.MLP.train` and every layer is replaced:
ITLUMM's 784→30→30→30→10 (McCarter & Dronen 2022, §3.2; ``itlumm``) and a wider
784→256→256→10 (``wide``). For
each number of codebooks C the rows are

* ``replace_layers``: today's post-hoc route, MADDNESS layers fitted incrementally with
  the exact layers after each one fine-tuned (ITLUMM §2.3, :func:`lutengine.nn.replace_layers`);
* ``learned``: :func:`lutengine.nn.learn_luts` (thresholds, tables and bias trained jointly
  with distillation), mean and spread over ``seeds`` seeds;

each with the single-thread speed of the whole forward (10 000 test rows) against the
exact NumPy forward. The ``ablation`` table trains one C per net with one part switched
off at a time (tables frozen, thresholds frozen, no distillation, the progressive
schedule, no training at all).
"""

import time

import numpy as np
from tqdm import tqdm

from .. import nn
from . import _common

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "learned_mnist"

#: network -> (hidden widths, numbers of codebooks, C of the ablation)
NETS = {"itlumm": ((30, 30, 30), (1, 2, 4, 8, 16), 8),
        "wide": ((256, 256), (8, 16, 32, 64), 16)}

#: ablation name -> options of :func:`lutengine.nn.learn_luts`
ABLATIONS = {"no training (fitted MADDNESS)": {"epochs": 0},
             "tables only": {"learn_thresholds": False},
             "thresholds only": {"learn_tables": False},
             "no distillation": {"distill": False},
             "progressive schedule": {"schedule": "progressive"},
             "all (learned)": {}}

#: rows of the test split the forward passes are timed on
TIMING_ROWS = 10_000

PLOTS = {"accuracy": ("ncodebooks", "accuracy", 2, "rows"),
         "speed": ("speedup_vs_exact", "accuracy", 2, "rows")}


def run(dataset="mnist", networks=tuple(NETS), ncodebooks=None, seeds=3, epochs=None,
        ablation=True, random_state=0, max_train=None, progress=True, data_home=None):
    """Train each network, replace every layer by each route and C, time the forwards.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
    networks : sequence of names in :data:`NETS`
    ncodebooks : sequence of int, optional
        Numbers of codebooks for every network (default: each network's in :data:`NETS`).
    seeds : int
        Seeds of the learned rows (mean and standard deviation reported).
    epochs : int, optional
        Epochs of :func:`lutengine.nn.learn_luts` (its default when None).
    ablation : bool
        Also run the :data:`ABLATIONS` at each network's ablation C (one seed).
    random_state : int
        Seed of the exact networks, of ``replace_layers`` and of the first learned seed.
    max_train : int, optional
        Train on the first ``max_train`` rows only.
    progress : bool
        Progress bars.
    data_home : str or Path, optional
        Root searched first for the IDX files (see :mod:`lutengine.datasets`).

    Returns
    -------
    dict
        ``nets`` (``network`` as "784x30x30x30x10", ``exact_accuracy, exact_forward_ms, train_seconds``), ``rows``
        (``network, method, ncodebooks, accuracy, accuracy_std, seeds, relative_accuracy,
        forward_ms, speedup_vs_exact, train_seconds``), ``ablation`` (the same fields,
        one seed), the settings and the machine.
    """
    unknown = sorted(set(networks) - set(NETS))
    if unknown:
        raise ValueError(f"unknown networks {unknown}; valid: {sorted(NETS)}")
    from ..learned import SETTINGS as learned_settings  # torch: only when this runs

    started = time.perf_counter()
    Xtr, ytr, Xte, yte = _common.load_data(dataset, data_home, max_train)
    X_time = np.ascontiguousarray(Xte[:TIMING_ROWS])
    nets, rows, ablations = [], [], []
    for name in networks:
        hidden, counts, ablation_C = NETS[name]
        counts = counts if ncodebooks is None else ncodebooks
        start = time.perf_counter()
        exact = nn.MLP.train(Xtr, ytr, list(hidden), random_state=random_state,
                             progress=progress)
        exact_seconds = time.perf_counter() - start
        exact_accuracy = exact.score(Xte, yte)
        exact_ms = 1e3 * _common.best_seconds(lambda: exact.forward(X_time))
        name = "x".join(map(str, [Xtr.shape[1], *hidden, len(exact.classes)]))
        nets.append({"network": name, "exact_accuracy": exact_accuracy,
                     "exact_forward_ms": exact_ms, "train_seconds": exact_seconds})

        def row(method, C, replaced, seconds):
            accs = [r.score(Xte, yte) for r in replaced]
            forward = _common.time_pair(lambda: replaced[0].forward(X_time),
                                        lambda: exact.forward(X_time))
            return {"network": name, "method": method, "ncodebooks": int(C),
                    "accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
                    "seeds": accs, "relative_accuracy": float(np.mean(accs)) / exact_accuracy,
                    "forward_ms": forward["ms"], "speedup_vs_exact": forward["speedup"],
                    "train_seconds": float(np.mean(seconds))}

        def learned(C, seed, **options):
            start = time.perf_counter()
            result = nn.learn_luts(exact, Xtr, ytr, C, random_state=seed, progress=False,
                                   **{"epochs": epochs, **options})
            return result, time.perf_counter() - start

        rows.append({"network": name, "method": "exact", "ncodebooks": None,
                     "accuracy": exact_accuracy, "accuracy_std": 0.0, "seeds": [exact_accuracy],
                     "relative_accuracy": 1.0, "forward_ms": exact_ms, "speedup_vs_exact": 1.0,
                     "train_seconds": exact_seconds})
        for C in tqdm(counts, desc=f"{NAME} {name}", disable=not progress):
            start = time.perf_counter()
            posthoc = nn.replace_layers(exact, Xtr, ytr, C, random_state=random_state,
                                        progress=False)
            rows.append(row("replace_layers", C, [posthoc], [time.perf_counter() - start]))
            runs = [learned(C, seed) for seed in range(random_state, random_state + seeds)]
            rows.append(row("learned", C, [r for r, _ in runs], [s for _, s in runs]))
        if ablation:
            for label, options in tqdm(ABLATIONS.items(), desc=f"{NAME} ablation {name}",
                                       disable=not progress):
                result, seconds = learned(ablation_C, random_state, **options)
                ablations.append({**row(label, ablation_C, [result], [seconds]),
                                  "options": options})
    return {
        "dataset": dataset,
        "n_train": int(len(Xtr)),
        "n_test": int(len(Xte)),
        "seeds": seeds,
        "learn_luts": {"epochs": epochs or "default", **learned_settings},
        "finetune": nn.FINETUNE,
        "threads": 1,
        "timing": f"whole forward of {len(X_time)} test rows, best of "
                  f"{_common.TIMING_REPEATS}, LUT and exact alternating",
        "total_seconds": time.perf_counter() - started,
        "machine": _common.machine_info(),
        "nets": nets,
        "rows": rows,
        "ablation": ablations,
    }
