"""lutengine.nn.from_torch: PyTorch MLPs imported exactly (checked against torch on real
images), and every op it cannot import rejected by name."""

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
    np.testing.assert_allclose(net.decision_function(images[2]), expected, rtol=1e-4,
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
    got = net.predict_proba(images[2])
    np.testing.assert_allclose(np.log(got) if log else got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(net.predict(images[2]), expected.argmax(1))


def test_imported_network_can_be_replaced_by_lookups(images):
    torch.manual_seed(2)
    module = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10))
    net = nn.from_torch(module, images[0][:5])
    replaced = nn.replace_layers(net, images[0], images[1], 4, progress=False)
    assert all(isinstance(layer, LutMatmul) for layer in replaced.layers)


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
    (torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "'Conv2d' at node"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)),
     "'Sigmoid' at node"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4)), "'BatchNorm1d'"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2)), "need a ReLU"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()), "must end with a Linear"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Softmax(dim=0)), "dim=1"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Softmax(dim=1),
                         torch.nn.Linear(4, 2)), "must be last"),
    (_Residual(), "'add' at node"),
    (_Branch(), "chain"),
])
def test_unsupported_ops_are_named(module, match):
    with pytest.raises(ValueError, match=match):
        nn.from_torch(module, np.zeros((2, 8), np.float32))


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
    np.testing.assert_allclose(net.predict_proba(images[2]), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(net.predict(images[2]), expected.argmax(1))


@pytest.mark.parametrize("node, match", [
    (("Sigmoid", ["x"], ["y"], {}), "'Sigmoid' at node"),
    (("Conv", ["x", "W"], ["y"], {}), "'Conv' at node"),
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
