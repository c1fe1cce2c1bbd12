"""lutengine.network: every op against an independent reference (torch's functional ops,
NumPy), the LUT convolution read straight from the image against its im2col product, the
fused LUT chain against the layer-by-layer forward, and clear errors."""

import numpy as np
import pytest

from lutengine import datasets, nn
from lutengine import network as nw
from lutengine.matmul import LutMatmul

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def digits():
    X, y = datasets.load_digits()[:2]
    return X.reshape(-1, 1, 8, 8), y


def _t(H):
    return torch.from_numpy(np.ascontiguousarray(H))


@pytest.mark.parametrize("op, reference", [
    (nw.MaxPool2d(3, 2, 1), lambda H: F.max_pool2d(_t(H), 3, 2, 1)),
    (nw.MaxPool2d((2, 3)), lambda H: F.max_pool2d(_t(H), (2, 3))),
    (nw.AvgPool2d(3, 2, 1), lambda H: F.avg_pool2d(_t(H), 3, 2, 1)),
    (nw.AvgPool2d(2), lambda H: F.avg_pool2d(_t(H), 2)),
    (nw.GELU(), lambda H: F.gelu(_t(H))),
    (nw.GELU("tanh"), lambda H: F.gelu(_t(H), approximate="tanh")),
    (nw.ReLU(), lambda H: F.relu(_t(H))),
])
def test_image_ops_match_torch(op, reference):
    H = np.random.default_rng(0).normal(size=(3, 4, 9, 11)).astype(np.float32)
    np.testing.assert_allclose(op(H), reference(H).numpy(), rtol=1e-5, atol=1e-6)
    assert op(H).shape[1:] == op.output_shape(H.shape[1:])


@pytest.mark.parametrize("op, reference", [
    (nw.Softmax(), lambda Z: F.softmax(_t(Z), dim=1)),
    (nw.LogSoftmax(), lambda Z: F.log_softmax(_t(Z), dim=1)),
])
def test_heads_match_torch(op, reference):
    Z = np.random.default_rng(1).normal(0, 30, size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(op(Z), reference(Z).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), ((3, 5), (2, 1), (1, 2)),
                                                     (1, 1, 0), (4, 3, 0)])
def test_exact_conv_matches_torch(kernel, stride, padding):
    rng = np.random.default_rng(2)
    H = rng.normal(size=(2, 3, 10, 9)).astype(np.float32)
    weight = rng.normal(size=(5, 3, *np.broadcast_to(kernel, 2))).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    op = nw.Conv2d(nn.Dense(weight.reshape(5, -1).T, bias), 3, kernel, stride, padding)
    expected = F.conv2d(_t(H), _t(weight), _t(bias), stride, padding).numpy()
    np.testing.assert_allclose(op(H), expected, rtol=1e-5, atol=1e-5)
    assert op(H).shape[1:] == op.output_shape(H.shape[1:])


def test_lut_conv_reads_the_image_as_its_patches_would(digits):
    """The LUT convolution (trees reading the image, no im2col) gives exactly the product
    of the same LutMatmul with the im2col patches."""
    X = digits[0][:300]
    rng = np.random.default_rng(3)
    op = nw.Conv2d(nn.Dense(rng.normal(size=(9, 6)), np.zeros(6)), 1, 3, 1, 1)
    lut = LutMatmul(4, progress=False).fit(op.patches(X), op.layer.W)
    conv = nw.Conv2d(lut, 1, 3, 1, 1)
    expected = lut.predict(conv.patches(X)).reshape(300, 8, 8, 6).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(conv(X), expected)


def _lut_mlp(X, y, widths, C):
    mlp = nn.MLP.train(X, y, widths, epochs=3, progress=False)
    return nn.replace_layers(mlp, X, y, C, finetune=False, progress=False)


def test_fused_chain_matches_the_layer_by_layer_forward(digits):
    X, y = digits[0].reshape(len(digits[0]), -1), digits[1]
    mlp = _lut_mlp(X, y, [32, 24], 8)
    net = mlp.to_network()
    assert [fused is not None for _, _, fused in net._plan()] == [True, False]
    H = X
    for layer in mlp.layers[:-1]:
        H = np.maximum(layer.predict(H), 0)
    logits = mlp.layers[-1].predict(H)
    got = net.run(X, 0, len(net.ops) - 1)
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    assert np.mean(got.argmax(1) == logits.argmax(1)) >= 0.999
    np.testing.assert_allclose(net.forward(X[:1]), mlp.predict_proba(X[:1]), rtol=1e-4,
                               atol=1e-6)


def test_mlp_to_network_forward_is_predict_proba(digits):
    X, y = digits[0].reshape(len(digits[0]), -1), digits[1]
    mlp = nn.MLP.train(X, y, [16], epochs=2, progress=False)
    net = mlp.to_network()
    np.testing.assert_allclose(net.forward(X), mlp.predict_proba(X), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(net.predict(X), mlp.predict(X))
    assert net.score(X, y) == mlp.score(X, y)


def _conv_net():
    rng = np.random.default_rng(4)
    conv = nw.Conv2d(nn.Dense(rng.normal(size=(9, 4)), np.zeros(4)), 1, 3, padding=1)
    return nw.Network([conv, nw.ReLU(), nw.MaxPool2d(2), nw.Flatten(),
                       nw.Linear(nn.Dense(rng.normal(size=(64, 3)), np.zeros(3)))], (1, 8, 8))


@pytest.mark.parametrize("X, error, match", [
    (np.zeros((2, 1, 8, 7)), ValueError, r"X must have shape \(n, 1, 8, 8\)"),
    (np.zeros((0, 1, 8, 8)), ValueError, "X is empty"),
    (np.full((2, 1, 8, 8), np.nan), ValueError, "NaN"),
    (np.zeros((2, 1, 8, 8), dtype=complex), TypeError, "dtype"),
])
def test_bad_inputs_are_named(X, error, match):
    with pytest.raises(error, match=match):
        _conv_net().forward(X)


def test_bad_networks_are_named():
    conv, relu, pool, flat, linear = _conv_net().ops
    with pytest.raises(ValueError, match=r"ops\[4\] \(Linear\) takes \(64,\) features"):
        nw.Network([conv, relu, flat, flat, linear], (1, 8, 8))
    with pytest.raises(ValueError, match=r"ops\[0\] \(Conv2d\) takes \(1, H, W\) images"):
        nw.Network([conv], (2, 8, 8))
    with pytest.raises(TypeError, match=r"ops\[1\] must be one of"):
        nw.Network([conv, np.maximum], (1, 8, 8))
    with pytest.raises(ValueError, match="classes must have one label per output"):
        nw.Network([conv, relu, pool, flat, linear], (1, 8, 8), classes=[0, 1])
    with pytest.raises(ValueError, match="layer takes 9 features, but a"):
        nw.Conv2d(conv.layer, 2, 3)
    with pytest.raises(ValueError, match="padding"):
        nw.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="ops must not be empty"):
        nw.Network([], (4,))


def test_replace_layers_on_a_cnn_validates_its_inputs(digits):
    net = _conv_net()
    with pytest.raises(ValueError, match="X must have shape"):
        nn.replace_layers(net, digits[0][:, :, :4], digits[1], 4, progress=False)
    with pytest.raises(ValueError, match="layers must be indices in 0..1"):
        nn.replace_layers(net, digits[0], digits[1] % 3, 4, layers=[2], progress=False)
    with pytest.raises(ValueError, match="ncodebooks"):
        nn.replace_layers(net, digits[0], digits[1] % 3, 10, progress=False)


def test_relu_then_maxpool_runs_pool_first_with_the_same_bits(digits):
    """ReLU and max commute exactly: the plan pools first (ReLU on a quarter of the values),
    and the forward equals the ops run one by one."""
    net = _conv_net()
    assert [(first, last, runner is not None) for first, last, runner in net._plan()] == [
        (0, 1, False), (1, 3, True), (3, 4, False), (4, 5, False)]
    H = digits[0][:50].astype(np.float32)
    for op in net.ops:
        H = op(H)
    np.testing.assert_array_equal(net.forward(digits[0][:50]), H)
    np.testing.assert_array_equal(net.inputs_of(digits[0][:50], 2),
                                  nw.ReLU()(net.ops[0](digits[0][:50].astype(np.float32))))
