"""The CUDA path: ``device=`` resolution, device inputs, fitted state moved to
the GPU once, and the drivers of the ``kernels.cuda`` twins.

``device="cpu"`` (the default) never touches CUDA. ``"cuda"`` runs the GPU kernels; it
needs ``numba.cuda`` (``pip install lutengine[cuda]``) and an NVIDIA GPU, or the simulator
(``NUMBA_ENABLE_CUDASIM=1``, for tests). ``"auto"`` means ``"cuda"`` when the input is
already a device array or a real GPU is present, else ``"cpu"``.

Inputs may be NumPy arrays or device arrays (anything exposing
``__cuda_array_interface__``: CuPy, PyTorch, Numba). A device input is used in place (it
must be float32) and the result is a Numba device array (wrap it with ``cupy.asarray`` or
``torch.as_tensor``); a NumPy input gets NumPy results.
"""

import numba
import numpy as np

from . import _dispatch, config
from ._validation import (
    as_queries, check_choice, check_device_matrix, check_is_fitted, check_k,
    raise_if_nonfinite_read,
)

DEVICES = ("cpu", "cuda", "auto")


def _numba_cuda():
    try:
        from numba import cuda
    except ImportError as exc:  # numba built without its CUDA target
        raise ImportError("device='cuda' needs numba's CUDA target: pip install lutengine[cuda]"
                          ) from exc
    return cuda


def is_device_array(X):
    """Whether X lives on the GPU (a Numba device array or ``__cuda_array_interface__``)."""
    return bool(getattr(X, "__cuda_ndarray__", False)) or hasattr(X, "__cuda_array_interface__")


def gpu_present():
    """A real GPU (not the simulator) that numba.cuda can use."""
    try:
        cuda = _numba_cuda()
    except ImportError:
        return False
    return not numba.config.ENABLE_CUDASIM and cuda.is_available()


def resolve(device, X=None):
    """``"cpu"`` or ``"cuda"`` for a ``device`` argument (see the module docstring)."""
    check_choice(device, "device", set(DEVICES))
    if device == "auto":
        return "cuda" if is_device_array(X) or gpu_present() else "cpu"
    return device


def _cuda():
    """numba.cuda, checked usable: a clear error when there is no GPU and no simulator."""
    cuda = _numba_cuda()
    if not cuda.is_available():
        raise RuntimeError("device='cuda' found no usable NVIDIA GPU (numba.cuda.is_available() "
                           "is False: no GPU or driver); use device='cpu', or set "
                           "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the simulator")
    return cuda


def _kernels():
    from kernels.cuda import encode, qalsh, scan, topk
    return encode, qalsh, scan, topk


def _device_input(X, name, n_features):
    """A device input as a Numba device array, checked like the host path."""
    cuda = _cuda()
    X = X if getattr(X, "__cuda_ndarray__", False) else cuda.as_cuda_array(X)
    check_device_matrix(X, name, n_features)
    return X


def _device_state(owner, names):
    """The arrays ``owner.<name>`` on the GPU, copied once and cached on ``owner`` (not
    saved); a refit replaces the host arrays and so invalidates the cache."""
    cuda = _cuda()
    host = tuple(getattr(owner, name) for name in names)
    cached = getattr(owner, "_device_state", None)
    if cached is None or len(cached[0]) != len(host) or \
            any(a is not b for a, b in zip(cached[0], host)):
        cached = (host, tuple(cuda.to_device(np.ascontiguousarray(a)) for a in host))
        owner._device_state = cached
    return cached[1]


def _grid(nitems, threads=None):
    threads = threads or config.CUDA_THREADS_PER_BLOCK
    return max(1, min(config.CUDA_MAX_BLOCKS, (nitems + threads - 1) // threads)), threads


def _returned(on_device, *arrays):
    out = arrays if on_device else tuple(a.copy_to_host() for a in arrays)
    return out if len(out) > 1 else out[0]


# -- LutMatmul -------------------------------------------------------------------------------
#: the fitted arrays LutMatmul's device path reads
_LUT_STATE = ("split_dims_", "thresholds_", "luts_q_")


def _tree_estimator_input(estimator, A):
    check_is_fitted(estimator)
    if not hasattr(estimator, "thresholds_"):
        raise ValueError(f"device='cuda' supports LutMatmul only; {type(estimator).__name__} "
                         "runs on device='cpu'")
    cuda = _cuda()
    if is_device_array(A):
        return _device_input(A, "A", estimator.n_features_in_), True
    return cuda.to_device(estimator._validated(A)), False


def _encode(estimator, X):
    cuda = _cuda()
    encode = _kernels()[0]
    split_dims, thresholds, _ = _device_state(estimator, _LUT_STATE)
    codes = cuda.device_array((X.shape[0], split_dims.shape[0]), dtype=np.uint8)
    nonfinite = cuda.to_device(np.zeros(1, dtype=np.int32))
    encode.encode_tree[_grid(codes.size)](X, split_dims, thresholds, codes, nonfinite)
    raise_if_nonfinite_read(nonfinite.copy_to_host()[0], "A")
    return codes


def transform(estimator, A):
    """``LutMatmul.transform`` on the GPU."""
    X, on_device = _tree_estimator_input(estimator, A)
    return _returned(on_device, _encode(estimator, X))


def scan_tiles(ncodebooks, nout):
    """(rows per tile, table columns per tile, dynamic shared bytes) of the CUDA scan."""
    rows = config.CUDA_ROWS_PER_BLOCK
    cols = (config.CUDA_SCAN_SHARED_BYTES - rows * ncodebooks) // (16 * ncodebooks)
    cols = max(1, min(nout, cols))
    return rows, cols, ncodebooks * (16 * cols + rows)


def scan_quantized(codes, luts_q, dequantization):
    """The quantised scan of device ``codes`` with device tables, dequantised by ``(inv_scale,
    shift)`` (host float32 (M,), :func:`lutengine._dispatch.lut.dequantization`): a float32 device
    array."""
    cuda = _cuda()
    scan = _kernels()[2]
    inv_scale, shift = dequantization
    rows, cols, shared_bytes = scan_tiles(codes.shape[1], luts_q.shape[2])
    out = cuda.device_array((codes.shape[0], luts_q.shape[2]), dtype=np.float32)
    grid = (min(config.CUDA_MAX_BLOCKS, -(-codes.shape[0] // rows)),
            min(config.CUDA_MAX_BLOCKS, -(-luts_q.shape[2] // cols)))
    scan.scan_quantized[grid, config.CUDA_THREADS_PER_BLOCK, 0, shared_bytes](
        codes, luts_q, cuda.to_device(inv_scale), cuda.to_device(shift), out, rows, cols)
    return out


def predict(estimator, A):
    """``LutMatmul.predict`` on the GPU (quantised tables only)."""
    if not estimator.quantize:
        raise ValueError("device='cuda' needs quantize=True (the quantised uint8 scan); "
                         "quantize=False runs on device='cpu'")
    X, on_device = _tree_estimator_input(estimator, A)
    _, _, luts_q = _device_state(estimator, _LUT_STATE)
    out = scan_quantized(_encode(estimator, X), luts_q, _dispatch.lut.dequantization(
        estimator.lut_scale_, estimator.lut_offsets_.sum(axis=0, dtype=np.float64),
        estimator.bias_))
    return _returned(on_device, out)


# -- MipsIndex and TopKLinear ----------------------------------------------------------------
#: the index arrays the device H2-ALSH query reads (scalars travel as kernel arguments)
_H2ALSH_STATE = ("rows_", "norms_", "order_", "h2alsh_ring_bounds", "h2alsh_ring_m",
                 "h2alsh_ring_l", "h2alsh_proj_off", "h2alsh_key_off", "h2alsh_proj",
                 "h2alsh_keys", "h2alsh_ids")


def _check_h2alsh(index):
    if index.method_ != "h2alsh":
        raise ValueError(f"device='cuda' supports method='h2alsh' only; this index uses "
                         f"method={index.method_!r}: search it with device='cpu'")


def _query_threads(nq):
    blocks, threads = _grid(min(nq, config.CUDA_MAX_QUERY_THREADS))
    return blocks, threads, blocks * threads


def _search_into(index, Q, k, largest, out_ids, out_scores):
    """Top-k ids and scores of the queries Q into the device arrays ``out_*``.

    Q is either a device input (prepared and projected here on the GPU) or the host
    queries as the CPU path prepared them (``MipsIndex._host_queries``: validated, bias
    column, sign), projected on the host exactly as the CPU path does.
    """
    cuda = _cuda()
    qalsh = _kernels()[1]
    (rows, norms, order, ring_bounds, ring_m, ring_l, proj_off, key_off, proj, keys,
     ids) = _device_state(index, _H2ALSH_STATE)
    if is_device_array(Q):
        Q = _device_input(Q, "Q", index.n_features_)
        prepared = cuda.device_array((Q.shape[0], rows.shape[1]), dtype=np.float32)
        nonfinite = cuda.to_device(np.zeros(1, dtype=np.int32))
        qalsh.prepare_queries[_grid(prepared.size)](Q, np.float32(1 if largest else -1),
                                                    prepared, nonfinite)
        if nonfinite.copy_to_host()[0]:
            raise ValueError("Q contains NaN or Inf values")
        query_keys = cuda.device_array((Q.shape[0], proj.shape[0]), dtype=np.float32)
        qalsh.project[_grid(query_keys.size)](prepared, proj, query_keys)
    else:
        prepared = cuda.to_device(Q)
        query_keys = cuda.to_device(Q @ index.h2alsh_proj[:, :Q.shape[1]].T)
    nq, d = prepared.shape
    ring_sizes = np.diff(index.h2alsh_ring_bounds)[index.h2alsh_ring_m > 0]
    max_ring = int(ring_sizes.max(initial=1))
    max_m = int(index.h2alsh_ring_m.max(initial=1))
    blocks, threads, nthreads = _query_threads(nq)
    scratch = [cuda.device_array((nthreads, width), dtype=dtype) for width, dtype in (
        (d, np.float64), (max_ring, np.int32), (max_m, np.float64), (max_m, np.int64),
        (max_m, np.int64), (max_m, np.uint8), (max_m, np.uint8), (2 * max_m, np.float64),
        (k, np.float64), (k, np.int64))]
    scratch.insert(1, cuda.to_device(np.zeros((nthreads, max_ring), dtype=np.int32)))  # freq
    qalsh.h2alsh_search[blocks, threads](
        rows, norms, prepared, k, ring_bounds, ring_m, ring_l, proj_off, key_off, query_keys,
        keys, ids, float(index.h2alsh_scale), float(index.h2alsh_width),
        float(index.h2alsh_c0), int(index.h2alsh_candidates) + k - 1,
        int(index.h2alsh_scan_size), order, out_ids, out_scores, *scratch)


def search(index, Q, k, largest):
    """``MipsIndex.search`` on the GPU: (ids int64 (nq, k), scores float32 (nq, k))."""
    _check_h2alsh(index)
    cuda = _cuda()
    k = check_k(k, index.n_items)
    on_device = is_device_array(Q)
    Q = Q if on_device else index._host_queries(Q, largest)
    ids = cuda.device_array((Q.shape[0], k), dtype=np.int64)
    scores = cuda.device_array((Q.shape[0], k), dtype=np.float32)
    _search_into(index, Q, k, largest, ids, scores)
    return _returned(on_device, ids, scores)


def topk_linear(layer, X, return_active):
    """``TopKLinear.__call__`` on the GPU: the searches, then the exact outputs of the
    selected rows."""
    _check_h2alsh(layer.index)
    cuda = _cuda()
    on_device = is_device_array(X)
    X = _device_input(X, "X", layer.W.shape[1]) if on_device else \
        as_queries(X, "X", layer.W.shape[1])
    n, k = X.shape[0], layer.k
    ids = cuda.device_array((n, 2 * k if layer.bottom else k), dtype=np.int64)
    scores = cuda.device_array(ids.shape, dtype=np.float32)
    for largest, columns in ((True, slice(0, k)), (False, slice(k, 2 * k)))[:1 + layer.bottom]:
        queries = X if on_device else layer.index._host_queries(X, largest)
        _search_into(layer.index, queries, k, largest, ids[:, columns], scores[:, columns])
    W, b = _device_state(layer, ("W", "b"))
    Y = cuda.device_array((n, W.shape[0]), dtype=np.float32)
    active = cuda.device_array((n, W.shape[0]), dtype=np.bool_)
    sparse = _kernels()[3]
    sparse.sparse_linear[_grid(n)](W, b, ids, X if on_device else cuda.to_device(X), Y, active)
    return _returned(on_device, Y, active) if return_active else _returned(on_device, Y)
