"""Input checks for the public API: the only place that validates (design.md, Conventions).

Floats are cast to float32; integer codes are never cast; every error names the argument
and the shapes involved.
"""

import numbers

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """Raised when ``predict``/``transform``/``save`` are called before ``fit``."""


def as_float_matrix(X, name, *, keep_order=False, check_finite=True):
    """Return X as a 2-D float32 array, C-contiguous (or F-contiguous if it already was
    and ``keep_order``), checking dtype, ndim, emptiness and (optionally) finiteness."""
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a 2-D numeric array; could not convert it: {exc}") from exc
    if X.dtype == bool or not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {X.ndim}-D with shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {X.shape}")
    fortran = keep_order and X.flags.f_contiguous and not X.flags.c_contiguous
    X = np.asfortranarray(X, dtype=np.float32) if fortran else np.ascontiguousarray(X, dtype=np.float32)
    if check_finite:
        check_all_finite(X, name)
    return X


def as_float_vector(x, name, length):
    """Return x as a 1-D float32 array of the given length, finite."""
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if x.ndim != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {x.shape}")
    check_all_finite(x, name)
    return x


def check_all_finite(X, name):
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf values")


def raise_if_nonfinite_read(count, name):
    """The encoders report whether they read NaN/Inf: turn that into an error."""
    if count:
        raise ValueError(f"{name} contains NaN or Inf values in the columns the encoder reads")


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
    if value not in choices:
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
    Q = np.asarray(Q) if not isinstance(Q, np.ndarray) else Q
    if Q.ndim == 1:
        Q = Q[None, :]
    Q = as_float_matrix(Q, name)
    check_n_features(Q, name, n_features)
    return Q
