"""The MIPS experiment (mips_mnist) on digits and its NumPy trainer, against references."""

import json

import numpy as np
import pytest

from lutengine.experiments import _common, _train, mips_mnist


def _numeric_grad(f, p, eps=1e-6):
    g = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + eps
        up = f()
        p[i] = old - eps
        down = f()
        p[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("l1, kwta", [(0.0, None), (0.05, None), (0.05, 3)])
def test_gradients_match_finite_differences(l1, kwta):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, 7)
    params = _train.init_params(5, 6, 3, rng, dtype=np.float64)
    params[1] += rng.normal(scale=0.1, size=6)
    params[3] += rng.normal(scale=0.1, size=3)
    _, grads = _train.loss_and_grads(params, X, y, l1, kwta)
    for p, g in zip(params, grads):
        numeric = _numeric_grad(lambda: _train.loss_and_grads(params, X, y, l1, kwta)[0], p)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)


def test_loss_is_cross_entropy_plus_l1_of_the_activations():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    W1, b1, W2, b2 = params = _train.init_params(3, 5, 2, rng, dtype=np.float64)
    H = np.maximum(X @ W1 + b1, 0)
    logits = H @ W2 + b2
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(4), y].mean() + 0.1 * H.sum() / 4
    assert _train.loss_and_grads(params, X, y, 0.1)[0] == pytest.approx(expected)


def test_kwta_mask_keeps_the_k_largest_per_row():
    Z = np.array([[3.0, -1.0, 2.0, 0.5], [0.0, 4.0, -2.0, 1.0]])
    assert _train.kwta_mask(Z, 2).tolist() == [[True, False, True, False],
                                               [False, True, False, True]]
    assert _train.kwta_mask(Z, 4).all()


def test_training_learns_digits_and_l1_sparsifies():
    Xtr, ytr, Xte, yte = _common.load_data("digits")
    act = {}
    for l1 in (0.0, 1e-2):
        W1, b1, W2, b2 = _train.train_mlp(Xtr, ytr, 32, epochs=50, l1=l1, progress=False)
        assert all(a.dtype == np.float32 for a in (W1, b1, W2, b2))
        assert (W1.shape, b1.shape, W2.shape, b2.shape) == ((64, 32), (32,), (32, 10), (10,))
        H = np.maximum(Xte @ W1 + b1, 0)
        assert _common.accuracy(H @ W2 + b2, yte) > 0.85
        act[l1] = np.abs(H).sum(axis=1).mean()
    assert act[1e-2] < act[0.0]


@pytest.fixture(scope="module")
def digits_result():
    return mips_mnist.run("digits", ks=(4, 8, 64), hidden=64, epochs=3, l1=1e-3,
                          progress=False)


def test_run_on_digits_schema_and_oracle(digits_result, tmp_path):
    result = digits_result
    assert result["dataset"] == "digits"
    assert set(result["full_accuracy"]) == {"plain", "sparse"}
    rows = result["rows"]
    assert len(rows) == 2 * 3 * 3
    fields = {"network", "method", "k", "active_neurons", "active_ratio", "accuracy",
              "relative_accuracy", "recall"}
    for r in rows:
        assert fields <= set(r)
        full = result["full_accuracy"][r["network"]]
        assert r["relative_accuracy"] == pytest.approx(r["accuracy"] / full)
        bottom = r["method"] != "h2alsh-top"
        assert r["active_neurons"] == min(2 * r["k"] if bottom else r["k"], 64)
        assert r["active_ratio"] == r["active_neurons"] / 64
        assert 0 <= r["recall"] <= 1
    for network in ("plain", "sparse"):
        oracle = {r["k"]: r for r in rows if r["network"] == network and r["method"] == "oracle"}
        assert oracle[64]["accuracy"] == result["full_accuracy"][network]
        assert all(r["recall"] == 1.0 for r in oracle.values())
        # 64 rows: every H2-ALSH ring is scanned exactly, so it finds the oracle's units
        same = {r["k"]: r for r in rows if r["network"] == network and r["method"] == "h2alsh"}
        assert all(r["recall"] == 1.0 for r in same.values())
        assert all(same[k]["accuracy"] == pytest.approx(oracle[k]["accuracy"], abs=0.01)
                   for k in oracle)
    accs = [np.mean([r["accuracy"] for r in rows if r["method"] == "oracle" and r["k"] == k])
            for k in (4, 8, 64)]
    assert accs[0] <= accs[1] <= accs[2]
    json.dumps(result)
    paths = _common.write_results(result, tmp_path, mips_mnist.NAME, plots=mips_mnist.PLOTS)
    assert {p.name for p in paths} >= {"mips_mnist.json", "mips_mnist_digits.md",
                                       "mips_mnist_digits_accuracy.png"}


def test_oracle_matches_a_direct_reference():
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(5, 12)).astype(np.float32)
    mask = mips_mnist.oracle_active(Z, 3, bottom=True)
    ranks = np.argsort(np.argsort(Z, axis=1), axis=1)
    assert np.array_equal(mask, (ranks < 3) | (ranks >= 9))
    assert np.array_equal(mips_mnist.oracle_active(Z, 3, bottom=False), ranks >= 9)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        mips_mnist.run("digits", methods=("lsh",), progress=False)
