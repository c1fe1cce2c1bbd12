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
    """A graph with every functional form the table maps: residual +, *, torch.cat,
    F.relu, F.max_pool2d, F.avg_pool2d, torch.flatten."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1)
        self.out = torch.nn.Linear(8 * 2 * 2, 3)

    def forward(self, x):
        h = torch.nn.functional.relu(self.a(x))
        h = h + self.b(h)
        g = torch.nn.functional.max_pool2d(h, 2) * torch.nn.functional.avg_pool2d(h, 2)
        h = torch.cat([torch.nn.functional.max_pool2d(h, 2), g], dim=1)
        return self.out(torch.flatten(h, 1))


def test_a_residual_graph_with_functional_ops_is_reproduced():
    torch.manual_seed(5)
    module = _Residual().eval()
    X = np.random.default_rng(0).normal(size=(6, 2, 4, 4)).astype(np.float32)
    net = nn.from_torch(module, X)
    assert [type(op).__name__ for op in net.ops] == [
        "Conv2d", "ReLU", "Conv2d", "Add", "MaxPool2d", "AvgPool2d", "Mul", "MaxPool2d",
        "Concat", "Flatten", "Linear"]
    expected = _torch_output(module, X)
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-4, atol=1e-5)


class _Tokens(torch.nn.Module):
    """Token ids and a float mask: an embedding gated per token, a Linear over the last
    axis, a softmax over it."""

    def __init__(self):
        super().__init__()
        self.emb, self.proj = torch.nn.Embedding(30, 6), torch.nn.Linear(6, 4)

    def forward(self, ids, mask):
        return torch.softmax(self.proj(self.emb(ids) * mask), dim=-1)


def test_token_ids_and_a_mask_import_as_two_inputs():
    torch.manual_seed(6)
    module = _Tokens().eval()
    rng = np.random.default_rng(1)
    ids, mask = rng.integers(0, 30, (5, 7)), (rng.random((5, 7, 1)) > 0.5).astype(np.float32)
    net = nn.from_torch(module, (ids, mask))
    assert net.inputs == {"ids": nn.Input((7,), "int64"), "mask": nn.Input((7, 1))}
    with torch.no_grad():
        expected = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(net.forward({"ids": ids, "mask": mask}), expected, rtol=1e-5,
                               atol=1e-6)
    again = nn.from_torch(module, {"mask": mask, "ids": ids})
    assert list(again.inputs) == ["ids", "mask"]


def test_batchnorm_after_a_layer_folds_and_elsewhere_stays_an_affine_op():
    torch.manual_seed(7)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4),
                                 torch.nn.ReLU(), torch.nn.BatchNorm1d(4),
                                 torch.nn.Linear(4, 2)).eval()
    with torch.no_grad():
        for bn in (module[1], module[3]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    X = np.random.default_rng(2).normal(size=(10, 8)).astype(np.float32)
    net = nn.from_torch(module, X)
    assert [type(op).__name__ for op in net.ops] == ["Linear", "ReLU", "BatchNorm", "Linear"]
    np.testing.assert_allclose(net.forward(X), _torch_output(module, X), rtol=1e-4, atol=1e-5)


def test_float64_modules_are_cast_and_checked_in_float64():
    torch.manual_seed(8)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2)).double()
    X = np.random.default_rng(3).normal(size=(6, 8))
    net = nn.from_torch(module, X)
    assert all(layer.W.dtype == np.float32 for layer in net.layers)
    with torch.no_grad():
        expected = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"torch.float16.*module.float\(\)"):
        nn.from_torch(module.half(), X)


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.a(x), x


class _RawWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(8, 2))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("module, error, match", [
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)),
     ValueError, "unsupported op 'Sigmoid' at node '_1': lutengine imports the PyTorch ops"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Softmax(dim=0)), ValueError,
     r"op 'Softmax' at node '_1' cannot be imported as Softmax: .*dim=0"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Flatten(0)), ValueError,
     r"op 'Flatten' at node '_1' .*start_dim=0"),
    (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Embedding(4, 2)), TypeError,
     r"op Embedding at node '_1': it takes \['int64'\] inputs"),
    (_TwoOutputs(), ValueError, "must return one tensor, got tuple"),
    (_RawWeight(), ValueError, "reads the tensor 'w' directly"),
])
def test_unsupported_ops_are_named(module, error, match):
    with pytest.raises(error, match=match):
        nn.from_torch(module, np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("module, match", [
    (torch.nn.Conv2d(2, 2, 3, dilation=2), r"dilation 1 .*dilation=\(2, 2\)"),
    (torch.nn.Conv2d(2, 2, 3, groups=2), "groups 1"),
    (torch.nn.Conv2d(2, 2, 4, padding="same"), "padding='same' with an even kernel"),
    (torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (torch.nn.MaxPool2d(2, ceil_mode=True), "'ceil_mode': True"),
    (torch.nn.AvgPool2d(3, padding=1, count_include_pad=False), "'count_include_pad': False"),
])
def test_unsupported_conv_and_pool_settings_are_named(module, match):
    with pytest.raises(ValueError, match=match):
        nn.from_torch(torch.nn.Sequential(module), np.zeros((2, 2, 8, 8), np.float32))


def test_same_and_valid_padding_are_accepted():
    torch.manual_seed(9)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding="same"),
                                 torch.nn.Conv2d(3, 2, (3, 5), padding="valid")).eval()
    X = np.random.default_rng(4).normal(size=(3, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(nn.from_torch(module, X).forward(X), _torch_output(module, X),
                               rtol=1e-4, atol=1e-5)


def test_not_a_module():
    with pytest.raises(TypeError, match="module"):
        nn.from_torch(lambda x: x, np.zeros((2, 8), np.float32))


def test_the_check_runs_on_random_inputs_too():
    """A hook that changes nothing on the (non-negative) example, but negative inputs: the
    random inputs of the same batch size expose what the tracer cannot see."""
    module = torch.nn.Sequential(torch.nn.Linear(8, 2))
    module.register_forward_pre_hook(lambda mod, args: (args[0].clamp(min=0),))
    with pytest.raises(ValueError, match="differs from the module on random inputs"):
        nn.from_torch(module, np.abs(np.random.default_rng(5).normal(size=(4, 8))))


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
    with pytest.raises(ValueError, match="differs from the module on the example input"):
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
    (("Conv", ["x", "W"], ["y"], {"group": 2}), "'Conv' at node 'the_node' cannot be imported as Conv2d: attribute group must be 1"),
    (("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}), "symmetric"),
    (("Gemm", ["x", "W"], ["y"], {"transA": 1}), "transA"),
    (("Softmax", ["x"], ["y"], {"axis": 0}), "attribute axis must be the last axis"),
])
def test_onnx_unsupported_ops_are_named(tmp_path, node, match):
    from onnx import helper

    op, inputs, outputs, attrs = node
    nodes = [helper.make_node(op, inputs, outputs, name="the_node", **attrs)]
    path = _onnx_model(tmp_path / "bad.onnx", nodes, {"W": np.ones((8, 8))}, 8, 8)
    with pytest.raises(ValueError, match=match):
        nn.from_onnx(path)


def _write_onnx(path, nodes, inits=(), inputs=(("x", 1, ["n", 8]),), opset=17):
    """An ONNX file of ``nodes`` (the last one's output is the graph's), initializers
    ``inits`` {name: array} and ``inputs`` (name, ONNX element type, dims)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(w), name) for name, w in dict(inits).items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _onnx_images_model(path, node, extra=(), inits=()):
    from onnx import helper

    W = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    return _write_onnx(path, [helper.make_node("Conv", ["x", "W"], ["c"], **node), *extra],
                       {"W": W, **dict(inits)}, [("x", 1, ["n", 2, 7, 8])])


@pytest.mark.parametrize("attrs", [{"auto_pad": "VALID"}, {"auto_pad": "SAME_UPPER"},
                                   {"auto_pad": "SAME_LOWER"},
                                   {"pads": [1, 1, 1, 1], "strides": [2, 1]}])
def test_onnx_conv_padding_variants_match_onnxruntime(tmp_path, attrs):
    path = _onnx_images_model(tmp_path / "c.onnx", attrs)
    X = np.random.default_rng(1).normal(size=(3, 2, 7, 8)).astype(np.float32)
    np.testing.assert_allclose(nn.from_onnx(path).forward(X), _ort(path, X), rtol=1e-4,
                               atol=1e-5)


def test_onnx_valid_variants_are_accepted(tmp_path):
    """Gemm's C of shape (1, N), a negative Flatten axis, a Constant node added, a fixed
    batch size (the check runs at it; any batch runs after), Gather of an embedding table."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=-3),
             helper.make_node("Gemm", ["f", "W", "C"], ["g"], transB=1),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
                 np.full((1, 4), 0.5, np.float32))),
             helper.make_node("Add", ["g", "k"], ["y"])]
    path = _write_onnx(tmp_path / "v.onnx", nodes,
                       {"W": rng.normal(size=(4, 12)).astype(np.float32),
                        "C": rng.normal(size=(1, 4)).astype(np.float32)},
                       [("x", TensorProto.FLOAT, [3, 3, 2, 2])])
    net = nn.from_onnx(path)
    assert [type(op).__name__ for op in net.ops] == ["Flatten", "Linear"]  # Add folded
    X = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(net.forward(X), _ort(path, X), rtol=1e-5, atol=1e-5)
    assert net.forward(X[:1]).shape == (1, 4)
    table = rng.normal(size=(20, 3)).astype(np.float32)
    path = _write_onnx(tmp_path / "e.onnx", [helper.make_node("Gather", ["T", "ids"], ["e"])],
                       {"T": table}, [("ids", TensorProto.INT64, ["n", 5])])
    ids = rng.integers(0, 20, (4, 5))
    np.testing.assert_array_equal(nn.from_onnx(path).forward(ids), table[ids])


def test_a_fixed_batch_torch_export_imports(tmp_path, images):
    """torch.onnx.export without dynamic_axes fixes the batch at the example's (1 here): the
    import check runs at that batch size."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(),
                                 torch.nn.Linear(16, 10)).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(module, (torch.from_numpy(images[2][:1]),), str(path), dynamo=False,
                      input_names=["x"])
    net = nn.from_onnx(path)
    np.testing.assert_allclose(net.forward(images[2]), _torch_output(module, images[2]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case, error, match", [
    ("no inputs", ValueError, r"op 'Relu' at node 'r' reads no value of the graph"),
    ("1-D weights", ValueError, r"op 'MatMul' at node 'm' cannot be imported as Linear: the "
                                r"weights must be 2-D, got shape \(8,\)"),
    ("weights first", ValueError, "the weights must be the second input"),
    ("alpha type", ValueError, "attribute alpha must be a finite number, got 'x'"),
    ("unknown input", ValueError, r"op 'Relu' at node 'r' .*reads \['nope'\]"),
    ("training batchnorm", ValueError, "attribute training_mode=1"),
    ("other domain", ValueError, "unsupported op 'com.microsoft.FusedGemm' at node 'm'"),
    ("float16 input", TypeError, "input 'x' has ONNX element type 10"),
    ("huge initializer", ValueError, "initializer 'W' is 4000000000000, above lutengine.config"
                                     ".MAX_ARRAY_BYTES"),
    ("initializer without data", ValueError, r"initializer 'W' declares dims \[8, 4\] \(32 "
                                             r"values\) but holds 0"),
    ("huge input", ValueError, "input 'x' size per example is 10000000000, above "
                               "lutengine.config.MAX_VALUE_ELEMENTS"),
    ("huge pads", ValueError, "attribute pads is 100000, above lutengine.config.MAX_WINDOW"),
    ("huge kernel", ValueError, "attribute kernel_shape is 5000, above lutengine.config.MAX_WINDOW"),
    ("kernel larger than the image", ValueError, r"op MaxPool2d at node 'p': a \(9, 9\) window "
                                                 "does not fit"),
    ("symbolic feature dim", ValueError, "every dim after the batch must be fixed"),
])
def test_the_onnx_import_error_matrix(tmp_path, monkeypatch, case, error, match):
    from onnx import TensorProto, helper

    W = np.ones((8, 4), np.float32)
    x = [("x", TensorProto.FLOAT, ["n", 8])]
    images = [("x", TensorProto.FLOAT, ["n", 2, 8, 8])]
    nodes, inits, inputs = {
        "no inputs": ([helper.make_node("Relu", [], ["y"], name="r")], {}, x),
        "1-D weights": ([helper.make_node("MatMul", ["x", "w"], ["y"], name="m")],
                        {"w": np.ones(8, np.float32)}, x),
        "weights first": ([helper.make_node("MatMul", ["W", "x"], ["y"], name="m")],
                          {"W": W}, x),
        "alpha type": ([helper.make_node("Gemm", ["x", "W"], ["y"], name="g", alpha="x")],
                       {"W": W}, x),
        "unknown input": ([helper.make_node("Relu", ["nope"], ["y"], name="r")], {}, x),
        "training batchnorm": ([helper.make_node(
            "BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
            training_mode=1)], {k: np.ones(2, np.float32) for k in "sbmv"}, images),
        "other domain": ([helper.make_node("FusedGemm", ["x", "W"], ["y"], name="m",
                                           domain="com.microsoft")], {"W": W}, x),
        "float16 input": ([helper.make_node("Relu", ["x"], ["y"])], {},
                          [("x", TensorProto.FLOAT16, ["n", 8])]),
        "huge initializer": ([helper.make_node("MatMul", ["x", "W"], ["y"])], {}, x),
        "initializer without data": ([helper.make_node("MatMul", ["x", "W"], ["y"])], {}, x),
        "huge input": ([helper.make_node("Relu", ["x"], ["y"])], {},
                       [("x", TensorProto.FLOAT, ["n", 100000, 100000])]),
        "huge pads": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                        pads=[100000] * 4)], {}, images),
        "huge kernel": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[5000, 5000])],
                        {}, images),
        "kernel larger than the image": ([helper.make_node("MaxPool", ["x"], ["y"], name="p",
                                                           kernel_shape=[9, 9])], {}, images),
        "symbolic feature dim": ([helper.make_node("Relu", ["x"], ["y"])], {},
                                 [("x", TensorProto.FLOAT, ["n", "d"])]),
    }[case]
    path = _write_onnx(tmp_path / "bad.onnx", nodes, inits, inputs)
    if case in ("huge initializer", "initializer without data"):
        import onnx

        model = onnx.load(str(path))
        dims = [10**6, 10**6] if case == "huge initializer" else [8, 4]
        tensor = model.graph.initializer.add()  # dims declared, no data
        tensor.name, tensor.data_type = "W", TensorProto.FLOAT
        tensor.dims.extend(dims)
        onnx.save(model, str(path))
    if case == "training batchnorm":  # rejected by the converter, onnxruntime or not
        monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(error, match=match):
        nn.from_onnx(path)


def test_external_data_is_read_only_from_the_models_folder(tmp_path):
    """A tensor whose external data lies outside the model's folder ('../', an absolute
    path, a symlink out) is refused before anything is read; inside, it loads."""
    import onnx
    from onnx import helper, numpy_helper

    W = np.random.default_rng(4).normal(size=(8, 4)).astype(np.float32)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(W.tobytes())
    (model_dir / "link.bin").symlink_to(secret)
    for location, ok in (("w.bin", True), ("../secret.bin", False), (str(secret), False),
                         ("link.bin", False)):
        path = _write_onnx(model_dir / "m.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])])
        model = onnx.load(str(path))
        tensor = numpy_helper.from_array(W, "W")
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"),
                           ("length", str(W.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        model.graph.initializer.append(tensor)
        onnx.save(model, str(path))
        if ok:
            X = np.ones((2, 8), np.float32)
            np.testing.assert_allclose(nn.from_onnx(path).forward(X), X @ W, rtol=1e-5)
        else:
            with pytest.raises(ValueError, match="must be a file inside the model's folder"):
                nn.from_onnx(path)


def test_a_file_that_is_not_onnx_is_named(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"\x08\xff\xff\xff\xff\xff\xff garbage")
    with pytest.raises(ValueError, match="is not a readable ONNX model"):
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
