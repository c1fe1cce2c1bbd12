"""Every public entry point against bad input, as one matrix.

Array arguments (``ARRAY_ARGUMENTS``) meet every case of ``BAD_ARRAYS``: each must raise
ValueError or TypeError with a message naming the argument and what was expected, and no
input may be modified. The cases of ``ACCEPTED_ARRAYS`` must give the result of the plain
float32 array: integers and every float width (float16 included: it converts to float32
exactly) are cast; views, F-ordered, read-only and memory-mapped arrays are read as they
are. Scalars and other arguments (k, codes, devices, unfitted estimators, files, network
structure) follow in their own tables.
"""

import copy
import re
from types import SimpleNamespace

import numpy as np
import pytest

import lutengine as le
from lutengine import nn

D, M, N_ITEMS = 8, 3, 20


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((64, D)).astype(np.float32)
    B = rng.standard_normal((D, M)).astype(np.float32)
    W = rng.standard_normal((N_ITEMS, D)).astype(np.float32)
    b = rng.standard_normal(N_ITEMS).astype(np.float32)
    net = nn.MLP([nn.Dense(rng.standard_normal((D, 6)), np.zeros(6)),
                  nn.Dense(rng.standard_normal((6, M)), np.zeros(M))])
    return SimpleNamespace(
        A=A, B=B, W=W, b=b, bias=np.ones(M, np.float32), net=net,
        y=np.arange(64) % M,
        lut=le.LutMatmul(2, progress=False).fit(A, B),
        pq=le.PQMatmul(2, random_state=0, progress=False).fit(A, B),
        index=le.MipsIndex(W, method="brute"),
        layer=le.TopKLinear(W, b, k=3, method="brute"))


def _fit_lut(f, A=None, B=None, bias=None):
    est = le.LutMatmul(2, progress=False).fit(f.A if A is None else A, f.B if B is None else B,
                                              f.bias if bias is None else bias)
    return est.predict(f.A)


def _fit_pq(f, A=None, B=None):
    est = le.PQMatmul(2, random_state=0, progress=False).fit(f.A if A is None else A,
                                                             f.B if B is None else B)
    return est.predict(f.A)


def _columns_short(X):
    return X[:, :-1]


def _rows_short(X):
    return X[:-1]


def _matrix(name, valid, call, misshape=_columns_short):
    return name, valid, call, "matrix", misshape


def _queries(name, call):
    return name, lambda f: f.A, call, "queries", _columns_short


def _vector(name, valid, call):
    return name, valid, call, "vector", _rows_short


#: entry point -> (argument name, the valid value from the fixture, call(fixture, value),
#: kind: "matrix", "queries" (a 1-D vector is one query) or "vector", and the value of a
#: wrong shape made from the valid one, where there is one: None for a matrix any shape of
#: which is valid)
ARRAY_ARGUMENTS = {
    "LutMatmul.fit(A_train)": _matrix("A_train", lambda f: f.A, lambda f, X: _fit_lut(f, A=X)),
    "LutMatmul.fit(B)": _matrix("B", lambda f: f.B, lambda f, X: _fit_lut(f, B=X), _rows_short),
    "LutMatmul.fit(bias)": _vector("bias", lambda f: f.bias, lambda f, x: _fit_lut(f, bias=x)),
    "LutMatmul.transform": _matrix("A", lambda f: f.A, lambda f, X: f.lut.transform(X)),
    "LutMatmul.predict": _matrix("A", lambda f: f.A, lambda f, X: f.lut.predict(X)),
    "PQMatmul.fit(A_train)": _matrix("A_train", lambda f: f.A, lambda f, X: _fit_pq(f, A=X)),
    "PQMatmul.fit(B)": _matrix("B", lambda f: f.B, lambda f, X: _fit_pq(f, B=X), _rows_short),
    "PQMatmul.transform": _matrix("A", lambda f: f.A, lambda f, X: f.pq.transform(X)),
    "PQMatmul.predict": _matrix("A", lambda f: f.A, lambda f, X: f.pq.predict(X)),
    "MipsIndex(W)": _matrix("W", lambda f: f.W,
                            lambda f, X: le.MipsIndex(X, "brute").search(f.A, 3), None),
    "MipsIndex(bias)": _vector("bias", lambda f: f.b,
                               lambda f, x: le.MipsIndex(f.W, "brute", x).search(f.A, 3)),
    "MipsIndex.search": _queries("Q", lambda f, Q: f.index.search(Q, 3)),
    "TopKLinear(W)": _matrix("W", lambda f: f.W,
                             lambda f, X: le.TopKLinear(X, f.b, 3, method="brute")(f.A), None),
    "TopKLinear(b)": _vector("b", lambda f: f.b,
                             lambda f, x: le.TopKLinear(f.W, x, 3, method="brute")(f.A)),
    "TopKLinear.__call__": _queries("X", lambda f, X: f.layer(X)),
    "TopKLinear.select": _queries("X", lambda f, X: f.layer.select(X)),
    "TopKLinear.active": _queries("X", lambda f, X: f.layer.active(X)),
    "Network.predict": _matrix("X", lambda f: f.A, lambda f, X: f.net.predict(X)),
    "Network.forward": _matrix("X", lambda f: f.A, lambda f, X: f.net.forward(X)),
    "Network.forward(output)": _matrix("X", lambda f: f.A,
                                       lambda f, X: f.net.forward(X, output="relu")),
    "Network.score": _matrix("X", lambda f: f.A, lambda f, X: f.net.score(X, f.y)),
    "MLP.train": _matrix("X", lambda f: f.A, lambda f, X: nn.MLP.train(
        X, f.y, [4], epochs=1, progress=False).forward(f.A), None),
    "nn.Dense(W)": _matrix("W", lambda f: f.B, lambda f, X: nn.Dense(X, f.bias).predict(f.A),
                           None),
    "nn.Dense(b)": _vector("b", lambda f: f.bias, lambda f, x: nn.Dense(f.B, x).predict(f.A)),
    "nn.replace_layers": _matrix("X_train", lambda f: f.A, lambda f, X: nn.replace_layers(
        f.net, X, f.y, 2, finetune=False, progress=False).forward(f.A)),
}


def _with(X, index, value):
    X = np.array(X, dtype=np.float64)
    X[index] = value
    return X


ANY = ("matrix", "queries", "vector")
MESSAGE_DTYPE = r"must be a real numeric array, got dtype "

#: case -> (the kinds of argument it applies to, the bad value made from the valid one,
#: the exception, the message after the argument's name)
BAD_ARRAYS = {
    "bool": (ANY, lambda X: X > 0, TypeError, MESSAGE_DTYPE + "bool"),
    "complex": (ANY, lambda X: X + 1j, TypeError, MESSAGE_DTYPE + "complex"),
    "object": (ANY, lambda X: X.astype(object), TypeError, MESSAGE_DTYPE + "object"),
    "strings": (ANY, lambda X: X.astype(str), TypeError, MESSAGE_DTYPE + "<U"),
    "ragged rows": (("matrix", "queries"), lambda X: [list(X[0]), list(X[1][:-1])], TypeError,
                    r"must be a .*could not convert"),
    "ragged": (("vector",), lambda x: [[x[0]], [x[1], x[2]]], TypeError,
               r"must be a .*could not convert"),
    "nan": (ANY, lambda X: _with(X, 0, np.nan), ValueError, r"contains NaN or Inf"),
    "inf": (ANY, lambda X: _with(X, -1, -np.inf), ValueError, r"contains NaN or Inf"),
    "empty": (ANY, lambda X: X[:0], ValueError, r"must (not be empty|have shape)"),
    "scalar": (ANY, lambda X: np.float32(1), ValueError, r"must (be 2-D|have shape)"),
    "3-D": (ANY, lambda X: X[None], ValueError, r"must (be 2-D|have shape)"),
    "1-D": (("matrix",), lambda X: X[0], ValueError, r"must be 2-D"),  # queries: one query
    "2-D": (("vector",), lambda x: x[None], ValueError, r"must have shape"),
}
#: what the message of an entry's wrong shape (ARRAY_ARGUMENTS) says
SHAPE_MESSAGE = r"(has \d+ columns|must have D = \d+ rows|must have shape)"


def _array_cases():
    for entry, (_, _, _, kind, misshape) in ARRAY_ARGUMENTS.items():
        cases = [case for case, (kinds, *_) in BAD_ARRAYS.items() if kind in kinds]
        for case in cases + ["shape"] * (misshape is not None):
            yield pytest.param(entry, case, id=f"{entry}-{case}")


def _snapshot(value):
    return copy.deepcopy(value) if isinstance(value, list) else np.array(value, copy=True)


def _assert_unchanged(value, before):
    if isinstance(value, list):
        assert value == before
    else:
        np.testing.assert_array_equal(value, before)


@pytest.mark.parametrize("entry, case", list(_array_cases()))
def test_bad_arrays_raise_naming_the_argument(fitted, entry, case):
    name, valid, call, _, misshape = ARRAY_ARGUMENTS[entry]
    if case == "shape":
        bad, error, message = misshape(valid(fitted)), ValueError, SHAPE_MESSAGE
    else:
        _, make, error, message = BAD_ARRAYS[case]
        bad = make(valid(fitted))
    before = _snapshot(bad)
    # the argument's name, before the message (or after it, where two arguments disagree)
    name = rf"\b{re.escape(name)}\b"
    with pytest.raises(error, match=f"{name}.*{message}|{message}.*{name}"):
        call(fitted, bad)
    _assert_unchanged(bad, before)  # not modified, even on failure


def _memmap(X, tmp_path):
    path = tmp_path / "array.dat"
    np.asarray(X, dtype=np.float32).tofile(path)
    return np.memmap(path, dtype=np.float32, mode="r", shape=np.shape(X))


def _read_only(X, tmp_path):
    X = np.array(X, dtype=np.float32)
    X.setflags(write=False)
    return X


def _strided(X, tmp_path):
    X = np.asarray(X, dtype=np.float32)
    return np.repeat(X, 2, axis=-1)[..., ::2]


#: case -> the accepted value made from the valid one (and a folder for files); it must
#: give the result of the float32 array of the same values
ACCEPTED_ARRAYS = {
    "float16": lambda X, tmp_path: X.astype(np.float16),
    "float64": lambda X, tmp_path: X.astype(np.float64),
    "int": lambda X, tmp_path: np.round(X * 4).astype(np.int64),
    "list": lambda X, tmp_path: X.tolist(),
    "F-ordered": lambda X, tmp_path: np.asfortranarray(X),
    "non-contiguous": _strided,
    "read-only": _read_only,
    "memory-mapped": _memmap,
}


@pytest.mark.parametrize("case", ACCEPTED_ARRAYS)
@pytest.mark.parametrize("entry", ARRAY_ARGUMENTS)
def test_accepted_arrays_give_the_float32_result(fitted, entry, case, tmp_path):
    _, valid, call, _, _ = ARRAY_ARGUMENTS[entry]
    value = ACCEPTED_ARRAYS[case](valid(fitted), tmp_path)
    before = _snapshot(value)
    plain = np.array(value, dtype=np.float32)
    expected = call(fitted, plain)
    got = call(fitted, value)
    for want, result in zip(expected if isinstance(expected, tuple) else (expected,),
                            got if isinstance(got, tuple) else (got,)):
        np.testing.assert_array_equal(result, want)
    _assert_unchanged(value, before)


# ---------------------------------------------------------------------------------------
# other arguments: case -> (call(fixture), exception, message)

OTHER_CASES = {
    # k of a search or a layer: an integer in 1..N
    "search k=0": (lambda f: f.index.search(f.A, 0),
                   ValueError, r"k must be between 1 and .* N = 20, got 0"),
    "search k=-1": (lambda f: f.index.search(f.A, -1), ValueError, r"k must be between 1 and"),
    "search k>N": (lambda f: f.index.search(f.A, N_ITEMS + 1),
                   ValueError, r"k must be between 1 and .* got 21"),
    "search k float": (lambda f: f.index.search(f.A, 2.0),
                       TypeError, r"k must be an integer, got 2.0"),
    "search k bool": (lambda f: f.index.search(f.A, True),
                      TypeError, r"k must be an integer, got True"),
    "TopKLinear k=0": (lambda f: le.TopKLinear(f.W, f.b, 0),
                       ValueError, r"k must be between 1 and"),
    "TopKLinear k>N": (lambda f: le.TopKLinear(f.W, f.b, N_ITEMS + 1),
                       ValueError, r"k must be between 1 and"),
    "TopKLinear k None": (lambda f: le.TopKLinear(f.W, f.b, None),
                          TypeError, r"k must be an integer"),
    # codes: uint8 (n >= 1, C), values 0..15
    "codes 16": (lambda f: f.lut.predict_codes(np.full((3, 2), 16, np.uint8)),
                 ValueError, r"codes holds values above 15"),
    "PQ codes 16": (lambda f: f.pq.predict_codes(np.full((3, 2), 16, np.uint8)),
                    ValueError, r"codes holds values above 15"),
    "codes int64": (lambda f: f.lut.predict_codes(np.zeros((3, 2), np.int64)),
                    TypeError, r"codes must be a uint8 array, got int64"),
    "codes list": (lambda f: f.lut.predict_codes([[0, 1]]),
                   TypeError, r"codes must be a uint8 array, got list"),
    "codes columns": (lambda f: f.lut.predict_codes(np.zeros((3, 3), np.uint8)),
                      ValueError, r"codes must have shape \(n >= 1, 2\)"),
    "codes empty": (lambda f: f.lut.predict_codes(np.zeros((0, 2), np.uint8)),
                    ValueError, r"codes must have shape \(n >= 1, 2\)"),
    "codes 1-D": (lambda f: f.lut.predict_codes(np.zeros(2, np.uint8)),
                  ValueError, r"codes must have shape"),
    # unfitted estimators
    **{f"unfitted {cls.__name__}.{name}": (lambda f, cls=cls, call=call: call(cls(), f),
                                          le.NotFittedError, rf"{cls.__name__} is not fitted")
       for cls in (le.LutMatmul, le.PQMatmul) for name, call in {
           "predict": lambda est, f: est.predict(f.A),
           "transform": lambda est, f: est.transform(f.A),
           "predict_codes": lambda est, f: est.predict_codes(np.zeros((1, 16), np.uint8)),
           "save": lambda est, f: est.save("unused.npz")}.items()},
    "unfitted MLP layer": (lambda f: nn.MLP([le.LutMatmul()]),
                           le.NotFittedError, r"LutMatmul is not fitted"),
    # nn: network structure, labels, sizes
    "MLP no layers": (lambda f: nn.MLP([]), ValueError, r"layers must not be empty"),
    "MLP layer type": (lambda f: nn.MLP([f.B]), TypeError,
                       r"layers\[0\] must be a Dense or a fitted estimator .*, got ndarray"),
    "MLP layer shapes": (lambda f: nn.MLP([f.net.layers[0], f.net.layers[0]]), ValueError,
                         r"nodes\[2\] \('linear_1', Linear\) takes \(…, 8\) features, gets "
                         r"\(6,\)"),
    "MLP classes": (lambda f: nn.MLP(f.net.layers, classes=[0, 1]), ValueError,
                    r"classes must have one label per output \(3\)"),
    "Network.score y length": (lambda f: f.net.score(f.A, f.y[:-1]),
                               ValueError, r"y must hold one label per example of X"),
    "Network.forward output": (lambda f: f.net.forward(f.A, output="nope"),
                               ValueError, r"output must name a node of the network, got 'nope'"),
    "MLP.train y float": (lambda f: nn.MLP.train(f.A, f.y + 0.5, [4], progress=False),
                          ValueError, r"y must hold 64 integer labels >= 0"),
    "MLP.train y length": (lambda f: nn.MLP.train(f.A, f.y[:3], [4], progress=False),
                           ValueError, r"y must hold 64 integer labels >= 0, got shape \(3,\)"),
    "MLP.train hidden size": (lambda f: nn.MLP.train(f.A, f.y, [0], progress=False),
                              ValueError, r"hidden_sizes\[0\] must be at least 1"),
    "MLP.from_sklearn unfitted": (lambda f: nn.MLP.from_sklearn(object()),
                                  ValueError, r"clf must be a fitted MLPClassifier"),
    "replace_layers y_train": (
        lambda f: nn.replace_layers(f.net, f.A, f.y + 7, 2, progress=False),
        ValueError, r"y_train must hold 64 labels among the network's classes"),
    "replace_layers layers": (
        lambda f: nn.replace_layers(f.net, f.A, f.y, 2, layers=[2], progress=False),
        ValueError, r"layers must be indices in 0..1"),
    "replace_layers layers type": (
        lambda f: nn.replace_layers(f.net, f.A, f.y, 2, layers=["0"], progress=False),
        TypeError, r"layers must be integer indices in 0..1"),
    "replace_layers ncodebooks float": (
        lambda f: nn.replace_layers(f.net, f.A, f.y, 2.5, progress=False),
        TypeError, r"ncodebooks must be an integer or one integer per replaced layer"),
    "replace_layers ncodebooks count": (
        lambda f: nn.replace_layers(f.net, f.A, f.y, [2, 2, 2], progress=False),
        ValueError, r"ncodebooks must be an integer or hold one per replaced layer \(2\)"),
    "replace_layers ncodebooks 0": (
        lambda f: nn.replace_layers(f.net, f.A, f.y, 0, progress=False),
        ValueError, r"ncodebooks must be between 1 and"),
    # files
    "load missing": (lambda f: le.load("no-such-file.npz"), FileNotFoundError, r"no-such-file"),
}


@pytest.mark.parametrize("case", OTHER_CASES)
def test_other_bad_arguments_raise_naming_them(fitted, case):
    call, error, message = OTHER_CASES[case]
    with pytest.raises(error, match=message):
        call(fitted)


def test_load_of_a_file_that_is_no_archive_names_the_path(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"path .*garbage.npz.* is not a readable lutengine"):
        le.load(path)


#: every entry point with a ``device`` argument
DEVICE_ENTRY_POINTS = {
    "LutMatmul.transform": lambda f, device: f.lut.transform(f.A, device=device),
    "LutMatmul.predict": lambda f, device: f.lut.predict(f.A, device=device),
    "PQMatmul.transform": lambda f, device: f.pq.transform(f.A, device=device),
    "PQMatmul.predict": lambda f, device: f.pq.predict(f.A, device=device),
    "MipsIndex.search": lambda f, device: f.index.search(f.A, 3, device=device),
    "TopKLinear.__call__": lambda f, device: f.layer(f.A, device=device),
}


@pytest.mark.parametrize("device", ["gpu", "CPU", None, 0, ["cpu"]], ids=repr)
@pytest.mark.parametrize("entry", DEVICE_ENTRY_POINTS)
def test_unknown_device_is_refused(fitted, entry, device):
    with pytest.raises(ValueError, match=r"device must be one of \['auto', 'cpu', 'cuda'\], got "
                       + re.escape(repr(device))):
        DEVICE_ENTRY_POINTS[entry](fitted, device)
