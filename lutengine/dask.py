"""Scale-out on Dask: batch inference over chunked arrays and MIPS over sharded rows.

Optional: ``pip install "lutengine[dask]"`` (dask.array and dask.distributed). lutengine
builds no cluster layer of its own; see docs/scale-out.md for running it on a cluster.

- :func:`predict_dask`: ``predict`` of a fitted LutMatmul / PQMatmul, or a TopKLinear
  layer, on every row chunk of a dask array; the fitted state reaches each worker once.
- :class:`ShardedMipsIndex`: one :class:`~lutengine.MipsIndex` per row shard, built and
  kept on the worker that holds the shard; searches fan out and merge to the global top-k.
- :func:`set_worker_threads`: the Numba and BLAS thread counts of every worker.
"""

import os

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:
    raise ImportError(f"lutengine.dask needs dask[array] and distributed ({exc.name} is missing): "
                      f'pip install "lutengine[dask]"') from exc

from ._validation import (
    as_queries, check_choice, check_int, check_k, check_n_features, check_row_chunked,
)
from .matmul import LutMatmul, PQMatmul
from .mips import METHODS, MipsIndex, _sorted_best_first
from .network import Network
from .sparse import TopKLinear

__all__ = ["predict_dask", "ShardedMipsIndex", "set_worker_threads"]

_PLUGIN_NAME = "lutengine-threads"
#: Numba threads of this worker's lutengine tasks (set by set_worker_threads; None: Numba's own)
_numba_threads = None


# -- threads ----------------------------------------------------------------------------------
class _WorkerThreads(distributed.WorkerPlugin):
    """Limits BLAS (process-wide) at setup and records the Numba count, which every
    lutengine task applies in its own thread (Numba's count is thread-local)."""

    def __init__(self, numba_threads, blas_threads):
        self.numba_threads, self.blas_threads = numba_threads, blas_threads

    def setup(self, worker):
        global _numba_threads
        if self.numba_threads > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"numba_threads={self.numba_threads} exceeds NUMBA_NUM_THREADS="
                             f"{numba.config.NUMBA_NUM_THREADS} on worker {worker.address}")
        threadpool_limits(limits=self.blas_threads, user_api="blas")
        _numba_threads = self.numba_threads


def _pin_numba():
    if _numba_threads is not None:
        numba.set_num_threads(_numba_threads)


def _thread_settings():
    blas = sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
    return {"numba_threads": _numba_threads, "blas_threads": blas}


def set_worker_threads(client=None, numba_threads=1, blas_threads=1):
    """Set the Numba and BLAS thread counts of every worker of ``client`` (default: the
    current client), including workers that join later (a worker plugin).

    BLAS is limited process-wide (threadpoolctl); the Numba count applies to lutengine's
    tasks (Numba's count is per thread). Keep ``nthreads`` per worker × ``numba_threads``
    within the machine's cores; start workers with ``NUMBA_NUM_THREADS`` to cap every task
    (docs/scale-out.md). Returns ``{worker address: {"numba_threads", "blas_threads"}}``.
    """
    numba_threads = check_int(numba_threads, "numba_threads", 1)
    blas_threads = check_int(blas_threads, "blas_threads", 1)
    client = _client(client)
    try:
        client.register_plugin(_WorkerThreads(numba_threads, blas_threads),
                               name=_PLUGIN_NAME)
    except Exception:
        client.unregister_worker_plugin(_PLUGIN_NAME)
        raise
    return client.run(_thread_settings)


# -- inputs -----------------------------------------------------------------------------------
def _client(client, required=True):
    """``client``, else the current one (distributed.get_client); None if there is none
    and none is ``required``."""
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        return client
    try:
        return distributed.get_client()
    except ValueError:
        if required:
            raise ValueError("no dask.distributed Client: pass client= or start one first "
                             "(distributed.Client(scheduler_address))") from None
        return None


# -- batch inference --------------------------------------------------------------------------
def _widths(estimator):
    """(input columns, outputs) of a fitted estimator predict_dask accepts."""
    if isinstance(estimator, TopKLinear):
        return estimator.W.shape[1], estimator.W.shape[0]
    if isinstance(estimator, (LutMatmul, PQMatmul)):
        return estimator.n_features_in_, estimator.n_outputs_  # NotFittedError if not fitted
    if isinstance(estimator, Network):
        inputs, output = list(estimator.inputs.values()), estimator.shapes[estimator.output]
        if len(inputs) != 1 or len(inputs[0].shape) != 1 or inputs[0].dtype != "float32" \
                or len(output) != 1:
            raise TypeError("a Network for predict_dask must map (n, features) float32 rows to "
                            f"(n, outputs), got inputs {estimator.inputs} and output {output}")
        return inputs[0].shape[0], output[0]
    raise TypeError(f"estimator must be a fitted LutMatmul, PQMatmul, TopKLinear or a Network, "
                    f"got {type(estimator).__name__}")


def _predict_chunk(chunk, estimator, n_outputs):
    _pin_numba()
    if chunk.shape[0] == 0:
        return np.empty((0, n_outputs), dtype=np.float32)
    if isinstance(estimator, Network):
        return estimator.forward(chunk)
    return estimator(chunk) if isinstance(estimator, TopKLinear) else estimator.predict(chunk)


def predict_dask(estimator, A, client=None):
    """``estimator.predict(A)`` (LutMatmul, PQMatmul), ``estimator(A)`` (TopKLinear) or
    ``estimator.forward(A)`` (a Network of (n, D) rows to (n, M) outputs) for a dask array
    ``A`` (n, D) with its rows chunked and its columns in one chunk: a lazy float32 dask array
    (n, M) with A's row chunks, equal bit for bit to the local call (TopKLinear: unless two
    rows tie within float32 rounding for the k-th place, and a Network's exact layers: within
    float32 rounding, as BLAS may round a chunk's product differently from the whole's).

    The estimator is sent to each worker once: scattered to every worker of ``client``
    (default: the current client), and the result must be computed on that client. With no
    client at all it is a single key of the graph shared by every chunk, and the result
    computes on dask's local scheduler.
    """
    n_features, n_outputs = _widths(estimator)
    check_row_chunked(A, "A")
    check_n_features(A, "A", n_features)
    client = _client(client, required=False)
    if client is None:
        fitted = dask.delayed(estimator, traverse=False)
    else:
        fitted = client.scatter(estimator, broadcast=True, hash=False)
    return A.map_blocks(_predict_chunk, fitted, n_outputs, dtype=np.float32,
                        chunks=(A.chunks[0], (n_outputs,)),
                        meta=np.empty((0, n_outputs), dtype=np.float32))


# -- sharded MIPS -----------------------------------------------------------------------------
def _build_shard(W, bias, method, random_state, options):
    _pin_numba()
    return MipsIndex(W, method=method, bias=bias, random_state=random_state, **options)


def _build_shard_from_file(path, method, random_state, options):
    """A shard's index from a .npy file (its rows) or a .npz file (``W``, optional ``bias``)."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "W" not in f.files:
                raise ValueError(f"shard file {path!r} must hold an array 'W' (and optionally "
                                 f"'bias'), found {f.files}")
            W, bias = f["W"], f["bias"] if "bias" in f.files else None
    else:
        W, bias = np.load(path, allow_pickle=False), None
    return _build_shard(W, bias, method, random_state, options)


def _describe(index):
    """(rows, d, whether rows carry a bias column, method) of a shard's index."""
    return (index.n_items, index.n_features_, index.rows_.shape[1] > index.n_features_,
            index.method_)


def _search_shard(index, Q, k, largest):
    _pin_numba()
    return index.search(Q, k, largest=largest)


def _shard_paths(paths):
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple)):
        raise TypeError(f"W must be a dask array or a list of .npy/.npz paths (one per shard), "
                        f"got {type(paths).__name__}")
    if not paths:
        raise ValueError("W must name at least one shard file, got an empty list")
    paths = [os.fspath(p) for p in paths]
    for path in paths:
        if not path.endswith((".npy", ".npz")):
            raise ValueError(f"shard files must be .npy or .npz, got {path!r}")
    return paths


class ShardedMipsIndex:
    """Top-k MIPS over the rows of ``W`` split into shards across the workers of a Dask
    cluster: one :class:`~lutengine.MipsIndex` per shard, built on (and kept by) the
    worker that holds the shard, so W never passes through one process.

    Parameters
    ----------
    W : dask array (N, d) or list of paths
        A dask array with its rows chunked (one shard per row chunk) and its columns in one
        chunk; or one file per shard, in row order, read by the worker that builds it:
        ``.npy`` (the shard's rows) or ``.npz`` (array ``W``, optionally ``bias``). A path
        must be readable from every worker (a worker lost later rebuilds its shards).
    method, random_state, **options
        As :class:`~lutengine.MipsIndex`, for every shard ("auto" resolves per shard).
    bias : array (N,), optional
        NumPy or dask, with a dask W only (.npz shards carry their own ``bias``).
    client : distributed.Client, optional
        Default: the current client.

    Attributes
    ----------
    shard_sizes_ : int64 (n_shards,); offsets_ : int64 (n_shards + 1,), global id of each
    shard's first row; methods_ : each shard's method; n_features_ : d.
    """

    def __init__(self, W, method="auto", bias=None, random_state=None, client=None, **options):
        check_choice(method, "method", set(METHODS))
        self.client = _client(client)
        if isinstance(W, da.Array):
            check_row_chunked(W, "W")
            parts = W.to_delayed().ravel()
            biases = [None] * len(parts)
            if bias is not None:
                bias = da.asarray(bias)
                if bias.shape != (W.shape[0],):
                    raise ValueError(f"bias must have shape ({W.shape[0]},) to match W "
                                     f"{W.shape}, got {bias.shape}")
                biases = bias.rechunk((W.chunks[0],)).to_delayed().ravel()
            build = dask.delayed(_build_shard)
            self._shards = self.client.compute(
                [build(part, b, method, random_state, options) for part, b in zip(parts, biases)])
        else:
            paths = _shard_paths(W)
            if bias is not None:
                raise ValueError("bias must be None when W is a list of files: store each "
                                 "shard's bias in its .npz as 'bias'")
            self._shards = [self.client.submit(_build_shard_from_file, path, method,
                                               random_state, options, pure=False)
                            for path in paths]
        sizes, widths, biased, methods = zip(*self.client.gather(
            self.client.map(_describe, self._shards, pure=False)))
        if len(set(widths)) > 1 or len(set(biased)) > 1:
            raise ValueError(f"every shard must have the same width d and all or none a bias, "
                             f"got d = {list(widths)}, bias = {list(biased)}")
        self.method, self.methods_, self.n_features_ = method, list(methods), widths[0]
        self.shard_sizes_ = np.array(sizes, dtype=np.int64)
        self.offsets_ = np.concatenate([[0], np.cumsum(self.shard_sizes_)])

    @property
    def n_items(self):
        return int(self.offsets_[-1])

    def search(self, Q, k, largest=True):
        """The k best rows of the whole W for each query, as :meth:`MipsIndex.search`:
        ``(ids (nq, k) int64, global row ids; scores (nq, k) float32)``, best first, equal
        scores by smaller id (rows tied at the k-th score: those the shards return). Every
        shard answers, or this raises RuntimeError: a partial top-k is never returned."""
        k = check_k(k, self.n_items)
        Q = as_queries(Q, "Q", self.n_features_)
        queries = self.client.scatter(Q, broadcast=True, hash=False)
        parts = [self.client.submit(_search_shard, shard, queries, min(k, int(size)), largest,
                                    pure=False)
                 for shard, size in zip(self._shards, self.shard_sizes_)]
        try:
            results = self.client.gather(parts)
        except Exception as exc:
            raise RuntimeError(f"ShardedMipsIndex.search: a shard did not answer "
                               f"({type(exc).__name__}: {exc}); no partial top-k is "
                               f"returned") from exc
        ids = np.hstack([ids + offset for (ids, _), offset in zip(results, self.offsets_)])
        scores = np.hstack([scores for _, scores in results])
        ids, scores = _sorted_best_first(scores, ids)
        return ids[:, :k], scores[:, :k]
