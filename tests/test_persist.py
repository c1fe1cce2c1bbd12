"""``lutengine.load`` trusts nothing in the file: targeted defects, then the fuzz of
tests/fuzz_load.py in a subprocess (a crash or hang there fails the test, not the run)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lutengine as le
from lutengine import _persist

FUZZ = Path(__file__).resolve().parent / "fuzz_load.py"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, arrays) of a saved LutMatmul and of a saved h2alsh MipsIndex."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 10)).astype(np.float32)
    est = le.LutMatmul(4, progress=False).fit(A, rng.standard_normal((10, 3)))
    index = le.MipsIndex(rng.standard_normal((900, 6)), method="h2alsh", random_state=0,
                         scan_threshold=100, max_ring=300)
    out = {}
    for name, obj in (("lut", est), ("h2alsh", index)):
        path = tmp_path_factory.mktemp(name) / "m.npz"
        obj.save(path)
        with np.load(path, allow_pickle=False) as f:
            out[name] = path, {key: f[key] for key in f.files}
    return out


def _rewrite(arrays, path, **changes):
    np.savez(path, **{**arrays, **changes})
    return path


def _header(arrays, **changes):
    header = json.loads(str(arrays["__header__"]))
    header.update(changes)
    return np.array(json.dumps(header))


def test_a_npy_file_is_not_a_model(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single array \(.npy\)"):
        le.load(tmp_path / "x.npy")


@pytest.mark.parametrize("name, value, match", [
    ("split_dims_", lambda a: a + 10, r"split_dims_ holds values outside \[0, 10\)"),
    ("split_dims_", lambda a: a.astype(np.int32), "split_dims_ must be a int64 array"),
    ("thresholds_", lambda a: a[:, :8], r"thresholds_ must have shape"),
    ("luts_", lambda a: np.where(a > 0, np.nan, a), "luts_ contains NaN or Inf"),
    ("subspace_cols_", lambda a: a[::-1] * 0, "subspace_cols_ must be a permutation"),
    ("subspace_bounds_", lambda a: a + 1, "subspace_bounds_"),
    ("lut_scale_", lambda a: np.full_like(a, 1e-45), "finite float32 inverse"),
])
def test_a_damaged_lut_array_is_named(saved, tmp_path, name, value, match):
    path, arrays = saved["lut"]
    bad = _rewrite(arrays, tmp_path / "bad.npz", **{name: value(arrays[name])})
    with pytest.raises(ValueError, match=match):
        le.load(bad)


@pytest.mark.parametrize("changes, match", [
    ({"format_version": 1}, "format version 1"),
    ({"class": "Nope"}, "no valid header"),
    ({"params": {"ncodebooks": 4}}, "the parameters of a LutMatmul are"),
    ({"params": "x"}, "the parameters of a LutMatmul are"),
])
def test_a_bad_header_is_rejected(saved, tmp_path, changes, match):
    path, arrays = saved["lut"]
    with pytest.raises(ValueError, match=match):
        le.load(_rewrite(arrays, tmp_path / "bad.npz", __header__=_header(arrays, **changes)))


def test_parameters_are_checked_not_copied_blindly(saved, tmp_path):
    path, arrays = saved["lut"]
    header = json.loads(str(arrays["__header__"]))
    for key, value in (("ncodebooks", 5), ("ncodebooks", "4"), ("partition", "bogus"),
                       ("quantize", 1)):
        params = {**header["params"], key: value}
        with pytest.raises(ValueError, match=key):
            le.load(_rewrite(arrays, tmp_path / "bad.npz",
                             __header__=_header(arrays, params=params)))


def test_an_unknown_mips_method_is_rejected(saved, tmp_path):
    path, arrays = saved["h2alsh"]
    with pytest.raises(ValueError, match="method_"):
        le.load(_rewrite(arrays, tmp_path / "bad.npz", method_=np.array("nope")))


def test_extra_or_missing_arrays_are_named(saved, tmp_path):
    path, arrays = saved["lut"]
    with pytest.raises(ValueError, match=r"unexpected \['x'\]"):
        le.load(_rewrite(arrays, tmp_path / "bad.npz", x=np.zeros(2)))
    del_one = {k: v for k, v in arrays.items() if k != "luts_q_"}
    np.savez(tmp_path / "cut.npz", **del_one)
    with pytest.raises(ValueError, match=r"missing \['luts_q_'\]"):
        le.load(tmp_path / "cut.npz")


def test_fuzzed_files_are_rejected_or_load_into_working_models():
    """Each mutated file of every class is rejected with a ValueError or loads into an
    object whose results match the oracles; the process never crashes or hangs."""
    examples = 100
    proc = subprocess.run([sys.executable, str(FUZZ), "--examples", str(examples)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    kinds = {key.split(": ")[0].split(" ")[1] for key in summary["outcomes"]}
    assert summary["files"] >= 7 * examples * 0.8, summary
    assert summary["rejected"] > 0 and summary["loaded"] > 0, summary
    assert kinds >= {"truncate", "flip", "swap", "dtype", "shape", "index", "nonfinite",
                     "param"}, summary


# -- networks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def networks():
    """name -> (network, inputs): an exact MLP, its LUT replacement (a fused chain), a CNN
    with LUT convolutions and string classes, a learned network, and a graph of every other
    op (residual Add, Mul, Concat, Embedding of int64 ids, BatchNorm, constants, GELU)."""
    from lutengine import datasets, nn

    X, y = datasets.load_digits()[:2]
    X, y = X[:600], y[:600]
    mlp = nn.MLP.train(X, y, [16, 16], epochs=2, progress=False)
    images = X.reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(0)
    cnn = nn.Network([nn.Conv2d(nn.Dense(rng.normal(size=(9, 4)), np.zeros(4)), 1, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2, 1),
                      nn.Conv2d(nn.Dense(rng.normal(size=(36, 3)), np.zeros(3)), 4, 3, padding=1),
                      nn.Flatten(), nn.Linear(nn.Dense(rng.normal(size=(27, 10)), np.zeros(10))),
                      nn.LogSoftmax()], (1, 8, 8), classes=list("abcdefghij"))
    labels = cnn.predict(images)
    graph = nn.Network([
        ("emb", nn.Embedding(rng.normal(size=(30, 6))), ["ids"]),
        ("lin", nn.Linear(nn.Dense(rng.normal(size=(6, 6)), rng.normal(size=6))), ["emb"]),
        ("gelu", nn.GELU("tanh"), ["lin"]), ("res", nn.Add(), ["gelu", "emb"]),
        ("gate", nn.Mul(), ["res", "mask"]), ("scaled", nn.Mul(np.float32(0.5)), ["gate"]),
        ("bn", nn.BatchNorm(np.linspace(1, 2, 5), np.zeros(5)), ["scaled"]),
        ("both", nn.Concat(-1), ["bn", "res"]), ("flat", nn.Flatten(), ["both"]),
        ("head", nn.Linear(nn.Dense(rng.normal(size=(60, 3)), np.zeros(3))), ["flat"]),
        ("shift", nn.Add(np.arange(3.0)), ["head"]), ("p", nn.Softmax(), ["shift"])],
        {"ids": nn.Input((5,), "int64"), "mask": (5, 1)}, classes=[10, 20, 30])
    graph_inputs = {"ids": rng.integers(0, 30, (40, 5)),
                    "mask": (rng.random((40, 5, 1)) > 0.3).astype(np.float32)}
    return {
        "exact": (mlp, X),
        "lut": (nn.replace_layers(mlp, X, y, [4, 2, 2], finetune=False, progress=False), X),
        "lut-cnn": (nn.replace_layers(cnn, images, labels, 4, finetune=False, progress=False),
                    images),
        "learned": (nn.learn_luts(mlp, X, y, 2, epochs=1, progress=False), X),
        "graph": (graph, graph_inputs),
    }


@pytest.mark.parametrize("name", ["exact", "lut", "lut-cnn", "learned", "graph"])
def test_a_network_round_trip_is_bit_identical(networks, name, tmp_path):
    net, X = networks[name]
    net.save(tmp_path / "net.npz")
    loaded = le.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.forward(X), net.forward(X))
    assert [node.name for node in loaded.nodes] == [node.name for node in net.nodes]
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in net.layers]
    assert loaded.inputs == net.inputs and loaded.output == net.output
    np.testing.assert_array_equal(loaded.classes, net.classes)
    if net.classes is not None:
        np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def _network_file(networks, tmp_path, name="lut"):
    net, _ = networks[name]
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz", allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["params"]["nodes"][0].update(op="Sigmoid"), r"unknown op 'Sigmoid'"),
    (lambda h: h["params"]["nodes"][0]["layer"].update({"class": "MipsIndex"}),
     "a weight layer must be a Dense, LutMatmul or PQMatmul"),
    (lambda h: h["params"]["nodes"][1].update(inputs=["softmax"]),
     r"reads \['softmax'\], which no input or earlier node"),
    (lambda h: h["params"]["nodes"][0]["config"].update(extra=1), "unexpected keyword"),
    (lambda h: h["params"]["inputs"][0].__setitem__(1, [10**9]),
     "above lutengine.config.MAX_VALUE_ELEMENTS"),
    (lambda h: h["params"]["nodes"][0]["layer"]["params"].update(ncodebooks=5),
     "ncodebooks is 5, but the fitted arrays hold 4"),
    (lambda h: h["params"].update(output="nowhere"), "output must name a node"),
])
def test_a_damaged_network_header_is_named(networks, tmp_path, edit, match):
    arrays = _network_file(networks, tmp_path)
    header = json.loads(str(arrays["__header__"]))
    edit(header)
    with pytest.raises(ValueError, match=match):
        le.load(_rewrite(arrays, tmp_path / "bad.npz", __header__=np.array(json.dumps(header))))


def test_member_names_are_checked_before_any_member_is_read(networks, tmp_path, monkeypatch):
    """An unexpected member is named without being read: here one declaring 10¹² bytes."""
    import zipfile

    arrays = _network_file(networks, tmp_path)
    path = _rewrite(arrays, tmp_path / "bad.npz")
    with zipfile.ZipFile(path, "a") as archive:
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
        header["shape"] = (10**12,)
        stream = io.BytesIO()
        np.lib.format.write_array_header_1_0(stream, header)
        archive.writestr("zzz.npy", stream.getvalue())
    read = []
    monkeypatch.setattr(_persist._Archive, "_array",
                        lambda self, name, limit, original=_persist._Archive._array:
                        read.append(name) or original(self, name, limit))
    with pytest.raises(ValueError, match=r"unexpected \['zzz'\]"):
        le.load(path)
    assert read == ["__header__"]


@pytest.mark.parametrize("limit, value, match", [
    ("MAX_FILE_MEMBERS", 5, "the number of arrays in"),
    ("MAX_ARRAY_BYTES", 100, r"the size in bytes of array '\d+.layer"),
    ("MAX_FILE_BYTES", 2000, "the bytes of the arrays in"),
    ("MAX_HEADER_BYTES", 100, "the size in bytes of array '__header__'"),
])
def test_file_limits_are_named_with_how_to_raise_them(networks, tmp_path, monkeypatch, limit,
                                                      value, match):
    net, X = networks["lut"]
    net.save(tmp_path / "net.npz")
    monkeypatch.setattr(le.config, limit, value)
    with pytest.raises(ValueError, match=rf"{match}.* above lutengine.config.{limit} = {value}; "
                                         rf"for a model you trust, raise it"):
        le.load(tmp_path / "net.npz")


def test_a_member_shorter_than_its_header_declares_is_rejected(networks, tmp_path):
    """The npy header of a member is edited to declare more rows than its data holds."""
    import zipfile

    path = tmp_path / "net.npz"
    networks["exact"][0].save(path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    name = "0.layer.W.npy"
    stream = io.BytesIO(members[name])
    np.lib.format.read_magic(stream)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    data = members[name][stream.tell():]
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"shape": (shape[0] * 4, shape[1]),
                                               "fortran_order": fortran, "descr": dtype.str})
    members[name] = out.getvalue() + data
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    with pytest.raises(ValueError, match=r"array '0.layer.W' declares \d+ bytes of data, the "
                                         r"archive \d+"):
        le.load(path)


def test_pq_centroids_whose_distances_overflow_are_rejected(tmp_path):
    """Centroids of 1e30 are finite, but their squared distances are not in float32: every
    predict would then see NaN where the input has none."""
    rng = np.random.default_rng(1)
    est = le.PQMatmul(2, random_state=0, progress=False).fit(
        rng.standard_normal((100, 6)), rng.standard_normal((6, 2)))
    est.save(tmp_path / "pq.npz")
    with np.load(tmp_path / "pq.npz", allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    with pytest.raises(ValueError, match="centroids_ must lie within"):
        le.load(_rewrite(arrays, tmp_path / "bad.npz",
                         centroids_=np.full_like(arrays["centroids_"], 1e30)))
