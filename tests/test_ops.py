"""The op table (lutengine.ops) is the one list of ops: every name it maps from PyTorch and
ONNX exists there and maps to one op, docs/ops.md is generated from it, each op's torch form
(what training runs) computes its NumPy forward, and each op survives its saved form."""

import inspect
import operator
from pathlib import Path

import numpy as np
import pytest

from lutengine import nn, ops

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parent.parent


def _examples():
    """op class -> (an instance, its inputs): every op of the table must have one."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 6, 7)).astype(np.float32)
    rows = rng.normal(size=(4, 5)).astype(np.float32)
    dense = nn.Dense(rng.normal(size=(5, 3)), rng.normal(size=3))
    conv = nn.Dense(rng.normal(size=(27, 4)), rng.normal(size=4))
    return {
        ops.Linear: (ops.Linear(dense), [rng.normal(size=(2, 4, 5)).astype(np.float32)]),
        ops.Conv2d: (ops.Conv2d(conv, 3, 3, (2, 1), 1), [images]),
        ops.BatchNorm: (ops.BatchNorm(rng.random(3) + 0.5, rng.normal(size=3)), [images]),
        ops.ReLU: (ops.ReLU(), [images]),
        ops.GELU: (ops.GELU("tanh"), [images]),
        ops.MaxPool2d: (ops.MaxPool2d(3, 2, 1), [images]),
        ops.AvgPool2d: (ops.AvgPool2d((2, 3), 1, (1, 1)), [images]),
        ops.Flatten: (ops.Flatten(), [images]),
        ops.Softmax: (ops.Softmax(), [rows]),
        ops.LogSoftmax: (ops.LogSoftmax(), [rows]),
        ops.Add: (ops.Add(), [images, images[:, :, :1]]),
        ops.Mul: (ops.Mul(rng.normal(size=(3, 1, 1))), [images]),
        ops.Concat: (ops.Concat(-2), [images, images[:, :, :2]]),
        ops.Embedding: (ops.Embedding(rng.normal(size=(9, 4))), [rng.integers(0, 9, (2, 5))]),
        ops.Identity: (ops.Identity(), [rows]),
    }


def test_every_op_has_an_example_here():
    assert set(_examples()) == set(ops.OPS)


@pytest.mark.parametrize("cls", ops.OPS, ids=lambda cls: cls.name)
def test_torch_form_computes_the_numpy_forward(cls):
    op, inputs = _examples()[cls]
    expected = op(*inputs)
    args = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    if op.lut:  # a weight layer applies a product module (rows → rows)
        from lutengine.learned import Affine

        args.append(Affine(op.layer, trainable=False))
    with torch.no_grad():
        got = op.torch_forward(*args).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    shapes = [x.shape[1:] for x in inputs]
    assert expected.shape[1:] == op.output_shape(*shapes)


@pytest.mark.parametrize("cls", ops.OPS, ids=lambda cls: cls.name)
def test_an_op_is_rebuilt_from_its_saved_form(cls):
    op, inputs = _examples()[cls]
    layer = {"layer": op.layer} if op.lut else {}
    again = cls(**op.config(), **op.arrays(), **layer)
    np.testing.assert_array_equal(again(*inputs), op(*inputs))
    assert set(op.arrays()) <= set(cls.array_names())


def _torch_function_exists(name):
    return any(hasattr(space, name) for space in (torch, torch.nn.functional, torch.Tensor,
                                                    operator))


@pytest.mark.parametrize("cls", ops.OPS, ids=lambda cls: cls.name)
def test_every_name_the_table_maps_exists_and_maps_back(cls):
    assert cls.name == cls.__name__ and cls.__doc__.strip()
    for name in cls.torch_modules:
        assert inspect.isclass(getattr(torch.nn, name, None)), name
        assert ops.TORCH_MODULES[name] is cls
    for name in cls.torch_functions:
        assert _torch_function_exists(name), name
        assert ops.TORCH_FUNCTIONS[name] is cls
    for name in cls.onnx_ops:
        assert onnx.defs.has(name), name
        assert ops.ONNX_OPS[name] is cls
    assert cls.torch_modules or cls.torch_functions or cls.onnx_ops


def test_the_importers_and_the_network_read_the_table():
    """Nothing lists ops by hand: the import indices are exactly the table's names, and the
    network refuses what is not in it."""
    assert set(ops.TORCH_MODULES) == {n for cls in ops.OPS for n in cls.torch_modules}
    assert set(ops.TORCH_FUNCTIONS) == {n for cls in ops.OPS for n in cls.torch_functions}
    assert set(ops.ONNX_OPS) == {n for cls in ops.OPS for n in cls.onnx_ops}
    assert set(ops.BY_NAME.values()) == set(ops.OPS)
    importers = (ROOT / "lutengine" / "importers.py").read_text()
    for cls in ops.OPS:  # the importers never name an op class
        assert f"ops.{cls.name}(" not in importers


def test_docs_op_list_is_the_table():
    page = (ROOT / "docs" / "ops.md").read_text()
    assert ops.table_markdown() in page
    for cls in ops.OPS:
        assert f"| {cls.name} |" in page
