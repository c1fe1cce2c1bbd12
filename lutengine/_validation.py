"""Input checks for the public API: the only place that validates (docs/architecture.md).

Floats are cast to float32; integer codes are never cast; every error names the argument
and the shapes involved.
"""

import numbers

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """Raised when ``predict``/``transform``/``save`` are called before ``fit``."""


def _check_real_dtype(dtype, name):
    """Integers or floats: bool, complex, object and strings refused."""
    if dtype == bool or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {dtype}")


def _real_array(X, name, what):
    """X as an ndarray of integers or floats."""
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a {what}; could not convert it: {exc}") from exc
    _check_real_dtype(X.dtype, name)
    return X


def _check_matrix_shape(X, name):
    """2-D and non-empty: any array type with ``ndim`` and ``shape`` (NumPy, device, dask)."""
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {X.ndim}-D with shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {X.shape}")


def as_float_matrix(X, name, *, keep_order=False, check_finite=True):
    """Return X as a 2-D float32 array, C-contiguous (or F-contiguous if it already was
    and ``keep_order``), checking dtype, ndim, emptiness and (optionally) finiteness.

    Integers and every float width (float16 and float64 included) are accepted and cast
    to float32; views, read-only and memory-mapped arrays are read without a copy when
    they are already float32 and contiguous. X itself is never modified."""
    X = _real_array(X, name, "2-D numeric array")
    _check_matrix_shape(X, name)
    fortran = keep_order and X.flags.f_contiguous and not X.flags.c_contiguous
    X = np.asfortranarray(X, dtype=np.float32) if fortran else np.ascontiguousarray(X, dtype=np.float32)
    if check_finite:
        check_all_finite(X, name)
    return X


def as_float_vector(x, name, length):
    """Return x as a 1-D float32 array of the given length, finite."""
    x = np.ascontiguousarray(_real_array(x, name, f"vector of length {length}"), dtype=np.float32)
    if x.ndim != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {x.shape}")
    check_all_finite(x, name)
    return x


#: elements per slice of the finiteness check (its boolean temporary stays this small)
_FINITE_CHECK_ELEMENTS = 1 << 20


def check_all_finite(X, name):
    """No NaN or Inf in X, checked a slice of rows at a time: no N × D temporary."""
    step = max(1, _FINITE_CHECK_ELEMENTS // max(1, X[:1].size))
    for start in range(0, X.shape[0], step):
        if not np.isfinite(X[start:start + step]).all():
            raise ValueError(f"{name} contains NaN or Inf values")


def raise_if_nonfinite_read(count, name):
    """The encoders report whether they read NaN/Inf: turn that into an error."""
    if count:
        raise ValueError(f"{name} contains NaN or Inf values in the columns the encoder reads")


def check_device_matrix(X, name, n_features):
    """A GPU array, read in place: 2-D, non-empty, float32, ``n_features`` columns."""
    _check_matrix_shape(X, name)
    if X.dtype != np.float32:
        raise TypeError(f"{name} on the GPU must be float32 (it is used in place), got {X.dtype}")
    check_n_features(X, name, n_features)


def check_row_chunked(X, name):
    """A dask array of real numbers, 2-D and non-empty, its rows chunked and its columns
    whole (checked by attributes: this module does not import dask)."""
    if not (hasattr(X, "numblocks") and hasattr(X, "chunks")):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(X).__name__}; wrap a "
                        f"NumPy array with dask.array.from_array({name}, chunks=(rows, -1))")
    _check_matrix_shape(X, name)
    _check_real_dtype(X.dtype, name)
    if X.numblocks[1] != 1:
        raise ValueError(f"{name} must have its columns in one chunk (rows chunked only), got "
                         f"column chunks {X.chunks[1]}; use {name}.rechunk({{1: -1}})")


def check_n_features(X, name, n_features):
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} columns, but the estimator was fitted with "
                         f"{n_features} (shape {X.shape})")


def check_ncodebooks(ncodebooks, n_features):
    if isinstance(ncodebooks, bool) or not isinstance(ncodebooks, numbers.Integral):
        raise TypeError(f"ncodebooks must be an integer, got {ncodebooks!r}")
    if not 1 <= ncodebooks <= min(n_features, 256):
        raise ValueError(f"ncodebooks must be between 1 and min(D, 256) = {min(n_features, 256)} "
                         f"for A with D = {n_features} columns, got {ncodebooks}")
    return int(ncodebooks)


def check_choice(value, name, choices):
    try:
        known = value in choices
    except TypeError:  # unhashable, e.g. a list
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(choices, key=repr)}, got {value!r}")


def check_codes(codes, name, ncodebooks):
    """Codes must already be uint8 (n, ncodebooks) with values < 16: never cast silently."""
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        dtype = getattr(codes, "dtype", type(codes).__name__)
        raise TypeError(f"{name} must be a uint8 array, got {dtype}")
    if codes.ndim != 2 or codes.shape[1] != ncodebooks or codes.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n >= 1, {ncodebooks}), got {codes.shape}")
    if codes.max() > 15:
        raise ValueError(f"{name} holds values above 15 (4-bit codes expected)")
    return np.ascontiguousarray(codes)


def check_is_fitted(estimator, attribute="luts_"):
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call fit(A_train, B) first")


def check_k(k, n_items, name="k"):
    """k must be an integer in 1..n_items."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if not 1 <= k <= n_items:
        raise ValueError(f"{name} must be between 1 and the number of rows N = {n_items}, got {k}")
    return int(k)


def as_queries(Q, name, n_features):
    """Queries as a C-contiguous float32 (nq, d) array; a 1-D vector is one query."""
    Q = _real_array(Q, name, "2-D numeric array (or one query as a vector)")
    if Q.ndim == 1:
        Q = Q[None, :]
    Q = as_float_matrix(Q, name)
    check_n_features(Q, name, n_features)
    return Q


# -- options, and fitted state read from a file (lutengine.load) -----------------------------

def check_index_range(values, name, low, high):
    """Every entry of the integer array ``values`` (read from a file) in [low, high): the
    kernels index with them and do no bounds checks."""
    if values.size and (values.min() < low or values.max() >= high):
        raise ValueError(f"{name} holds values outside [{low}, {high}), which the kernels "
                         f"would index out of bounds")


def check_int(value, name, low, high=None):
    """An integer (not a bool) in [low, high] (no upper limit when ``high`` is None), as int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {limit}, got {value}")
    return int(value)


def check_real(value, name, low, high, *, closed=False):
    """A finite real number (not a bool) in (low, high), or in [low, high] when ``closed``,
    as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    inside = low <= value <= high if closed else low < value < high
    if not (inside and np.isfinite(value)):
        interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_random_state(random_state, name="random_state"):
    """None, an integer seed >= 0 (returned as int) or a ``np.random.Generator``."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, numbers.Integral):
        raise TypeError(f"{name} must be None, an integer seed >= 0 or a numpy.random.Generator, "
                        f"got {random_state!r}")
    return check_int(random_state, name, 0)


def check_array(value, name, dtype, shape):
    """``value`` exactly a C-contiguous ``dtype`` array of ``shape``, where ``None`` stands
    for any length (0 included): an array read from a file, before a kernel indexes it.
    Returns it."""
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype):
        got = value.dtype if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
        raise ValueError(f"{name} must be a {np.dtype(dtype)} array, got {got}")
    if value.ndim != len(shape) or any(want is not None and want != got
                                       for want, got in zip(shape, value.shape)):
        want = ", ".join("n" if length is None else str(length) for length in shape)
        want = f"({want},)" if len(shape) == 1 else f"({want})"
        raise ValueError(f"{name} must have shape {want}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return value


def check_limit(value, limit, what):
    """``value`` (a count of bytes or elements a file or model declares) within
    ``lutengine.config.<limit>``, checked before anything of that size is allocated."""
    from . import config

    bound = getattr(config, limit)
    if value > bound:
        raise ValueError(f"{what} is {value}, above lutengine.config.{limit} = {bound}; for "
                         f"a model you trust, raise it: lutengine.config.{limit} = {value}")
    return value
