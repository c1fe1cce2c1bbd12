"""ITLUMM table optimisation (lutengine.lut_opt.optimize_luts) against dense NumPy references:
the loss and its gradient, the closed-form ridge optimum, and a held-out KL gain on MNIST."""

import warnings

import numpy as np
import pytest
from scipy.special import log_softmax, rel_entr, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import lutengine as le
import reference as ref
from lutengine import lut_opt

PAIRS = [("mse", None), ("mse", "relu"), ("mse", "softmax"), ("kl", "softmax")]
SIGMA = {None: lambda Z: Z, "relu": lambda Z: np.maximum(Z, 0.0),
         "softmax": lambda Z: softmax(Z, axis=1)}


def _problem(seed, N=60, C=2, D=5, M=4):
    """Tiny float64 data: codes, A, B, bias and start tables luts0 (not the optimum)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, (N, C), dtype=np.uint8)
    A = rng.standard_normal((N, D))
    B = rng.standard_normal((D, M))
    bias = rng.standard_normal(M)
    luts0 = rng.standard_normal((C, 16, M))
    return codes, A, B, bias, luts0


def _dense_loss(T, codes, A, B, bias, luts0, objective, activation, lam):
    """The objective with the one-hot matrix G formed explicitly."""
    N, M = A.shape[0], B.shape[1]
    Z = ref.ref_onehot(codes) @ T.reshape(-1, M) + bias
    Y = A @ B + bias
    if objective == "kl":
        fit = rel_entr(softmax(Y, axis=1), softmax(Z, axis=1)).sum() / N
    else:
        fit = ((SIGMA[activation](Z) - SIGMA[activation](Y)) ** 2).sum() / N
    return fit + lam / N * ((T - luts0) ** 2).sum()


def _module_loss_and_grad(codes, A, B, bias, luts0, objective, activation, lam):
    return lut_opt._loss_and_grad(codes, A @ B + bias, bias, luts0, objective, activation, lam)


# the forward pass sums float32 tables: values and gradients agree to float32 precision
RTOL32 = 1e-5


@pytest.mark.parametrize("objective, activation", PAIRS)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_match_dense_finite_differences(objective, activation, seed):
    codes, A, B, bias, luts0 = _problem(seed)
    lam = 0.7
    T = luts0 + 0.5 * np.random.default_rng(seed + 10).standard_normal(luts0.shape)
    Z = ref.ref_onehot(codes) @ T.reshape(-1, 4) + bias
    assert np.abs(Z).min() > 1e-3  # no relu kink within the finite-difference step
    f = _module_loss_and_grad(codes, A, B, bias, luts0, objective, activation, lam)
    loss, grad = f(T.ravel())
    dense = _dense_loss(T, codes, A, B, bias, luts0, objective, activation, lam)
    assert loss == pytest.approx(dense, rel=RTOL32)
    h = 1e-5
    args = (codes, A, B, bias, luts0, objective, activation, lam)
    fd = np.empty(T.size)
    for i in range(T.size):
        step = np.zeros(T.size)
        step[i] = h
        step = step.reshape(T.shape)
        fd[i] = (_dense_loss(T + step, *args) - _dense_loss(T - step, *args)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=RTOL32 * np.abs(fd).max())


def test_kl_value_is_the_log_softmax_kl():
    codes, A, B, bias, luts0 = _problem(2)
    T = luts0 + 3.0  # large logits: the log-softmax form must stay finite and exact
    Z = ref.ref_onehot(codes) @ T.reshape(-1, 4) + bias
    log_p, log_q = log_softmax(A @ B + bias, axis=1), log_softmax(Z, axis=1)
    expected = (np.exp(log_p) * (log_p - log_q)).sum() / A.shape[0]
    f = _module_loss_and_grad(codes, A, B, bias, luts0, "kl", "softmax", 0.0)
    assert f(T.ravel())[0] == pytest.approx(expected, rel=RTOL32)


def test_identity_mse_optimum_is_the_closed_form_ridge():
    codes, A, B, bias, luts0 = _problem(3, N=200, M=3)
    lam = 1.0
    G = ref.ref_onehot(codes)
    T_star = np.linalg.solve(G.T @ G + lam * np.eye(G.shape[1]),
                             G.T @ (A @ B) + lam * luts0.reshape(-1, 3)).reshape(luts0.shape)
    T = lut_opt.optimize_luts(codes, A, B, bias, luts0, "mse", None, lam, max_iter=500,
                              progress=False)
    scale = np.abs(T_star).max()
    assert np.abs(luts0 - T_star).max() > 0.1 * scale  # the start point is far from the optimum
    np.testing.assert_allclose(T, T_star, rtol=0, atol=1e-3 * scale)
    args = (codes, A, B, bias, luts0, "mse", None, lam)
    assert _dense_loss(T, *args) == pytest.approx(_dense_loss(T_star, *args), rel=1e-6)


@pytest.mark.parametrize("objective, activation", PAIRS)
@pytest.mark.parametrize("seed", [4, 5, 6])
def test_optimisation_never_increases_the_loss(objective, activation, seed):
    codes, A, B, bias, luts0 = _problem(seed, N=120)
    args = (codes, A, B, bias, luts0, objective, activation, 1.0)
    T = lut_opt.optimize_luts(codes, A, B, bias, luts0, objective, activation, progress=False)
    assert T.dtype == np.float32 and T.shape == luts0.shape
    assert _dense_loss(T.astype(np.float64), *args) <= _dense_loss(luts0, *args)


def test_result_is_deterministic_and_progress_bar_is_optional(capsys):
    codes, A, B, bias, luts0 = _problem(7)
    T1 = lut_opt.optimize_luts(codes, A, B, bias, luts0, "kl", "softmax", progress=False)
    assert capsys.readouterr().err == ""
    T2 = lut_opt.optimize_luts(codes, A, B, bias, luts0, "kl", "softmax", progress=True)
    assert "loss=" in capsys.readouterr().err
    np.testing.assert_array_equal(T1, T2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="cosine"), "objective"),
    (dict(activation="tanh"), "activation"),
    (dict(objective="kl", activation=None), "activation"),
    (dict(objective="kl", activation="relu"), "activation"),
    (dict(lam=-1.0), "lam"),
    (dict(lam=float("nan")), "lam"),
    (dict(lam="1"), "lam"),
])
def test_bad_arguments_are_named(kwargs, match):
    codes, A, B, bias, luts0 = _problem(8)
    with pytest.raises(ValueError, match=match):
        lut_opt.optimize_luts(codes, A, B, bias, luts0, progress=False, **kwargs)


# -- real data ----------------------------------------------------------------------------

def test_kl_tables_lower_held_out_kl_on_mnist(data_root):
    """A softmax classifier layer (multinomial logistic regression on MNIST pixels) under
    MADDNESS with 2 codebooks: the KL-optimised tables beat the ridge tables on test rows."""
    X, y = le.datasets.load_mnist("train", data_home=data_root)
    A, y = X[:3000], y[:3000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 50 iterations are enough here
        clf = LogisticRegression(C=0.1, max_iter=50).fit(A, y)
    W, bias = np.ascontiguousarray(clf.coef_.T, np.float32), clf.intercept_.astype(np.float32)
    est = le.LutMatmul(ncodebooks=2, quantize=False, progress=False).fit(A, W, bias)
    T = lut_opt.optimize_luts(est.transform(A), A, W, bias, est.luts_, "kl", "softmax",
                              progress=False)
    X_test = le.datasets.load_mnist("test", data_home=data_root)[0][:2000]
    codes = est.transform(X_test)
    p = softmax(X_test.astype(np.float64) @ W + bias, axis=1)

    def held_out_kl(luts):
        q = softmax(ref.ref_scan_float(codes, luts, bias), axis=1)
        return rel_entr(p, q).sum(axis=1).mean()

    assert held_out_kl(T) < held_out_kl(est.luts_)
