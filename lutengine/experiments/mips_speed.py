"""Recall against speed-up of the MIPS methods on large synthetic item sets.

The curve behind the speed targets of the MIPS engine: N rows of dimension d, every row
N(0, I) (``gaussian``) or additionally scaled by a log-normal norm (σ = 1,
``lognormal``), Gaussian queries answered one at a time (batch 1), k = 10, one thread.
``normscan`` is exact; H2-ALSH (Huang et al. 2018) trades recall for time through its
candidate budget per ring (100 by default, as in Huang et al.); ``fastscan``
(4-bit PQ fast scan, ``lutengine.fastscan``) through its codebook count and the number of
candidates it re-ranks exactly (one index per codebook count, searched with each
``rerank``). Each time is the best of ``repeats`` passes over the queries, brute force
timed in the same passes.
"""

import time

import numpy as np
from tqdm import tqdm

from ..mips import MipsIndex
from . import _common

#: file stem of the results
NAME = "mips_speed"

#: plots for :func:`._common.write_results`
PLOTS = {"curve": ("speedup_vs_brute", "recall_at_k", 10)}


def items(n_rows, d, norms, n_queries, random_state):
    """Rows (n_rows, d) and queries (n_queries, d), float32, of the named norm model."""
    rng = np.random.default_rng(random_state)
    W = rng.standard_normal((n_rows, d), dtype=np.float32)
    if norms == "lognormal":
        W *= np.exp(rng.standard_normal((n_rows, 1), dtype=np.float32))
    return W, rng.standard_normal((n_queries, d), dtype=np.float32)


def recall_at_k(ids, W, Q, k):
    """Fraction of the returned rows scoring at least the exact k-th score (ties count)."""
    S = Q @ W.T
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    found = np.take_along_axis(S, ids, 1) >= kth[:, None] - 1e-4 * np.abs(kth[:, None])
    return float(found.mean())


def _per_query_seconds(index, Q, k):
    start = time.perf_counter()
    for q in Q:
        index.search(q[None], k)
    return (time.perf_counter() - start) / len(Q)


def _configs(candidates, ncodebooks, reranks):
    """(method, MipsIndex options, rerank or None) in run order; fastscan's options
    repeat per rerank so that one index serves them all."""
    configs = [("normscan", {}, None)] + [("h2alsh", {"candidates": c}, None) for c in candidates]
    return configs + [("fastscan", {"ncodebooks": C}, r) for C in ncodebooks for r in reranks]


def run(n_rows=1_000_000, d=128, norms=("gaussian", "lognormal"),
        candidates=(100, 1000, 10_000, 50_000), k=10, n_queries=16, repeats=3, random_state=0,
        progress=True, ncodebooks=(16, 32, 48, 64), reranks=(100, 300, 1000, 3000)):
    """Recall@k and per-query time against brute force for normscan, H2-ALSH and fastscan.

    Returns a dict with ``rows`` (``norms, method, candidates, ncodebooks, rerank,
    recall_at_k, ms_per_query, brute_ms_per_query, speedup_vs_brute, build_seconds``;
    the fields another method does not use are None), the settings and the machine.
    ``ncodebooks`` larger than d are skipped.
    """
    started = time.perf_counter()
    rows = []
    for model in norms:
        W, Q = items(n_rows, d, model, n_queries, random_state)
        brute = MipsIndex(W, method="brute")
        configs = _configs(candidates, [C for C in ncodebooks if C <= d], reranks)
        built, index = None, None
        for method, options, rerank in tqdm(configs, desc=f"{NAME} {model}",
                                            disable=not progress):
            if built != (method, options):
                index = None  # release the previous index (a copy of W) first
                start = time.perf_counter()
                index = MipsIndex(W, method=method, random_state=random_state, **options)
                build = time.perf_counter() - start
                built = (method, options)
            if rerank is not None:
                index.fastscan_rerank = np.int64(rerank)  # read at search time
            with _common.single_thread():
                ids, _ = index.search(Q, k)
                times = [(_per_query_seconds(index, Q, k), _per_query_seconds(brute, Q, k))
                         for _ in range(repeats)]
            ms, brute_ms = 1e3 * np.min(times, axis=0)
            rows.append({"norms": model, "method": method,
                         "candidates": options.get("candidates"),
                         "ncodebooks": options.get("ncodebooks"), "rerank": rerank,
                         "recall_at_k": recall_at_k(ids, W, Q, k), "ms_per_query": ms,
                         "brute_ms_per_query": brute_ms, "speedup_vs_brute": brute_ms / ms,
                         "build_seconds": build})
    return {
        "dataset": f"{n_rows}x{d}",
        "k": k, "batch": 1, "n_queries": n_queries, "threads": 1,
        "timing": f"best of {repeats} passes over the queries, brute force in the same passes",
        "random_state": random_state,
        "total_seconds": time.perf_counter() - started,
        "machine": _common.machine_info(),
        "rows": rows,
    }
