"""lutengine.nn: the NumPy trainer against finite differences, the MLP container against
scikit-learn, and the incremental layer replacement of ITLUMM."""

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

import lutengine as le
from lutengine import nn
from lutengine.experiments import _common


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


def _random_params(sizes, rng):
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(scale=0.7, size=(n_in, n_out)), rng.normal(scale=0.1, size=n_out)]
    return params


@pytest.mark.parametrize("sizes", [(5, 6, 3), (5, 6, 4, 3)])
@pytest.mark.parametrize("l1, kwta", [(0.0, None), (0.05, None), (0.05, 3)])
def test_gradients_match_finite_differences(sizes, l1, kwta):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, 7)
    params = _random_params(sizes, rng)
    _, grads = nn.loss_and_grads(params, X, y, l1, kwta)
    for p, g in zip(params, grads):
        numeric = _numeric_grad(lambda: nn.loss_and_grads(params, X, y, l1, kwta)[0], p)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)


def test_loss_is_cross_entropy_plus_l1_of_the_hidden_activations():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(4, 3)), np.array([0, 1, 1, 0])
    W1, b1, W2, b2, W3, b3 = params = _random_params((3, 5, 4, 2), rng)
    H1 = np.maximum(X @ W1 + b1, 0)
    H2 = np.maximum(H1 @ W2 + b2, 0)
    logits = H2 @ W3 + b3
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(4), y].mean() + 0.1 * (H1.sum() + H2.sum()) / 4
    assert nn.loss_and_grads(params, X, y, 0.1)[0] == pytest.approx(expected)


def test_kwta_mask_keeps_the_k_largest_per_row():
    Z = np.array([[3.0, -1.0, 2.0, 0.5], [0.0, 4.0, -2.0, 1.0]])
    assert nn.kwta_mask(Z, 2).tolist() == [[True, False, True, False],
                                           [False, True, False, True]]
    assert nn.kwta_mask(Z, 4).all()


@pytest.fixture(scope="module")
def digits():
    return _common.load_data("digits")


@pytest.fixture(scope="module")
def digits_net(digits):
    Xtr, ytr, _, _ = digits
    return nn.MLP.train(Xtr, ytr, [32, 32], epochs=40, progress=False)


def test_training_learns_digits_and_l1_sparsifies(digits):
    Xtr, ytr, Xte, yte = digits
    activity = {}
    for l1 in (0.0, 1e-2):
        net = nn.MLP.train(Xtr, ytr, [32], epochs=50, l1=l1, progress=False)
        (W1, b1), (W2, b2) = ((layer.W, layer.b) for layer in net.layers)
        assert all(a.dtype == np.float32 for a in (W1, b1, W2, b2))
        assert (W1.shape, b1.shape, W2.shape, b2.shape) == ((64, 32), (32,), (32, 10), (10,))
        H = np.maximum(Xte @ W1 + b1, 0)
        assert net.score(Xte, yte) == _common.accuracy(H @ W2 + b2, yte) > 0.85
        activity[l1] = H.sum(axis=1).mean()
    assert activity[1e-2] < activity[0.0]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_from_sklearn_predicts_as_sklearn(digits):
    Xtr, ytr, Xte, _ = digits
    labels = np.array(list("abcdefghij"))[ytr]
    clf = MLPClassifier((16, 8), max_iter=30, random_state=0).fit(Xtr, labels)
    net = nn.MLP.from_sklearn(clf)
    assert len(net.layers) == 3
    assert isinstance(net, nn.Network)
    np.testing.assert_allclose(net.forward(Xte), clf.predict_proba(Xte), atol=1e-5)
    assert np.array_equal(net.predict(Xte), clf.predict(Xte))
    assert net.score(Xte, clf.predict(Xte)) == 1.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_from_sklearn_rejects_other_networks(digits):
    Xtr, ytr, _, _ = digits
    clf = MLPClassifier((8,), activation="tanh", max_iter=5, random_state=0).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="ReLU"):
        nn.MLP.from_sklearn(clf)
    with pytest.raises(ValueError, match="fitted"):
        nn.MLP.from_sklearn(MLPClassifier())


def _inputs_of(net, X, i):
    """What weight layer i of net receives for X."""
    return net.forward(X, output=net.layer_nodes[i].inputs[0])


def _logits(net, X):
    return net.forward(X, output=net.node(net.output).inputs[0])


def test_an_mlp_is_a_chain_network_whose_values_follow_the_layers(digits_net, digits):
    X = digits[2][:20]
    assert [type(op).__name__ for op in digits_net.ops] == [
        "Linear", "ReLU", "Linear", "ReLU", "Linear", "Softmax"]
    (W1, b1), (W2, b2), (W3, b3) = ((layer.W, layer.b) for layer in digits_net.layers)
    H1 = np.maximum(X @ W1 + b1, 0)
    np.testing.assert_allclose(_inputs_of(digits_net, X, 1), H1, rtol=1e-6)
    H2 = np.maximum(H1 @ W2 + b2, 0)
    logits = H2 @ W3 + b3
    np.testing.assert_allclose(_logits(digits_net, X), logits, rtol=1e-5, atol=1e-5)
    P = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(digits_net.forward(X), P / P.sum(1, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 64\), got \(20, 10\)"):
        digits_net.predict(X[:, :10])


def test_replacing_one_layer_without_finetuning(digits_net, digits):
    Xtr, ytr, _, _ = digits
    before = [layer.W.copy() for layer in digits_net.layers]
    new = nn.replace_layers(digits_net, Xtr, ytr, 4, layers=[1], finetune=False, progress=False)
    # the input network is left as it was
    assert all(np.array_equal(layer.W, W) for layer, W in zip(digits_net.layers, before))
    assert isinstance(new.layers[1], le.LutMatmul) and new.layers[1].ncodebooks == 4
    assert np.array_equal(new.layers[0].W, before[0]) and np.array_equal(new.layers[2].W, before[2])
    # layer 1 is MADDNESS fitted on what it receives
    H = _inputs_of(digits_net, Xtr, 1)
    ref = le.LutMatmul(4, progress=False).fit(H, before[1], bias=digits_net.layers[1].b)
    np.testing.assert_array_equal(new.layers[1].predict(H), ref.predict(H))
    np.testing.assert_allclose(_logits(new, Xtr),
                               nn.relu(ref.predict(H)) @ before[2] + digits_net.layers[2].b,
                               rtol=1e-6, atol=1e-5)


def test_finetuning_recovers_accuracy_on_the_training_data(digits_net, digits):
    Xtr, ytr, _, _ = digits
    frozen = nn.replace_layers(digits_net, Xtr, ytr, 2, layers=[0], finetune=False,
                               progress=False)
    tuned = nn.replace_layers(digits_net, Xtr, ytr, 2, layers=[0], finetune=True,
                              finetune_settings={"epochs": 20}, progress=False)
    np.testing.assert_array_equal(tuned.layers[0].predict(Xtr), frozen.layers[0].predict(Xtr))
    assert not np.array_equal(tuned.layers[1].W, frozen.layers[1].W)
    assert tuned.score(Xtr, ytr) > frozen.score(Xtr, ytr)


def test_replacing_every_layer(digits_net, digits):
    Xtr, ytr, Xte, yte = digits
    new = nn.replace_layers(digits_net, Xtr, ytr, [8, 4, 4], finetune=False, progress=False)
    assert [type(layer) for layer in new.layers] == [le.LutMatmul] * 3
    assert [layer.ncodebooks for layer in new.layers] == [8, 4, 4]
    # the last layer was fitted on the activations of the two replaced layers before it
    H = _inputs_of(new, Xtr, 2)
    ref = le.LutMatmul(4, progress=False).fit(H, digits_net.layers[2].W,
                                              bias=digits_net.layers[2].b)
    np.testing.assert_array_equal(_logits(new, Xtr), ref.predict(H))
    assert new.score(Xte, yte) > 0.3  # far above chance (0.1) with 16 codebooks in all


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": [3]}, "layers must be indices in 0..2"),
    ({"layers": []}, "layers must be indices"),
    ({"y_train": np.full(1437, 11)}, "y_train must hold 1437 labels"),
    ({"X_train": np.zeros((5, 3))}, r"X_train must have shape \(n, 64\), got \(5, 3\)"),
])
def test_replace_layers_rejects_bad_input(digits_net, digits, kwargs, match):
    args = {"X_train": digits[0], "y_train": digits[1], **kwargs}
    with pytest.raises(ValueError, match=match):
        nn.replace_layers(digits_net, args.pop("X_train"), args.pop("y_train"), 2,
                          progress=False, **args)


def test_replace_layers_needs_dense_layers_after_the_first_target(digits_net, digits):
    once = nn.replace_layers(digits_net, digits[0], digits[1], 2, layers=[2], finetune=False,
                             progress=False)
    with pytest.raises(ValueError, match="must be Dense"):
        nn.replace_layers(once, digits[0], digits[1], 2, layers=[1], progress=False)
