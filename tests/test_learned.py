"""lutengine.learned: the straight-through gradients against finite differences of an
independent NumPy soft tree, the int8 fake quantisation against the kernels, the export
against the layer it came from, and that training lowers the loss."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lutengine as le  # noqa: E402
from lutengine import datasets, learned, nn  # noqa: E402
from lutengine._dispatch import lut as lut_kernels  # noqa: E402
from lutengine.experiments import learned_mnist  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


@pytest.fixture(scope="module")
def fashion():
    return datasets.load_fashion_subset()


def _layer(X, C=4, M=3, seed=0, **options):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((X.shape[1], M)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    fitted = le.LutMatmul(C, progress=False).fit(X, W, bias=b)
    return learned.LearnedLut(fitted, X, **options), fitted


def _perturb(layer, seed):
    """Move thresholds and tables away from their fitted values, as training would."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        layer.shift.add_(torch.from_numpy(rng.normal(0, 0.3, layer.shift.shape).astype(np.float32)))
        layer.tables.mul_(1.1).add_(torch.from_numpy(
            rng.normal(0, 0.05, layer.tables.shape).astype(np.float32)))


def _soft_tree_reference(x, theta, scale, node_dims, tables):
    """Σ_c Σ_leaf P(leaf | x) T[c, leaf] in float64, by walking every leaf's path:
    P = Π over its nodes of sigmoid(±(x[dim] − θ) / scale)."""
    n, (C, _, M) = x.shape[0], tables.shape
    out = np.zeros((n, M))
    for c in range(C):
        for leaf in range(16):
            prob, node = np.ones(n), 0
            for level in range(4):
                heap = 2 ** level - 1 + node
                bit = (leaf >> (3 - level)) & 1
                z = np.clip((x[:, node_dims[c, heap]] - theta[c, heap]) / scale[c, heap], -30, 30)
                prob *= 1 / (1 + np.exp(-z)) if bit else 1 / (1 + np.exp(z))
                node = 2 * node + bit
            out += prob[:, None] * tables[c, leaf]
    return out


def test_quantize_tables_matches_the_kernel():
    rng = np.random.default_rng(1)
    T = rng.normal(0, 3, (5, 16, 7)).astype(np.float32)
    T[:, :, 2] = 0.25  # one output with every table constant (scale 1)
    T[1, :, 4] *= 1000  # one codebook far wider than the others
    q, low, scale = learned.quantize_tables(torch.from_numpy(T))
    q_ref, offsets_ref, scales_ref = lut_kernels.quantize_luts(T)
    np.testing.assert_array_equal(q.numpy(), q_ref.astype(np.float32))
    np.testing.assert_array_equal(low.numpy(), offsets_ref)
    np.testing.assert_array_equal(scale.numpy(), scales_ref)


def test_untrained_layer_computes_the_fitted_lutmatmul(fashion):
    X = fashion[0][:3000]
    layer, fitted = _layer(X, C=8, M=10)
    x = torch.from_numpy(fashion[2])
    with torch.no_grad():
        codes = layer.codes(x, layer.thresholds())
        out = layer(x)
    np.testing.assert_array_equal(codes.numpy(), fitted.transform(fashion[2]))
    np.testing.assert_allclose(out.numpy(), fitted.predict(fashion[2]), rtol=1e-5, atol=1e-5)


def test_export_computes_what_the_trained_layer_computes(fashion):
    X = fashion[0][:3000]
    layer, _ = _layer(X, C=8, M=10)
    _perturb(layer, 2)
    exported = layer.export()
    A = fashion[2].copy()
    theta = layer.thresholds().detach().numpy()
    A[0, layer.node_dims[0, 0]] = theta[0, 0]  # a tie: x == θ goes left on both sides
    x = torch.from_numpy(A)
    with torch.no_grad():
        codes, out = layer.codes(x, layer.thresholds()), layer(x)
    np.testing.assert_array_equal(codes.numpy(), exported.transform(A))
    assert codes[0, 0] < 8
    np.testing.assert_allclose(out.numpy(), exported.predict(A), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.numpy().argmax(1), exported.predict(A).argmax(1))


def test_exported_layer_round_trips_through_save(tmp_path, digits):
    layer, _ = _layer(digits[0])
    _perturb(layer, 3)
    exported = layer.export()
    exported.save(tmp_path / "layer.npz")
    loaded = le.load(tmp_path / "layer.npz")
    np.testing.assert_array_equal(loaded.predict(digits[2]), exported.predict(digits[2]))


def test_gradients_match_finite_differences_of_the_soft_tree(digits):
    """Tables and bias get the hard lookup's gradient; thresholds and input the soft
    tree's, each checked against an independent NumPy computation."""
    layer, _ = _layer(digits[0], C=3, M=2)
    _perturb(layer, 4)
    layer.temperature = 0.7
    rng = np.random.default_rng(5)
    x = torch.from_numpy(digits[2][:12].copy()).requires_grad_(True)
    weights = rng.standard_normal((12, 2))
    (layer(x) * torch.from_numpy(weights).float()).sum().backward()

    theta0, sigma = layer.theta0.numpy().astype(np.float64), layer.sigma.numpy().astype(np.float64)
    shift, tables = layer.shift.detach().numpy().astype(np.float64), layer.tables.detach().numpy()
    node_dims, xs = layer.node_dims.numpy(), x.detach().numpy().astype(np.float64)

    def soft(shift_, x_):
        out = _soft_tree_reference(x_, theta0 + sigma * shift_, 0.7 * sigma, node_dims, tables)
        return float((out * weights).sum())

    eps = 1e-4
    for c, j in [(0, 0), (1, 3), (2, 9), (0, 14)]:
        up, down = shift.copy(), shift.copy()
        up[c, j] += eps
        down[c, j] -= eps
        numeric = (soft(up, xs) - soft(down, xs)) / (2 * eps)
        assert layer.shift.grad[c, j].item() == pytest.approx(numeric, rel=2e-3, abs=1e-4)
    for n, d in [(0, int(node_dims[0, 0])), (3, int(node_dims[1, 1])), (7, int(node_dims[2, 5]))]:
        up, down = xs.copy(), xs.copy()
        up[n, d] += eps
        down[n, d] -= eps
        numeric = (soft(shift, up) - soft(shift, down)) / (2 * eps)
        assert x.grad[n, d].item() == pytest.approx(numeric, rel=2e-3, abs=1e-4)
    unused = np.setdiff1d(np.arange(xs.shape[1]), node_dims)
    assert not x.grad[:, unused].any()

    codes = layer.codes(x.detach(), layer.thresholds()).numpy()
    expected = np.zeros(tables.shape)
    for n in range(12):
        for c in range(3):
            expected[c, codes[n, c]] += weights[n]
    np.testing.assert_allclose(layer.tables.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad.numpy(), weights.sum(0), rtol=1e-5)


def _cross_entropy(net, X, y):
    return float(-np.mean(np.log(net.forward(X)[np.arange(len(y)), y] + 1e-12)))


@pytest.mark.parametrize("schedule", ["joint", "progressive"])
def test_training_lowers_the_loss_of_the_exported_network(digits, schedule):
    Xtr, ytr = digits[:2]
    net = nn.MLP.train(Xtr, ytr, [32], epochs=20, progress=False)
    before = [layer.W.copy() for layer in net.layers]
    start = nn.learn_luts(net, Xtr, ytr, 4, epochs=0, progress=False)
    trained = nn.learn_luts(net, Xtr, ytr, 4, epochs=6, schedule=schedule, progress=False)
    assert all(isinstance(layer, le.LutMatmul) for layer in trained.layers)
    assert _cross_entropy(trained, Xtr, ytr) < 0.8 * _cross_entropy(start, Xtr, ytr)
    assert len(trained.training_loss_) == 6  # epochs in all, whatever the schedule
    if schedule == "joint":  # progressive losses restart with each converted layer
        assert trained.training_loss_[-1] < trained.training_loss_[0]
    assert trained.score(Xtr, ytr) > start.score(Xtr, ytr)
    assert all(np.array_equal(layer.W, W) for layer, W in zip(net.layers, before))


def test_frozen_parts_stay_as_fitted(digits):
    Xtr, ytr = digits[:2]
    net = nn.MLP.train(Xtr, ytr, [16], epochs=5, progress=False)
    start = nn.learn_luts(net, Xtr, ytr, 2, epochs=0, progress=False)
    tables_only = nn.learn_luts(net, Xtr, ytr, 2, epochs=2, learn_thresholds=False,
                                progress=False)
    thresholds_only = nn.learn_luts(net, Xtr, ytr, 2, epochs=2, learn_tables=False,
                                    progress=False)
    for first, tab, thr in zip(start.layers, tables_only.layers, thresholds_only.layers):
        np.testing.assert_array_equal(tab.thresholds_, first.thresholds_)
        assert not np.array_equal(tab.luts_, first.luts_)
        np.testing.assert_array_equal(thr.luts_, first.luts_)
        assert not np.array_equal(thr.thresholds_, first.thresholds_)


def test_learning_some_layers_keeps_the_others_exact(digits):
    Xtr, ytr = digits[:2]
    net = nn.MLP.train(Xtr, ytr, [16, 16], epochs=5, progress=False)
    out = nn.learn_luts(net, Xtr, ytr, [2], layers=[1], epochs=1, progress=False)
    assert isinstance(out.layers[0], nn.Dense) and isinstance(out.layers[2], nn.Dense)
    assert out.layers[1].ncodebooks == 2
    for i in (0, 2):
        np.testing.assert_array_equal(out.layers[i].W, net.layers[i].W)


@pytest.mark.parametrize("kwargs, match", [
    ({"ncodebooks": [2, 2, 2]}, "ncodebooks"),
    ({"ncodebooks": 2.5}, "ncodebooks"),
    ({"ncodebooks": 2, "layers": [3]}, "layers"),
    ({"ncodebooks": 2, "schedule": "sideways"}, "schedule"),
    ({"ncodebooks": 2, "epochs": -1}, "epochs"),
    ({"ncodebooks": 100}, "ncodebooks"),
])
def test_bad_arguments_name_themselves(digits, kwargs, match):
    Xtr, ytr = digits[:2]
    net = nn.MLP.train(Xtr, ytr, [16], epochs=1, progress=False)
    with pytest.raises((ValueError, TypeError), match=match):
        nn.learn_luts(net, Xtr, ytr, progress=False, **kwargs)


def test_bad_training_data_is_rejected(digits):
    Xtr, ytr = digits[:2]
    net = nn.MLP.train(Xtr, ytr, [16], epochs=1, progress=False)
    with pytest.raises(ValueError, match="X_train"):
        nn.learn_luts(net, Xtr[:, :10], ytr, 2, progress=False)
    with pytest.raises(ValueError, match="y_train"):
        nn.learn_luts(net, Xtr, ytr[:-1], 2, progress=False)
    bad = Xtr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="X_train"):
        nn.learn_luts(net, bad, ytr, 2, progress=False)


def test_reproduce_learned_mnist_on_digits(tmp_path, digits):
    import json

    from lutengine.cli import main

    argv = ["reproduce", "learned-mnist", "--dataset", "digits", "--networks", "itlumm",
            "--ncodebooks", "2", "4", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "learned_mnist_digits.json").read_text())
    (net,) = result["nets"]
    assert net["network"] == "64x30x30x30x10"
    # the exact network is nn.MLP.train's, deterministic: retrained here, same accuracy
    Xtr, ytr, Xte, yte = digits
    exact = nn.MLP.train(Xtr, ytr, [30, 30, 30], random_state=0, progress=False)
    assert net["exact_accuracy"] == exact.score(Xte, yte)
    assert [(r["method"], r["ncodebooks"]) for r in result["rows"]] == [
        ("exact", None), ("replace_layers", 2), ("learned", 2), ("replace_layers", 4),
        ("learned", 4)]
    for row in result["rows"]:
        assert len(row["seeds"]) == (2 if row["method"] == "learned" else 1)
        assert row["accuracy"] == pytest.approx(np.mean(row["seeds"]))
        assert row["accuracy_std"] == pytest.approx(np.std(row["seeds"]))
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"] / net["exact_accuracy"])
        assert row["speedup_vs_exact"] > 0 and row["train_seconds"] > 0
    # the learned row's first seed is learn_luts with those settings
    again = nn.learn_luts(exact, Xtr, ytr, 4, epochs=1, random_state=0, progress=False)
    assert result["rows"][4]["seeds"][0] == again.score(Xte, yte)
    assert [r["method"] for r in result["ablation"]] == list(learned_mnist.ABLATIONS)
    for suffix in ("accuracy", "speed"):
        assert (tmp_path / f"learned_mnist_digits_{suffix}.png").read_bytes()[:4] == b"\x89PNG"


def test_classifier_layer_learned_row(tmp_path):
    import json

    from lutengine.cli import main

    argv = ["reproduce", "classifier-layer", "--dataset", "digits", "--methods", "maddness",
            "learned", "--ncodebooks", "4", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "classifier_layer_digits.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["maddness", "learned"]
    # trained on the labels with distillation, it keeps more than the fitted tables
    assert rows[1]["accuracy"] > rows[0]["accuracy"]
