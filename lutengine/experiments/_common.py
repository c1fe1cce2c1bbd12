"""Helpers shared by the experiments and the command line: data, the reference MLP,
single-thread timing against BLAS, and writing results (JSON, Markdown, PNG) stamped with
the command and the commit that wrote them."""

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from .. import datasets

#: datasets the experiments accept; "digits" is scikit-learn's 8x8 set (tiny runs, tests)
DATASETS = ("mnist", "fashion", "digits")

#: MLPClassifier settings of the reference networks (adam, fixed epoch budget, no early stop)
MLP_SETTINGS = {"solver": "adam", "batch_size": 256, "learning_rate_init": 1e-3,
                "max_iter": 20, "early_stopping": False}


def load_data(name, data_home=None, max_train=None):
    """Train and test splits of ``name`` as float32 in [0, 1] and int64 labels.

    ``max_train`` keeps the first rows of the training split only.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {list(DATASETS)}")
    if name == "digits":
        Xtr, ytr, Xte, yte = datasets.load_digits()
    else:
        Xtr, ytr = datasets.load_dataset(name, "train", data_home)
        Xte, yte = datasets.load_dataset(name, "test", data_home)
    if max_train is not None:
        Xtr, ytr = Xtr[:max_train], ytr[:max_train]
    return Xtr, ytr, Xte, yte


def train_mlp(X, y, hidden, random_state, **settings):
    """Fit a one-hidden-layer ReLU ``MLPClassifier`` with :data:`MLP_SETTINGS`.

    A fixed epoch budget is the intent, so the ConvergenceWarning is silenced. BLAS runs
    on one thread: the mini-batch products are small, and threaded BLAS on a busy 2-core
    machine was measured 4-20x slower. Returns the classifier and the training seconds.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu",
                        random_state=random_state, **{**MLP_SETTINGS, **settings})
    start = time.perf_counter()
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, y)
    return mlp, time.perf_counter() - start


def mlp_layers(mlp):
    """The two affine layers of a one-hidden-layer MLP as float64 (W1, b1, W2, b2)."""
    (W1, W2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    return tuple(np.asarray(a, dtype=np.float64) for a in (W1, b1, W2, b2))


def relu(Z):
    """max(Z, 0) as C-contiguous float32 (the layout the estimators read without a copy)."""
    return np.ascontiguousarray(np.maximum(Z, 0), dtype=np.float32)


def accuracy(scores, y):
    """Fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(scores, axis=1) == y))


def nmse(Y_hat, Y):
    """mean((Ŷ − Y)²) / var(Y) over all entries."""
    Y = np.asarray(Y, dtype=np.float64)
    return float(np.mean((np.asarray(Y_hat, dtype=np.float64) - Y) ** 2) / np.var(Y))


@contextlib.contextmanager
def single_thread():
    """Pin BLAS (threadpoolctl) and Numba to one thread; restore both afterwards."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(previous)


@contextlib.contextmanager
def torch_threads(n):
    """Run PyTorch's intra-op pool on ``n`` threads (PyTorch imported here, when called);
    restore the previous count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: timed calls per side in :func:`time_vs_blas`
TIMING_REPEATS = 7


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pair(fn, reference, repeats=TIMING_REPEATS):
    """Single-thread time of ``fn()`` against ``reference()``, same process.

    After one untimed call of each, the two are timed alternately ``repeats`` times (so
    both see the same machine load) and the best time of each is kept. Returns ``ms``,
    ``reference_ms`` and ``speedup`` (reference time / fn time).
    """
    with single_thread():
        fn()
        reference()
        times = [(_seconds(fn), _seconds(reference)) for _ in range(repeats)]
    best, best_reference = np.min(times, axis=0)
    return {"ms": 1e3 * best, "reference_ms": 1e3 * best_reference,
            "speedup": best_reference / best}


def best_seconds(fn, repeats=TIMING_REPEATS):
    """Best single-thread time of ``fn()`` over ``repeats`` calls after an untimed one."""
    with single_thread():
        fn()
        return min(_seconds(fn) for _ in range(repeats))


def time_vs_blas(est, A, B, repeats=TIMING_REPEATS):
    """:func:`time_pair` of ``est.predict(A)`` against ``A @ B`` (float32 BLAS): returns
    ``predict_ms``, ``blas_ms`` and ``speedup_vs_blas`` (BLAS time / predict time)."""
    A = np.ascontiguousarray(A, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    timed = time_pair(lambda: est.predict(A), lambda: A @ B, repeats)
    return {"predict_ms": timed["ms"], "blas_ms": timed["reference_ms"],
            "speedup_vs_blas": timed["speedup"]}


def machine_info():
    """What the timings were measured on: CPU, BLAS library, versions."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").open()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    blas = sorted({f"{p['internal_api']} {p['version']}" for p in threadpool_info()
                   if p["user_api"] == "blas"})
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "blas": blas,
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__}


# -- writing results -------------------------------------------------------------------------

#: the fields :func:`write_results` adds to every result
STAMP_FIELDS = ("command", "commit")

#: default plots: file suffix -> (x field, y field, x-axis log base[, table]); the table is
#: the list of row dicts plotted, ``"rows"`` unless named
PLOTS = {"accuracy": ("ncodebooks", "relative_accuracy", 2),
         "speed": ("speedup_vs_blas", "relative_accuracy", 10)}

_LABELS = {"ncodebooks": "codebooks C", "relative_accuracy": "accuracy / exact accuracy",
           "speedup_vs_blas": "speed-up over BLAS (1 thread)",
           "speedup_vs_brute": "speed-up over brute force (BLAS + argpartition, 1 thread)",
           "recall_at_k": "recall@k",
           "speedup_vs_exact": "speed-up of the whole forward over the exact one (1 thread)",
           "speedup_vs_ort": "throughput over ONNX Runtime's (1 thread)",
           "batch1_us": "batch-1 latency (µs, 1 thread)", "batch1_ms": "batch-1 latency (ms, 1 thread)"}

#: fields naming the line a row belongs to in a plot, in label order
_SERIES_FIELDS = ("network", "norms", "layer", "method", "ncodebooks", "finetune")

#: fields written beside each point of a plot whose x axis is another field
_POINT_LABELS = {"ncodebooks": "C", "candidates": "candidates", "rerank": "rerank"}


def _cell(value):
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(_cell, value))
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _is_table(value):
    return isinstance(value, list) and value and all(isinstance(v, dict) for v in value)


def provenance_line(result):
    """"Written by `command` at commit X." for a result stamped by :func:`write_results`."""
    commit = result.get("commit")
    where = f"commit {commit}" if commit else "an unknown commit (not a git checkout)"
    return f"Written by `{result['command']}` at {where}."


def to_markdown(result, title):
    """A Markdown page: who wrote it (when stamped), the other scalar fields as a list, then
    each list of row dicts (``rows`` and any other) as a table under its name."""
    lines = [f"# {title}", ""]
    if "command" in result:
        lines += [provenance_line(result), ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in result.items()
              if not _is_table(value) and key not in STAMP_FIELDS]
    for key, rows in result.items():
        if _is_table(rows):
            columns = list(rows[0])
            lines += ["", f"## {key}", "", "| " + " | ".join(columns) + " |",
                      "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _series(row, x):
    """The line a row belongs to: its method, with its network, norms, layer, codebooks
    and fine-tuning when it has them (the x field aside)."""
    parts = []
    for field in _SERIES_FIELDS:
        value = row.get(field)
        if field == x or value is None:
            continue
        parts.append(("" if value else "no ") + field if isinstance(value, bool)
                     else f"layer {value}" if field == "layer"
                     else f"C={value}" if field == "ncodebooks" else str(value))
    return " ".join(parts)


def _plot(rows, x, y, log_base, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    series = dict.fromkeys(_series(row, x) for row in rows)
    markers = "osD^vP*X"
    for i, label in enumerate(series):
        line = sorted((r for r in rows if _series(r, x) == label), key=lambda r: next(
            (r[f] for f in _POINT_LABELS if r.get(f) is not None), r[x]))
        ax.plot([r[x] for r in line], [r[y] for r in line], marker=markers[i % len(markers)],
                label=label or y, alpha=0.85)
        for field, name in _POINT_LABELS.items():
            if x != field and line[0].get(field) is not None and \
                    len({r[field] for r in line}) > 1:
                for r in line:
                    ax.annotate(f"{name}={r[field]}", (r[x], r[y]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
    if y == "relative_accuracy":
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="exact")
    if x == "speedup_vs_blas" or y == "speedup_vs_blas":
        (ax.axvline if x == "speedup_vs_blas" else ax.axhline)(1.0, color="gray", linestyle=":",
                                                               linewidth=1)
    ax.set_xscale("log", base=log_base)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(y, y))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7 if len(series) > 6 else None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _git(*args):
    """Standard output of ``git args`` in this package's folder, or None when git fails
    (no git, or not a checkout)."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_commit():
    """``git rev-parse --short HEAD`` of the checkout holding this package, plus ``-dirty``
    when a file outside ``docs/`` (written results and documentation do not change the
    code) differs from that commit or is untracked; None outside a git checkout."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    changes = _git("status", "--porcelain", "--", ":(top)", ":(top,exclude)docs")
    return commit + ("-dirty" if changes else "")


def command_line(argv=None):
    """The running command (``sys.argv`` by default) as one shell line; the program by its
    name: ``lutengine reproduce ...``, or ``python -m lutengine ...`` when run as a module."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]).name
    if program == "__main__.py":
        program = f"python -m {Path(argv[0]).parent.name}"
    return " ".join([program, *map(shlex.quote, argv[1:])])


def write_results(result, out_dir, name, plots=PLOTS, command=None):
    """Write ``result`` under ``out_dir`` and return the paths written.

    The JSON is ``result`` stamped with ``command`` (default :func:`command_line`) and
    :func:`code_commit`. Files, with ``stem`` = ``{name}_{dataset}`` when the result names a
    dataset, else ``name``: ``{stem}.json``, ``{stem}.md`` (Markdown tables, headed by the
    command and commit) and ``{stem}_{suffix}.png`` for each entry ``suffix: (x, y,
    log_base[, table])`` of ``plots`` (one line per method, log x-axis).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"command": command or command_line(), "commit": code_commit(), **result}
    stem = f"{name}_{result['dataset']}" if "dataset" in result else name
    paths = [out_dir / f"{stem}.json"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    title = f"{name} on {result['dataset']}" if "dataset" in result else name
    md = out_dir / f"{stem}.md"
    md.write_text(to_markdown(result, title))
    paths.append(md)
    for suffix, (x, y, log_base, *table) in plots.items():
        png = out_dir / f"{stem}_{suffix}.png"
        _plot(result[table[0] if table else "rows"], x, y, log_base, png,
              f"{title}: {table[0].replace('_', ' ')}" if table else title)
        paths.append(png)
    return paths
