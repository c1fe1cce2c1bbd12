"""lutengine.network and lutengine.ops: every op against an independent reference (torch's
functional ops, NumPy), graphs (residual, concat, multiply, several inputs, token ids) against
NumPy oracles, the fused plan against the ops run one by one — also after every way the API
lets a layer change — and clear errors for bad graphs and bad inputs."""

import dataclasses

import numpy as np
import pytest

from lutengine import config, datasets, nn
from lutengine.matmul import LutMatmul

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def digits():
    X, y = datasets.load_digits()[:2]
    return X.reshape(-1, 1, 8, 8), y


def _t(H):
    return torch.from_numpy(np.ascontiguousarray(H))


def _dense(rng, n_in, n_out, scale=1.0):
    return nn.Dense(rng.normal(0, scale, (n_in, n_out)), rng.normal(0, 0.1, n_out))


# -- ops against references ------------------------------------------------------------------

@pytest.mark.parametrize("op, reference", [
    (nn.MaxPool2d(3, 2, 1), lambda H: F.max_pool2d(_t(H), 3, 2, 1)),
    (nn.MaxPool2d((2, 3)), lambda H: F.max_pool2d(_t(H), (2, 3))),
    (nn.AvgPool2d(3, 2, 1), lambda H: F.avg_pool2d(_t(H), 3, 2, 1)),
    (nn.AvgPool2d(2), lambda H: F.avg_pool2d(_t(H), 2)),
    (nn.GELU(), lambda H: F.gelu(_t(H))),
    (nn.GELU("tanh"), lambda H: F.gelu(_t(H), approximate="tanh")),
    (nn.ReLU(), lambda H: F.relu(_t(H))),
    (nn.BatchNorm(np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4)),
     lambda H: _t(H) * torch.linspace(0.5, 2, 4)[:, None, None] + torch.linspace(-1, 1, 4)[:, None, None]),
])
def test_image_ops_match_torch(op, reference):
    H = np.random.default_rng(0).normal(size=(3, 4, 9, 11)).astype(np.float32)
    np.testing.assert_allclose(op(H), reference(H).numpy(), rtol=1e-5, atol=1e-6)
    assert op(H).shape[1:] == op.output_shape(H.shape[1:])


@pytest.mark.parametrize("op, reference", [
    (nn.Softmax(), lambda Z: F.softmax(_t(Z), dim=-1)),
    (nn.LogSoftmax(), lambda Z: F.log_softmax(_t(Z), dim=-1)),
])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7)])
def test_softmax_heads_run_over_the_last_axis(op, reference, shape):
    Z = np.random.default_rng(1).normal(0, 30, size=shape).astype(np.float32)
    np.testing.assert_allclose(op(Z), reference(Z).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), ((3, 5), (2, 1), (1, 2)),
                                                     (1, 1, 0), (4, 3, 0)])
def test_exact_conv_matches_torch(kernel, stride, padding):
    rng = np.random.default_rng(2)
    H = rng.normal(size=(2, 3, 10, 9)).astype(np.float32)
    weight = rng.normal(size=(5, 3, *np.broadcast_to(kernel, 2))).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    op = nn.Conv2d(nn.Dense(weight.reshape(5, -1).T, bias), 3, kernel, stride, padding)
    expected = F.conv2d(_t(H), _t(weight), _t(bias), stride, padding).numpy()
    np.testing.assert_allclose(op(H), expected, rtol=1e-5, atol=1e-5)
    assert op(H).shape[1:] == op.output_shape(H.shape[1:])


def test_linear_runs_over_the_last_axis():
    rng = np.random.default_rng(3)
    H = rng.normal(size=(4, 6, 5)).astype(np.float32)
    layer = _dense(rng, 5, 3)
    np.testing.assert_allclose(nn.Linear(layer)(H), H @ layer.W + layer.b, rtol=1e-5,
                               atol=1e-6)
    assert nn.Linear(layer).output_shape((6, 5)) == (6, 3)


def test_lut_conv_reads_the_image_as_its_patches_would(digits):
    """The LUT convolution (trees reading the image, no im2col) gives exactly the product
    of the same LutMatmul with the im2col patches."""
    X = digits[0][:300]
    rng = np.random.default_rng(3)
    op = nn.Conv2d(nn.Dense(rng.normal(size=(9, 6)), np.zeros(6)), 1, 3, 1, 1)
    lut = LutMatmul(4, progress=False).fit(op.rows(X), op.layer.W)
    conv = op.with_layer(lut)
    expected = lut.predict(conv.rows(X)).reshape(300, 8, 8, 6).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(conv(X), expected)


# -- graphs against NumPy oracles -----------------------------------------------------------

def test_a_residual_block_with_concat_and_gate_matches_numpy():
    """conv → ReLU → conv + skip → max pool, joined with its square, a sigmoid-free gate
    (Mul of two branches), flattened into a Linear: every value against plain NumPy."""
    rng = np.random.default_rng(5)
    W1, W2 = rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.3, (4, 4, 1, 1))
    conv1 = nn.Conv2d(nn.Dense(W1.reshape(4, -1).T, np.zeros(4)), 3, 3, padding=1)
    conv2 = nn.Conv2d(nn.Dense(W2.reshape(4, -1).T, np.full(4, 0.1)), 4, 1)
    head = _dense(rng, 2 * 4 * 3 * 3, 5)
    net = nn.Network([("c1", conv1, ["x"]), ("r1", nn.ReLU(), ["c1"]),
                      ("c2", conv2, ["r1"]), ("skip", nn.Add(), ["c2", "r1"]),
                      ("pool", nn.MaxPool2d(2), ["skip"]),
                      ("square", nn.Mul(), ["pool", "pool"]),
                      ("joined", nn.Concat(0), ["pool", "square"]),
                      ("flat", nn.Flatten(), ["joined"]), ("out", nn.Linear(head), ["flat"])],
                     {"x": (3, 6, 6)})
    X = rng.normal(size=(7, 3, 6, 6)).astype(np.float32)

    def conv(H, W, b, pad):
        H = np.pad(H, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        k = W.shape[2]
        out = np.zeros((len(H), len(W), H.shape[2] - k + 1, H.shape[3] - k + 1))
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                out[:, :, i, j] = np.einsum("nchw,ochw->no", H[:, :, i:i + k, j:j + k], W) + b
        return out

    r1 = np.maximum(conv(X, W1, 0, 1), 0)
    skip = conv(r1, W2, 0.1, 0) + r1
    pool = skip.reshape(7, 4, 3, 2, 3, 2).max(axis=(3, 5))
    joined = np.concatenate([pool, pool * pool], axis=1)
    expected = joined.reshape(7, -1) @ head.W + head.b
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.forward(X, output="skip"), skip, rtol=1e-4, atol=1e-5)
    assert net.shapes["joined"] == (8, 3, 3) and net.classes.tolist() == list(range(5))


def test_token_ids_and_a_mask_as_two_inputs():
    """An embedding of int64 ids, gated by a float mask per token, a Linear over the last
    axis and a softmax over it: a transformer-shaped graph with two named inputs."""
    rng = np.random.default_rng(6)
    table, proj = rng.normal(size=(50, 8)), _dense(rng, 8, 4)
    net = nn.Network([("emb", nn.Embedding(table), ["ids"]),
                      ("gated", nn.Mul(), ["emb", "mask"]),
                      ("proj", nn.Linear(proj), ["gated"]),
                      ("shifted", nn.Add(np.arange(4.0)), ["proj"]),
                      ("attn", nn.Softmax(), ["shifted"])],
                     {"ids": nn.Input((6,), "int64"), "mask": (6, 1)})
    ids = rng.integers(0, 50, (3, 6))
    mask = (rng.random((3, 6, 1)) > 0.3).astype(np.float32)
    Z = (table[ids] * mask) @ proj.W + proj.b + np.arange(4.0)
    expected = np.exp(Z - Z.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(net.forward({"ids": ids, "mask": mask}), expected, rtol=1e-5,
                               atol=1e-6)
    assert net.classes is None
    with pytest.raises(ValueError, match=r"predict needs \(n, classes\) outputs"):
        net.predict({"ids": ids, "mask": mask})
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\)"):
        net.forward({"ids": ids + 50, "mask": mask})
    with pytest.raises(TypeError, match=r"X\['ids'\] must hold integer ids"):
        net.forward({"ids": ids.astype(float), "mask": mask})
    with pytest.raises(ValueError, match="one batch size"):
        net.forward({"ids": ids, "mask": mask[:2]})
    with pytest.raises(ValueError, match=r"X must hold the inputs \['ids', 'mask'\]"):
        net.forward({"ids": ids})
    with pytest.raises(TypeError, match="X must be a dict of the inputs"):
        net.forward(ids)


def test_a_lut_graph_runs_as_its_ops_one_by_one():
    """Residual MLP with LUT layers: the fused plan (chains broken where a value has two
    readers) equals the ops one by one, bit for bit."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 12)).astype(np.float32)
    net = nn.Network([("a", nn.Linear(_dense(rng, 12, 16, 0.3)), ["x"]),
                      ("ra", nn.ReLU(), ["a"]),
                      ("b", nn.Linear(_dense(rng, 16, 16, 0.3)), ["ra"]),
                      ("rb", nn.ReLU(), ["b"]),
                      ("c", nn.Linear(_dense(rng, 16, 16, 0.3)), ["rb"]),
                      ("res", nn.Add(), ["c", "ra"]),
                      ("d", nn.Linear(_dense(rng, 16, 3, 0.3)), ["res"])], (12,))
    y = net.predict(X)
    lut = nn.replace_layers(net, X, y, 4, finetune=False, progress=False)
    steps = lut._plan((lut.output,), True)
    assert [step.output for step in steps] == ["a", "ra", "c", "res", "d"]  # b, rb, c fused
    np.testing.assert_array_equal(lut.forward(X), lut.forward(X, fused=False))
    np.testing.assert_array_equal(lut.forward(X, output="rb"), lut.forward(X, output="rb",
                                                                         fused=False))
    assert lut.score(X, y) > 0.5


def test_forward_in_chunks_equals_one_pass(digits, monkeypatch):
    net = _conv_net()
    X = digits[0][:40]
    whole = net.forward(X)
    monkeypatch.setattr(config, "FORWARD_CHUNK_ELEMENTS", 1000)
    chunked = _conv_net()
    assert chunked._chunk_rows < 40
    # BLAS may block a smaller product differently: equal up to float32 rounding
    np.testing.assert_allclose(chunked.forward(X), whole, rtol=1e-5, atol=1e-5)


# -- the fused plan follows the layers ------------------------------------------------------

def _lut_mlp(X, y, widths, C):
    mlp = nn.MLP.train(X, y, widths, epochs=3, progress=False)
    return nn.replace_layers(mlp, X, y, C, finetune=False, progress=False)


def _layer_by_layer(net, X):
    """Logits of a Linear / ReLU chain from each layer's own predict."""
    H = X
    for layer in net.layers[:-1]:
        H = np.maximum(layer.predict(H), 0)
    return net.layers[-1].predict(H)


def test_fused_chain_matches_the_layer_by_layer_forward(digits):
    X, y = digits[0].reshape(len(digits[0]), -1), digits[1]
    net = _lut_mlp(X, y, [32, 24], 8)
    steps = net._plan((net.output,), True)
    assert [step.output for step in steps] == ["linear_2", "softmax"]
    logits = _layer_by_layer(net, X)
    got = net.forward(X, output="linear_2")
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    assert np.mean(got.argmax(1) == logits.argmax(1)) >= 0.999
    np.testing.assert_array_equal(net.forward(X), net.forward(X, fused=False))


def test_the_plan_follows_every_change_the_api_allows(digits):
    """Refit in place, set_params, with_layers, replace_layers, learn_luts, save/load: after
    each, forward equals the ops run one by one (and the layer-by-layer product)."""
    X, y = digits[0].reshape(len(digits[0]), -1), digits[1]
    net = _lut_mlp(X, y, [24, 16], 4)
    net.forward(X)  # the plan is built

    def agrees(network):
        np.testing.assert_array_equal(network.forward(X), network.forward(X, fused=False))
        logits = network.forward(X, output=network.node(network.output).inputs[0])
        np.testing.assert_allclose(logits, _layer_by_layer(network, X), rtol=1e-5,
                                   atol=1e-5 * np.abs(logits).max())

    H = np.maximum(net.layers[0].predict(X), 0)
    before = net.forward(X)
    net.layers[1].fit(H[::-1][:800], np.random.default_rng(0).normal(size=(24, 16)))
    assert not np.array_equal(net.forward(X), before)  # the refit shows
    agrees(net)
    net.layers[1].set_params(quantize=False)  # float tables: the chain cannot fuse
    agrees(net)
    assert len(net._plan((net.output,), True)) == len(net.nodes)  # nothing fused
    net.layers[1].set_params(quantize=True)
    agrees(net)
    swapped = net.with_layers({2: nn.Dense(np.ones((16, 10)), np.zeros(10))})
    agrees(swapped)
    assert isinstance(net.layers[2], LutMatmul)  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.nodes[0].op.layer = nn.Dense(np.ones((64, 24)), np.zeros(24))
    with pytest.raises(AttributeError):
        net.nodes[0].name = "renamed"
    exact = nn.MLP.train(X, y, [16, 16], epochs=2, progress=False)
    agrees(nn.replace_layers(exact, X, y, 2, finetune=True,
                             finetune_settings={"epochs": 1}, progress=False))
    agrees(nn.learn_luts(exact, X, y, 2, epochs=1, progress=False))


def test_relu_then_maxpool_runs_pool_first_with_the_same_bits(digits):
    """ReLU and max commute exactly: the plan pools first (ReLU on a quarter of the values),
    and the forward equals the ops run one by one."""
    net = _conv_net()
    steps = net._plan((net.output,), True)
    assert [(step.inputs, step.output) for step in steps] == [
        (("x",), "conv2d"), (("conv2d",), "maxpool2d"), (("maxpool2d",), "flatten"),
        (("flatten",), "linear")]
    H = digits[0][:50].astype(np.float32)
    for op in net.ops:
        H = op(H)
    np.testing.assert_array_equal(net.forward(digits[0][:50]), H)
    np.testing.assert_array_equal(net.forward(digits[0][:50], output="relu"),
                                  np.maximum(net.ops[0](digits[0][:50].astype(np.float32)), 0))


# -- errors ---------------------------------------------------------------------------------

def _conv_net():
    rng = np.random.default_rng(4)
    conv = nn.Conv2d(nn.Dense(rng.normal(size=(9, 4)), np.zeros(4)), 1, 3, padding=1)
    return nn.Network([conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                       nn.Linear(nn.Dense(rng.normal(size=(64, 3)), np.zeros(3)))], (1, 8, 8))


@pytest.mark.parametrize("X, error, match", [
    (np.zeros((2, 1, 8, 7)), ValueError, r"X must have shape \(n, 1, 8, 8\)"),
    (np.zeros((0, 1, 8, 8)), ValueError, "X must not be empty"),
    (np.full((2, 1, 8, 8), np.nan), ValueError, "NaN"),
    (np.zeros((2, 1, 8, 8), dtype=complex), TypeError, "dtype"),
    ([[1], [1, 2]], TypeError, "could not convert"),
])
def test_bad_inputs_are_named(X, error, match):
    with pytest.raises(error, match=match):
        _conv_net().forward(X)


def test_bad_networks_are_named(monkeypatch):
    conv, relu, pool, flat, linear = _conv_net().ops
    with pytest.raises(ValueError, match=r"nodes\[4\] \('linear', Linear\) takes \(…, 64\)"):
        nn.Network([conv, relu, flat, flat, linear], (1, 8, 8))
    with pytest.raises(ValueError, match=r"nodes\[0\] \('conv2d', Conv2d\) takes \(1, height"):
        nn.Network([conv], (2, 8, 8))
    with pytest.raises(TypeError, match=r"nodes\[1\] must be an op"):
        nn.Network([conv, np.maximum], (1, 8, 8))
    with pytest.raises(ValueError, match="classes must have one label per output"):
        nn.Network([conv, relu, pool, flat, linear], (1, 8, 8), classes=[0, 1])
    with pytest.raises(ValueError, match="layer takes 9 features, but a"):
        nn.Conv2d(conv.layer, 2, 3)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="nodes must not be empty"):
        nn.Network([], (4,))
    with pytest.raises(ValueError, match=r"reads \['later'\], which no input or earlier node"):
        nn.Network([("a", relu, ["later"]), ("later", relu, ["x"])], (4,))
    with pytest.raises(ValueError, match="the name 'x' is already taken"):
        nn.Network([("x", relu, ["x"])], (4,))
    with pytest.raises(ValueError, match=r"\('s', Add\) takes 2 inputs, got 1"):
        nn.Network([("s", nn.Add(), ["x"])], (4,))
    with pytest.raises(ValueError, match="must have as many axes"):
        nn.Network([("s", nn.Add(), ["x", "y"])], {"x": (4,), "y": (2, 4)})
    with pytest.raises(ValueError, match="do not broadcast"):
        nn.Network([("s", nn.Mul(), ["x", "y"])], {"x": (4,), "y": (3,)})
    with pytest.raises(ValueError, match="inputs must agree off axis 0"):
        nn.Network([("s", nn.Concat(0), ["x", "y"])], {"x": (4, 2), "y": (3, 3)})
    with pytest.raises(TypeError, match=r"takes \['int64'\] inputs, gets \['float32'\]"):
        nn.Network([nn.Embedding(np.ones((5, 2)))], (4,))
    with pytest.raises(ValueError, match="nodes\\[0\\] is a bare op, but the network has inputs"):
        nn.Network([relu], {"a": (2,), "b": (2,)})
    with pytest.raises(ValueError, match="output must name a node"):
        nn.Network([relu], (4,), output="nowhere")
    with pytest.raises(ValueError, match="dtype must be one of"):
        nn.Network([relu], {"x": nn.Input((4,), "float64")})
    with pytest.raises(ValueError, match="kernel_size is 2000, above lutengine.config.MAX_WINDOW"):
        nn.MaxPool2d(2000)
    with pytest.raises(ValueError, match=r"maxpool2d', MaxPool2d\): the elements it holds per "
                                         r"example is 1212201000000"):
        nn.Network([nn.MaxPool2d(1000, 1, 500)], (1, 1100, 1100))  # a window's cost counts
    monkeypatch.setattr(config, "MAX_VALUE_ELEMENTS", 100)
    with pytest.raises(ValueError, match=r"conv2d', Conv2d\): the elements it holds per "
                                         r"example is 832, above lutengine.config."
                                         r"MAX_VALUE_ELEMENTS = 100; for a model you trust"):
        nn.Network([conv], (1, 8, 8))
    monkeypatch.setattr(config, "MAX_NODES", 3)
    with pytest.raises(ValueError, match="the number of nodes is 4, above lutengine.config.MAX_NODES"):
        nn.Network([relu] * 4, (4,))


def test_replace_layers_on_a_cnn_validates_its_inputs(digits):
    net = _conv_net()
    with pytest.raises(ValueError, match="X_train must have shape"):
        nn.replace_layers(net, digits[0][:, :, :4], digits[1], 4, progress=False)
    with pytest.raises(ValueError, match="layers must be indices in 0..1"):
        nn.replace_layers(net, digits[0], digits[1] % 3, 4, layers=[2], progress=False)
    with pytest.raises(ValueError, match="ncodebooks"):
        nn.replace_layers(net, digits[0], digits[1] % 3, 10, progress=False)
