"""Prototypes and lookup tables fitted to the training codes.

With G the one-hot matrix of the training codes (N × 16C; never formed, its products
come from ``kernels.onehot`` and ``kernels.scan``):

``ridge_prototypes``: MADDNESS's prototypes (Blalock & Guttag 2021, §4.3). With P0 the
stacked leaf means, ``P = argmin ‖A − G P‖² + λ ‖P − P0‖²``: a ridge that shrinks toward the
leaf means, solved through the normal equations
``(GᵀG + λI) P = GᵀA + λ P0``. P is dense over all D columns.

``optimize_luts``: ITLUMM's model-aware tables (McCarter & Dronen 2022, §2.2 "Model-Aware
Lookup-Table Optimization"). The tables T (C, 16, M) are fitted directly to
the layer's output after its nonlinearity σ, ``min_T ℓ(σ(A B + b), σ(G T + b)) +
λ ‖T − P0 B‖²``, by L-BFGS from the ridge tables P0 B. ℓ is the squared error, or the
KL divergence between softmax outputs computed with log-softmax (ITLUMM passes
probabilities to torch's KLDivLoss, which expects log-probabilities: not the textbook KL).
"""

import math

import numpy as np
import scipy.linalg
import scipy.optimize
from tqdm import tqdm

from . import _dispatch
from ._validation import check_choice, check_codes


def ridge_prototypes(A, codes, initial_prototypes, lam=1.0):
    """Return prototypes (C, 16, D) float32 from A (N, D), codes (N, C) and P0 (C, 16, D)."""
    C, K, D = initial_prototypes.shape
    gram, rowsum = _dispatch.lut.onehot_gram(codes), _dispatch.lut.onehot_rowsum(codes, A)
    P0 = initial_prototypes.reshape(C * K, D).astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    rowsum += lam * P0
    # in place: no copy of the (16C)² matrix (128 MB at C = 256)
    P = scipy.linalg.solve(gram, rowsum, assume_a="pos", overwrite_a=True, overwrite_b=True)
    return P.reshape(C, K, D).astype(np.float32)


def _log_softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))


def _softmax_vjp(Z, S, dS):
    return S * (dS - (dS * S).sum(axis=1, keepdims=True))


#: activation name -> (σ(Z), the vector-Jacobian product (Z, σ(Z), dL/dσ) -> dL/dZ)
_ACTIVATIONS = {
    None: (lambda Z: Z, lambda Z, S, dS: dS),
    "relu": (lambda Z: np.maximum(Z, 0.0), lambda Z, S, dS: dS * (Z > 0)),
    "softmax": (lambda Z: np.exp(_log_softmax(Z)), _softmax_vjp),
}


def _check_args(codes, A, B, bias, luts0, objective, activation, lam):
    check_choice(objective, "objective", {"mse", "kl"})
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'softmax', got {activation!r}")
    if objective == "kl" and activation != "softmax":
        raise ValueError(f"objective='kl' compares probabilities: activation must be 'softmax', "
                         f"got {activation!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)) \
            or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if luts0.ndim != 3 or luts0.shape[1] != 16:
        raise ValueError(f"luts0 must have shape (C, 16, M), got {luts0.shape}")
    C, _, M = luts0.shape
    check_codes(codes, "codes", C)
    if A.ndim != 2 or A.shape[0] != codes.shape[0] or B.shape != (A.shape[1], M) \
            or bias.shape != (M,):
        raise ValueError(f"shapes do not match: codes {codes.shape}, A {A.shape} (N, D), "
                         f"B {B.shape} (D, M), bias {bias.shape} (M,), luts0 {luts0.shape}")


#: rows of A cast to float64 at a time by :func:`_float64_product`: about 32 MB
_PRODUCT_BLOCK_ELEMENTS = 1 << 22


def _float64_product(A, B):
    """``A @ B`` in float64, casting A a block of rows at a time (no float64 copy of A)."""
    out = np.empty((A.shape[0], B.shape[1]))
    step = max(1, _PRODUCT_BLOCK_ELEMENTS // max(1, A.shape[1]))
    for start in range(0, A.shape[0], step):
        np.matmul(A[start:start + step].astype(np.float64), B, out=out[start:start + step])
    return out


def _loss_and_grad(codes, logits, bias, luts0, objective, activation, lam):
    """The objective of :func:`optimize_luts` as f(x) -> (loss, gradient), x = T.ravel()."""
    N, shape = codes.shape[0], luts0.shape
    bias32 = bias.astype(np.float32)
    forward, vjp = _ACTIVATIONS[activation]
    if objective == "kl":
        log_p = _log_softmax(logits)
        p = np.exp(log_p)
        neg_entropy = float(np.sum(p * log_p))
    else:
        target = forward(logits)

    def f(x):
        T = x.reshape(shape)
        # G·T + b by the float32 scan: measured on MNIST (60000 rows, C=16), a float64
        # forward pass stops L-BFGS for the same reason (converged), losses within 1e-5
        Z = _dispatch.lut.scan_float(codes, T.astype(np.float32), bias32).astype(np.float64)
        if objective == "kl":
            log_q = _log_softmax(Z)
            loss = (neg_entropy - np.sum(p * log_q)) / N
            dZ = (np.exp(log_q) - p) / N
        else:
            S = forward(Z)
            R = S - target
            loss = np.sum(R * R) / N
            dZ = vjp(Z, S, (2.0 / N) * R)
        diff = T - luts0
        loss += lam / N * np.sum(diff * diff)
        grad = _dispatch.lut.onehot_rowsum(codes, dZ.astype(np.float32)).reshape(shape)
        grad += (2.0 * lam / N) * diff
        return loss, grad.ravel()

    return f


def optimize_luts(codes, A, B, bias, luts0, objective="mse", activation=None, lam=1.0,
                  max_iter=100, progress=True):
    """ITLUMM tables (C, 16, M) float32 for the codes (N, C) of the rows A (N, D).

    Minimises, by L-BFGS-B from ``luts0`` (the ridge tables P0·B), with Z = G·T + bias:
    ``"mse"``: (1/N) Σ_n ‖σ(Z_n) − σ(A_n B + bias)‖² + (λ/N) ‖T − luts0‖²;
    ``"kl"``: (1/N) Σ_n KL(softmax(A_n B + bias) ‖ softmax(Z_n)) + (λ/N) ‖T − luts0‖²,
    which needs ``activation="softmax"``. σ is None (identity), "relu" or "softmax".
    """
    A, B = np.asarray(A), np.asarray(B)
    bias = np.asarray(bias, dtype=np.float64)
    luts0 = np.asarray(luts0, dtype=np.float64)
    _check_args(codes, A, B, bias, luts0, objective, activation, lam)
    logits = _float64_product(A, np.asarray(B, np.float64)) + bias
    f = _loss_and_grad(codes, logits, bias, luts0, objective, activation, float(lam))
    last = {}

    def f_recorded(x):
        last["loss"], grad = f(x)
        return last["loss"], grad

    with tqdm(total=max_iter, desc=f"LUT {objective}", disable=not progress, leave=False) as bar:
        def advance(xk):  # L-BFGS-B's new iterate is the last point it evaluated
            bar.set_postfix(loss=f"{last['loss']:.6g}")
            bar.update()

        result = scipy.optimize.minimize(f_recorded, luts0.ravel(), jac=True, method="L-BFGS-B",
                                         callback=advance, options={"maxiter": max_iter})
    return result.x.reshape(luts0.shape).astype(np.float32)
