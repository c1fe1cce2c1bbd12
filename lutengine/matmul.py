"""Approximate ``A @ B (+ bias)`` with lookup tables.

``LutMatmul``: MADDNESS (Blalock & Guttag 2021): hash-tree encoding (§4.1), ridge
prototypes (§4.3), int8 lookup tables (§4.4; one scale per output); with ITLUMM's options
(McCarter & Dronen 2022): permuted subspaces (§2.1) and tables fitted through the
layer's nonlinearity (§2.2).
``PQMatmul``: the product-quantisation baseline (16 k-means centroids per subspace).
Both share the table build, the scan kernel and the ``.npz`` persistence.
"""

import numbers
import warnings

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import _cuda, _dispatch, _persist, partition, trees
from ._validation import (
    as_float_matrix, as_float_vector, check_all_finite, check_array, check_bool, check_choice,
    check_codes, check_index_range, check_is_fitted, check_n_features, check_ncodebooks,
    check_random_state, raise_if_nonfinite_read,
)
from .fastscan import pack_codes
from .lut_opt import optimize_luts, ridge_prototypes

#: lut_objective -> the activations it accepts
ACTIVATIONS = {"ridge": {None}, "mse": {None, "relu", "softmax"}, "kl": {"softmax"}}

#: values (rows × (D + M)) per chunk of the training-error pass at fit: bounds the float
#: arrays it holds
ERROR_CHUNK_VALUES = 1 << 22
#: extra training nmse of the int8 tables never worth a QuantizationWarning (the rounding
#: of an almost exact fit)
QUANTIZATION_NMSE_FLOOR = 1e-4


class QuantizationWarning(UserWarning):
    """The int8 tables lose much more than the float tables on the training rows."""


def _offset_sums(lut_offsets):
    """Σ_c offset[c, m]: what the offset-shifted tables leave out of each output (M,)."""
    return lut_offsets.sum(axis=0, dtype=np.float64).astype(np.float32)


def _nmse(squared_error, squared_norm):
    """‖Ŷ − Y‖² / ‖Y‖²; 0 for an exact result, inf for a nonzero error on Y = 0."""
    if squared_norm > 0:
        return float(squared_error / squared_norm)
    return 0.0 if squared_error == 0 else float("inf")


class _LutEstimator:
    """Shared fit/predict/persistence; subclasses learn the encoder and prototypes."""

    _param_names = ()
    _state_attrs = ()  # every fitted array (what save writes): _common_state + the encoder's
    _common_state = ("prototypes_", "luts_", "luts_q_", "lut_offsets_", "lut_scale_", "bias_",
                     "subspace_cols_", "subspace_bounds_", "float_nmse_", "quantization_nmse_")

    # -- scikit-learn conventions ---------------------------------------------------------
    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._param_names}

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self._param_names:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid: {list(self._param_names)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def n_features_in_(self):
        check_is_fitted(self)
        return self.prototypes_.shape[2]

    @property
    def n_outputs_(self):
        check_is_fitted(self)
        return self.luts_.shape[2]

    # -- fitting --------------------------------------------------------------------------
    def fit(self, A_train, B, bias=None):
        """Learn the encoder and prototypes on ``A_train`` (N, D) and the tables for
        ``B`` (D, M); ``bias`` (M,) is added to every output. Returns self.

        The fitted state is built aside and set in one step: a fit that raises leaves
        the previous model as it was. Warns with :class:`QuantizationWarning` when
        ``quantize`` is True and the int8 tables more than double the float tables'
        error on the training rows (by more than :data:`QUANTIZATION_NMSE_FLOOR`)."""
        A = as_float_matrix(A_train, "A_train")
        B = as_float_matrix(B, "B")
        if B.shape[0] != A.shape[1]:
            raise ValueError(f"B must have D = {A.shape[1]} rows to match A_train {A.shape}, "
                             f"got B with shape {B.shape}")
        self._check_params(A.shape[1])
        bias = np.zeros(B.shape[1], np.float32) if bias is None else as_float_vector(bias, "bias", B.shape[1])
        cols, bounds = self._partition(A)
        state = {**self._fit_encoder(A, cols, bounds), "subspace_cols_": cols,
                 "subspace_bounds_": bounds, "bias_": bias}
        luts = self._fit_luts(A, B, state, _dispatch.lut.build_luts(state["prototypes_"], B))
        luts_q, offsets, scale = _dispatch.lut.quantize_luts(luts)
        state.update(luts_=luts, luts_q_=luts_q, lut_offsets_=offsets, lut_scale_=scale)
        state.update(self._training_errors(A, B, state))
        self._set_state(state)
        excess = self.quantization_nmse_ - self.float_nmse_
        if self.quantize and excess > max(self.float_nmse_, QUANTIZATION_NMSE_FLOOR):
            warnings.warn(QuantizationWarning(
                f"the int8 tables' training nmse {self.quantization_nmse_:.4g} is more than "
                f"twice the float tables' {self.float_nmse_:.4g}; quantize=False keeps the "
                "float tables"), stacklevel=2)
        return self

    def _set_state(self, state):
        """Replace the whole fitted state (every name in ``_state_attrs``) in one step."""
        vars(self).update({name: state[name] for name in self._state_attrs})

    def _partition(self, A):
        return partition.contiguous(A.shape[1], self.ncodebooks)

    def _fit_luts(self, A, B, state, luts):
        """The tables: P·B (``luts``) unless a subclass fits them otherwise."""
        return luts

    def _training_errors(self, A, B, state):
        """``float_nmse_`` and ``quantization_nmse_``: ‖Ŷ − Y‖² / ‖Y‖² with Y = A·B + bias
        (float64) over every training row, Ŷ from the float tables (exact sum) and from the
        int8 tables (the quantised scan, as ``predict``). The rows go in chunks of at most
        :data:`ERROR_CHUNK_VALUES` inputs and outputs, so no (N, D) or (N, M) copy is held."""
        bias, offsets = state["bias_"], _offset_sums(state["lut_offsets_"])
        B64 = B.astype(np.float64)
        sums = np.zeros(3)  # ‖float error‖², ‖int8 error‖², ‖Y‖²
        step = max(1, ERROR_CHUNK_VALUES // (A.shape[1] + B.shape[1]))
        for start in range(0, A.shape[0], step):
            rows = A[start:start + step]
            codes, _ = self._encode(rows, state)
            Y = rows @ B64 + bias
            exact_tables = _dispatch.lut.scan_float(codes, state["luts_"], bias)
            int8_tables = _dispatch.lut.scan_quantized(codes, state["luts_q_"], state["lut_scale_"],
                                                 offsets, bias)
            sums += [np.sum((exact_tables - Y) ** 2), np.sum((int8_tables - Y) ** 2),
                     np.sum(Y ** 2)]
        return {"float_nmse_": _nmse(sums[0], sums[2]),
                "quantization_nmse_": _nmse(sums[1], sums[2])}

    def _check_params(self, n_features):
        check_ncodebooks(self.ncodebooks, n_features)
        check_bool(self.quantize, "quantize")

    # -- inference ------------------------------------------------------------------------
    def _validated(self, A):
        check_is_fitted(self)
        A = as_float_matrix(A, "A", keep_order=True, check_finite=False)
        check_n_features(A, "A", self.n_features_in_)
        return A

    def transform(self, A, device="cpu"):
        """Codes of the rows of A: uint8 (n, ncodebooks), one 4-bit code per codebook.
        ``device``: "cpu", "cuda" or "auto" (:mod:`lutengine._cuda`; LutMatmul only)."""
        if _cuda.resolve(device, A) == "cuda":
            return _cuda.transform(self, A)
        codes, nonfinite = self._encode(self._validated(A))
        raise_if_nonfinite_read(nonfinite, "A")
        return codes

    def predict(self, A, device="cpu"):
        """≈ ``A @ B + bias`` as float32 (n, M). A may be C- or F-ordered. The SIMD scan
        (:mod:`kernels.packed`) returns the result F-ordered (each output's column
        contiguous, as it writes it), the other paths C-ordered. ``device``:
        "cpu", "cuda" (a GPU, quantised LutMatmul; NumPy or device-array A, the result
        where A was) or "auto" (cuda for a device array or when a GPU is present)."""
        if _cuda.resolve(device, A) == "cuda":
            return _cuda.predict(self, A)
        if self.quantize and self._encode_packed is not None and _dispatch.use_simd():
            A = self._validated(A)
            codes, nonfinite = self._encode_packed(A)
            raise_if_nonfinite_read(nonfinite, "A")
            return _dispatch.lut.scan_quantized_packed(codes, A.shape[0], self.luts_q_,
                                                 self.lut_scale_, self._lut_offset(), self.bias_)
        return self._scan(self.transform(A))

    def predict_codes(self, codes):
        """The scan alone, from codes given by :meth:`transform` (F-ordered from the SIMD
        scan, as :meth:`predict`)."""
        check_is_fitted(self)
        codes = check_codes(codes, "codes", self.luts_.shape[0])
        if self.quantize and _dispatch.use_simd():
            return _dispatch.lut.scan_quantized_packed(
                pack_codes(codes), codes.shape[0], self.luts_q_, self.lut_scale_,
                self._lut_offset(), self.bias_)
        return self._scan(codes)

    def _scan(self, codes):
        if self.quantize:
            return _dispatch.lut.scan_quantized(codes, self.luts_q_, self.lut_scale_, self._lut_offset(),
                                          self.bias_)
        return _dispatch.lut.scan_float(codes, self.luts_, self.bias_)

    #: packed-layout encoder for the SIMD scan (_dispatch.use_simd), where the method has one
    _encode_packed = None

    def _lut_offset(self):
        """Per-output offset sums (M,) of the int8 tables, as the scans take them."""
        return _offset_sums(self.lut_offsets_)

    def save(self, path):
        """Write the fitted estimator to ``path`` (.npz, readable with allow_pickle=False)."""
        check_is_fitted(self)
        _persist.save(self, path)

    def _check_state(self):
        """Called by :func:`lutengine.load` on what a file holds: the parameters, and every
        fitted array's dtype and shape against the others, and the indices the kernels
        read, before any kernel sees them."""
        prototypes = check_array(self.prototypes_, "prototypes_", np.float32, (None, 16, None))
        C, _, D = prototypes.shape
        self._check_params(D)
        check_random_state(self.random_state)
        check_bool(self.progress, "progress")
        if self.ncodebooks != C:
            raise ValueError(f"ncodebooks is {self.ncodebooks}, but the fitted arrays hold {C} "
                             "codebooks")
        M = check_array(self.luts_, "luts_", np.float32, (C, 16, None)).shape[2]
        if M == 0:
            raise ValueError("luts_ has no outputs")
        check_array(self.luts_q_, "luts_q_", np.uint8, (C, 16, M))
        for name, shape in (("lut_offsets_", (C, M)), ("lut_scale_", (M,)), ("bias_", (M,))):
            check_array(getattr(self, name), name, np.float32, shape)
        for name in ("prototypes_", "luts_", "lut_offsets_", "lut_scale_", "bias_"):
            check_all_finite(getattr(self, name), name)
        with np.errstate(divide="ignore", over="ignore"):
            if not (self.lut_scale_ > 0).all() or not np.isfinite(1 / self.lut_scale_).all():
                raise ValueError("lut_scale_ must be positive, with a finite float32 inverse")
        cols = check_array(self.subspace_cols_, "subspace_cols_", np.int64, (D,))
        if not np.array_equal(np.sort(cols), np.arange(D)):
            raise ValueError(f"subspace_cols_ must be a permutation of the D = {D} columns")
        bounds = check_array(self.subspace_bounds_, "subspace_bounds_", np.int64, (C + 1,))
        if bounds[0] != 0 or bounds[-1] != D or (np.diff(bounds) < 1).any():
            raise ValueError(f"subspace_bounds_ must rise from 0 to D = {D} by at least one "
                             f"column per codebook, got {bounds.tolist()}")
        for name in ("float_nmse_", "quantization_nmse_"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                    or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self._check_encoder_state(C, D, bounds)


@_persist.savable
class LutMatmul(_LutEstimator):
    """MADDNESS approximate matrix product (Blalock & Guttag 2021).

    Parameters
    ----------
    ncodebooks : int
        C, the number of 4-bit codes per row (1 ≤ C ≤ min(D, 256)).
    partition : {"contiguous", "opq", "r2"}
        How the D columns are split into C subspaces: MADDNESS's contiguous ranges,
        or ITLUMM's permutations (OPQ rotation matched to a
        permutation, or R² clustering with optimal leaf ordering; :mod:`lutengine.partition`).
    lut_objective : {"ridge", "mse", "kl"}
        "ridge": the tables are P·B with ridge prototypes (MADDNESS §4.3). "mse" / "kl":
        ITLUMM's tables T fitted through ``activation`` from P·B, minimising the squared
        error or the KL divergence of the softmax (:func:`lutengine.lut_opt.optimize_luts`).
    activation : {None, "relu", "softmax"}
        σ of the "mse" objective ("kl" needs "softmax"; "ridge" needs None).
    quantize : bool
        int8 tables (True) or exact float32 tables (False).
    ridge_lambda : float
        λ of the ridge step (1 in the reference).
    lut_lambda : float
        λ of ‖T − P·B‖² in the "mse" / "kl" objectives (1 in ITLUMM).
    random_state : int or None
        Seed of the OPQ partition (MADDNESS itself is deterministic).
    progress : bool
        Show a progress bar while learning the trees.

    Attributes
    ----------
    split_dims_, thresholds_ : ndarray (C, 4), (C, 16)
        The hash trees: the column split at each level, heap-ordered thresholds.
    prototypes_ : ndarray (C, 16, D)
        Ridge prototypes (MADDNESS §4.3).
    luts_ : ndarray (C, 16, M)
        Float32 tables (P·B, or ITLUMM's fitted tables).
    luts_q_, lut_offsets_, lut_scale_ : ndarray (C, 16, M) uint8, (C, M), (M,)
        The int8 tables: ``luts_ ≈ lut_offsets_[c, m] + luts_q_ / lut_scale_[m]``, one
        power-of-two scale per output and one offset per codebook and output.
    float_nmse_, quantization_nmse_ : float
        ‖Ŷ − Y‖² / ‖Y‖² on the training rows, Y = A_train·B + bias, with the float tables
        and with the int8 tables (all rows, in chunks). A fit with ``quantize=True`` warns
        (:class:`QuantizationWarning`) when the second is more than twice the first (and
        more than :data:`QUANTIZATION_NMSE_FLOOR` above it).
    """

    _param_names = ("ncodebooks", "partition", "lut_objective", "activation", "quantize",
                    "ridge_lambda", "lut_lambda", "random_state", "progress")
    _state_attrs = _LutEstimator._common_state + ("split_dims_", "thresholds_")

    def __init__(self, ncodebooks=16, partition="contiguous", lut_objective="ridge",
                 activation=None, quantize=True, ridge_lambda=1.0, lut_lambda=1.0,
                 random_state=None, progress=True):
        self.ncodebooks = ncodebooks
        self.partition = partition
        self.lut_objective = lut_objective
        self.activation = activation
        self.quantize = quantize
        self.ridge_lambda = ridge_lambda
        self.lut_lambda = lut_lambda
        self.random_state = random_state
        self.progress = progress

    def _check_params(self, n_features):
        super()._check_params(n_features)
        check_choice(self.partition, "partition", {"contiguous", "opq", "r2"})
        check_choice(self.lut_objective, "lut_objective", set(ACTIVATIONS))
        check_choice(self.activation, f"activation (with lut_objective={self.lut_objective!r})",
                     ACTIVATIONS[self.lut_objective])
        for name in ("ridge_lambda", "lut_lambda"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def _partition(self, A):
        return partition.learn(self.partition, A, self.ncodebooks, self.random_state)

    def _fit_luts(self, A, B, state, luts):
        if self.lut_objective == "ridge":
            return luts
        codes, _ = self._encode(A, state)
        return optimize_luts(codes, A, B, state["bias_"], luts, self.lut_objective,
                             self.activation, lam=self.lut_lambda, progress=self.progress)

    def _fit_encoder(self, A, cols, bounds):
        C, D = self.ncodebooks, A.shape[1]
        split_dims = np.zeros((C, trees.NLEVELS), dtype=np.int64)
        thresholds = np.zeros((C, 16), dtype=np.float32)
        codes = np.zeros((A.shape[0], C), dtype=np.uint8)
        P0 = np.zeros((C, 16, D), dtype=np.float32)
        for c in tqdm(range(C), desc="hash trees", disable=not self.progress, leave=False):
            sub_cols = cols[bounds[c]:bounds[c + 1]]
            dims, thresholds[c], codes[:, c], means = trees.learn_tree(np.ascontiguousarray(A[:, sub_cols]))
            split_dims[c] = sub_cols[dims]
            P0[c][:, sub_cols] = means
        return {"split_dims_": split_dims, "thresholds_": thresholds,
                "prototypes_": ridge_prototypes(A, codes, P0, self.ridge_lambda)}

    def _encode(self, A, state=None):
        """Codes of A and whether a NaN/Inf was read, with the fitted trees (or ``state``'s)."""
        state = vars(self) if state is None else state
        return _dispatch.lut.encode_tree(A, state["split_dims_"], state["thresholds_"])

    def _encode_packed(self, A):
        return _dispatch.lut.encode_tree_packed(A, self.split_dims_, self.thresholds_)

    def _check_encoder_state(self, C, D, bounds):
        check_index_range(check_array(self.split_dims_, "split_dims_", np.int64,
                                      (C, trees.NLEVELS)), "split_dims_", 0, D)
        if np.isnan(check_array(self.thresholds_, "thresholds_", np.float32, (C, 16))).any():
            raise ValueError("thresholds_ contains NaN")


@_persist.savable
class PQMatmul(_LutEstimator):
    """Product-quantisation baseline: 16 k-means centroids per contiguous subspace,
    nearest-centroid encoding, the same tables and scan as :class:`LutMatmul`.

    Attributes: ``centroids_`` (C, 16, widest subspace), and ``prototypes_``, ``luts_``,
    ``luts_q_``, ``lut_offsets_``, ``lut_scale_``, ``float_nmse_``, ``quantization_nmse_``
    as in :class:`LutMatmul`.
    """

    _param_names = ("ncodebooks", "quantize", "random_state", "progress")
    _state_attrs = _LutEstimator._common_state + ("centroids_",)

    def __init__(self, ncodebooks=16, quantize=True, random_state=None, progress=True):
        self.ncodebooks = ncodebooks
        self.quantize = quantize
        self.random_state = random_state
        self.progress = progress

    def _fit_encoder(self, A, cols, bounds):
        if A.shape[0] < 16:
            raise ValueError(f"A_train must have at least 16 rows for PQ's 16 centroids per "
                             f"subspace, got shape {A.shape}")
        from sklearn.cluster import KMeans  # here, not at import: sklearn takes ~2 s to load
        from sklearn.exceptions import ConvergenceWarning
        C, D = self.ncodebooks, A.shape[1]
        width = int(np.max(np.diff(bounds)))
        centroids = np.zeros((C, 16, width), dtype=np.float32)
        P = np.zeros((C, 16, D), dtype=np.float32)
        for c in tqdm(range(C), desc="k-means", disable=not self.progress, leave=False):
            sub_cols = cols[bounds[c]:bounds[c + 1]]
            km = KMeans(n_clusters=16, n_init=1, random_state=self.random_state)
            # many tiny k-means: threads only add overhead (and oversubscribe numba's)
            with warnings.catch_warnings(), threadpool_limits(1):
                # subspaces with < 16 distinct rows (e.g. blank pixels) get duplicate centroids
                warnings.simplefilter("ignore", ConvergenceWarning)
                km.fit(A[:, sub_cols])
            centroids[c, :, : sub_cols.size] = km.cluster_centers_
            P[c][:, sub_cols] = km.cluster_centers_
        return {"centroids_": centroids, "prototypes_": P}

    def _encode(self, A, state=None):
        """Codes of A and whether a NaN/Inf was read, with the fitted centroids (or ``state``'s)."""
        state = vars(self) if state is None else state
        return _dispatch.lut.encode_pq(A, state["subspace_cols_"], state["subspace_bounds_"],
                                   state["centroids_"])

    def _check_encoder_state(self, C, D, bounds):
        width = int(np.diff(bounds).max())
        centroids = check_array(self.centroids_, "centroids_", np.float32, (C, 16, None))
        if centroids.shape[2] < width:
            raise ValueError(f"centroids_ must be at least {width} wide (the widest subspace), "
                             f"got shape {centroids.shape}")
        check_all_finite(centroids, "centroids_")
        # squared distances (width terms of (x − c)² with |x| up to |c|) must stay finite
        bound = np.sqrt(np.finfo(np.float32).max / (4 * max(width, 1)))
        if np.abs(centroids).max(initial=0) > bound:
            raise ValueError(f"centroids_ must lie within ±{bound:.3g} (their squared distances "
                             "would overflow float32)")
