"""lutengine.nn.from_torch / from_onnx: PyTorch and ONNX models (MLPs and CNNs) imported
exactly, checked against torch and onnxruntime on real images, and every op they cannot
import rejected by name."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lutengine import datasets, nn  # noqa: E402
from lutengine.matmul import LutMatmul  # noqa: E402


@pytest.fixture(scope="module")
def images():
    X_train, y_train, X_test, _ = datasets.load_fashion_subset()
    return X_train[:2000], y_train[:2000], X_test[:300]


def _torch_output(module, X):
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


def test_sequential_with_flatten_and_dropout_is_reproduced(images):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(),
                                 torch.nn.Dropout(0.3), torch.nn.Linear(64, 32),
                                 torch.nn.ReLU(), torch.nn.Linear(32, 10))
    module.train()
    nchw = images[2].reshape(-1, 1, 28, 28)
    net = nn.from_torch(module, nchw[:20])
    assert module.training  # the check ran in eval mode and restored the mode
    module.eval()
    expected = _torch_output(module, nchw)
    np.testing.assert_allclose(net.forward(nchw), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    assert [layer.W.shape for layer in net.layers] == [(784, 64), (64, 32), (32, 10)]


class _Functional(torch.nn.Module):
    def __init__(self, log):
        super().__init__()
        self.hidden, self.out, self.log = torch.nn.Linear(784, 48), torch.nn.Linear(48, 10), log

    def forward(self, x):
        z = self.out(torch.nn.functional.relu(self.hidden(x)))
        return torch.log_softmax(z, dim=1) if self.log else torch.softmax(z, dim=-1)


@pytest.mark.parametrize("log", [False, True])
def test_functional_ops_and_softmax_heads(images, log):
    torch.manual_seed(1)
    module = _Functional(log)
    net = nn.from_torch(module, images[2][:10])
    expected = _torch_output(module, images[2])
    np.testing.assert_allclose(net.forward(images[2]), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(net.predict(images[2]), expected.argmax(1))


def test_imported_network_can_be_replaced_by_lookups(images):
    torch.manual_seed(2)
    module = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10))
    net = nn.from_torch(module, images[0][:5])
    labels = net.predict(images[0])  # agreement with the exact network on real images
    replaced = nn.replace_layers(net, images[0], labels, 4, progress=False)
    assert all(isinstance(layer, LutMatmul) for layer in replaced.layers)
    assert all(isinstance(layer, nn.Dense) for layer in net.layers)  # net is unchanged
    assert replaced.score(images[0], labels) > 0.5


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.a(x) + x


class _Branch(_Residual):
    def forward(self, x):
        torch.relu(self.a(x))
        return self.b(x)  # skips the op before it


@pytest.mark.parametrize("module, match", [
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)),
     "'Sigmoid' at node"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.BatchNorm1d(4)),
     "'BatchNorm' at node '_2': it must follow a Linear or Conv2d"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Softmax(dim=0)), "dim=1"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Flatten(0)), "start_dim=1"),
    (_Residual(), "'add' at node"),
    (_Branch(), "chain"),
])
def test_unsupported_ops_are_named(module, match):
    with pytest.raises(ValueError, match=match):
        nn.from_torch(module, np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("module, match", [
    (torch.nn.Conv2d(1, 2, 3, groups=1, dilation=2), "dilation 1"),
    (torch.nn.Conv2d(2, 2, 3, groups=2), "groups 1"),
    (torch.nn.Conv2d(1, 2, 3, padding="same"), "numeric zero padding"),
    (torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "zero padding"),
    (torch.nn.MaxPool2d(2, ceil_mode=True), "ceil mode"),
    (torch.nn.AvgPool2d(3, padding=1, count_include_pad=False), "padding left out"),
])
def test_unsupported_conv_and_pool_settings_are_named(module, match):
    with pytest.raises(ValueError, match=match):
        nn.from_torch(torch.nn.Sequential(module), np.zeros((2, 2, 8, 8), np.float32))


def test_not_a_module():
    with pytest.raises(TypeError, match="module"):
        nn.from_torch(lambda x: x, np.zeros((2, 8), np.float32))


def test_a_mismatch_on_the_example_input_is_an_error():
    class Scaled(torch.nn.Module):  # traced as Linear, but the weights change in forward
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.a(x)

    module = Scaled()
    net_ok = nn.from_torch(module, np.ones((2, 8), np.float32))
    assert len(net_ok.layers) == 1
    module.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    with pytest.raises(ValueError, match="differs from the module"):
        nn.from_torch(module, np.ones((2, 8), np.float32))


# -- ONNX: models written with onnx.helper, outputs compared with onnxruntime ---------------

def _onnx_model(path, nodes, weights, n_in, n_out):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["n", n_out])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _ort(path, X):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})[0]


def test_onnx_gemm_and_matmul_chains_match_onnxruntime(tmp_path, images):
    from onnx import helper

    rng = np.random.default_rng(3)
    weights = {"W0": rng.normal(0, 0.05, (64, 784)), "b0": rng.normal(0, 0.1, 64),
               "W1": rng.normal(0, 0.2, (64, 32)), "b1": rng.normal(0, 0.1, 32),
               "W2": rng.normal(0, 0.2, (10, 32)), "b2": rng.normal(0, 0.1, 10)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W0", "b0"], ["h0"], transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "W2", "b2"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["p"], axis=1)]
    path = _onnx_model(tmp_path / "mlp.onnx", nodes, weights, 784, 10)
    net = nn.from_onnx(path)
    expected = _ort(path, images[2])
    np.testing.assert_allclose(net.forward(images[2]), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(net.predict(images[2]), expected.argmax(1))


@pytest.mark.parametrize("node, match", [
    (("Sigmoid", ["x"], ["y"], {}), "'Sigmoid' at node"),
    (("Conv", ["x", "W"], ["y"], {"group": 2}), "'Conv' at node 'the_node': group 1"),
    (("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}), "symmetric"),
    (("Gemm", ["x", "W"], ["y"], {"transA": 1}), "transA"),
    (("Softmax", ["x"], ["y"], {"axis": 0}), "axis=1"),
])
def test_onnx_unsupported_ops_are_named(tmp_path, node, match):
    from onnx import helper

    op, inputs, outputs, attrs = node
    nodes = [helper.make_node(op, inputs, outputs, name="the_node", **attrs)]
    path = _onnx_model(tmp_path / "bad.onnx", nodes, {"W": np.ones((8, 8))}, 8, 8)
    with pytest.raises(ValueError, match=match):
        nn.from_onnx(path)


# -- convolutional networks --------------------------------------------------------------

def _cnn(gelu=False, log=True):
    """A small CNN with every op kind a Network runs; BatchNorm statistics made nontrivial
    so that folding them matters."""
    torch.manual_seed(4)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 12, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
        torch.nn.BatchNorm2d(12), torch.nn.GELU() if gelu else torch.nn.ReLU(),
        torch.nn.AvgPool2d(3, stride=2, padding=1), torch.nn.Dropout(0.2),
        torch.nn.Flatten(), torch.nn.Linear(12 * 4 * 7, 32), torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(), torch.nn.Linear(32, 10),
        torch.nn.LogSoftmax(dim=1) if log else torch.nn.Identity())
    with torch.no_grad():
        for bn in (module[1], module[5], module[11]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return module.eval()


@pytest.mark.parametrize("gelu, log", [(False, True), (True, False)])
def test_cnn_with_batchnorm_and_pooling_matches_torch(images, gelu, log):
    module = _cnn(gelu, log)
    nchw = images[2].reshape(-1, 1, 28, 28)
    net = nn.from_torch(module, nchw[:8])
    assert net.input_shape == (1, 28, 28)
    assert [type(op).__name__ for op in net.ops][:4] == ["Conv2d", "ReLU", "MaxPool2d",
                                                        "Conv2d"]  # BatchNorm folded
    expected = _torch_output(module, nchw)
    np.testing.assert_allclose(net.forward(nchw), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(net.predict(nchw), expected.argmax(1))


def test_cnn_exported_to_onnx_matches_onnxruntime(tmp_path, images):
    pytest.importorskip("onnx")
    module = _cnn()
    nchw = images[2].reshape(-1, 1, 28, 28)
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(module, (torch.from_numpy(nchw[:1]),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    net = nn.from_onnx(path)
    expected = _ort(path, nchw)
    np.testing.assert_allclose(net.forward(nchw), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_cnn_layers_replaced_and_learned(images):
    """Conv layers fitted on patches of real images: every layer becomes a LutMatmul, the
    network keeps most of its agreement with the exact one, and learning keeps it."""
    module = _cnn()
    X = images[0][:600].reshape(-1, 1, 28, 28)
    net = nn.from_torch(module, X[:8])
    labels = net.predict(X)  # agreement with the exact network on real images
    replaced = nn.replace_layers(net, X, labels, 8, progress=False)
    assert all(isinstance(layer, LutMatmul) for layer in replaced.layers)
    assert all(isinstance(layer, nn.Dense) for layer in net.layers)
    assert replaced.score(X, labels) > 0.5
    learned = nn.learn_luts(net, X, labels, 8, epochs=1, progress=False)
    assert all(isinstance(layer, LutMatmul) for layer in learned.layers)
    assert learned.score(X, labels) > 0.5
