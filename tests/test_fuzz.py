"""The fuzzers of Network files (tests/fuzz_network.py) and of ONNX graphs
(tests/fuzz_onnx.py), a few hundred cases each, in subprocesses under an address-space
limit: a MemoryError, another exception, a disagreement, a signal or a hang there fails
these tests instead of killing the run."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lutengine as le
from lutengine import nn

HERE = Path(__file__).resolve().parent
GIB = 1 << 30


def _fuzz(script, examples):
    proc = subprocess.run([sys.executable, str(HERE / script), "--examples", str(examples),
                           "--seed", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["cases"] == examples and summary["failed"] == 0, summary
    assert summary["rejected"] > 0 and summary["loaded"] > 0, summary
    baseline, limit = summary["address_space_baseline"], summary["address_space_limit"]
    assert limit == (2 * GIB if baseline <= GIB else baseline + 2 * GIB), summary
    return summary


def test_network_files_are_rejected_or_load_into_networks_that_match_the_oracle():
    summary = _fuzz("fuzz_network.py", 500)
    assert set(summary["by_kind"]) == {
        "truncate", "flip", "op_config", "window", "input_shape", "node_inputs", "op_name",
        "layer_params", "header_fields", "npy_shape", "npy_header", "member_add",
        "member_drop", "member_rename", "compressed", "dtype", "array_shape", "nonfinite",
        "value"}, summary
    assert set(summary["by_model"]) == {"mlp", "cnn", "graph", "branches", "head"}, summary
    for kind in ("npy_shape", "compressed", "member_add", "truncate"):
        assert set(summary["by_kind"][kind]) == {"rejected"}, summary


def test_onnx_graphs_are_rejected_or_import_as_onnxruntime_runs_them():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    summary = _fuzz("fuzz_onnx.py", 500)
    assert set(summary["by_kind"]) == {
        "none", "dims", "init_dims", "window", "attr_type", "attr_value", "init_truncate",
        "init_dtype", "node_drop", "node_dup", "node_reorder", "rename", "opset", "external",
        "graph_io", "constant", "truncate", "flip"}, summary
    assert set(summary["by_model"]) == {"gemm_mlp", "matmul_gelu", "conv_net", "ids_graph",
                                        "pool_head"}, summary
    assert set(summary["by_kind"]["none"]) == {"loaded"}, summary
    assert set(summary["by_kind"]["external"]) == {"loaded", "rejected"}, summary


# -- what the fuzzers found, as regressions ------------------------------------------------------

@pytest.fixture
def saved_network(tmp_path):
    """(path, {member: npy bytes}) of a small saved Network."""
    rng = np.random.default_rng(0)
    net = nn.Network([nn.Linear(nn.Dense(rng.standard_normal((4, 3)), np.zeros(3))),
                      nn.Softmax()], (4,))
    path = tmp_path / "net.npz"
    net.save(path)
    with zipfile.ZipFile(path) as archive:
        return path, {info.filename: archive.read(info) for info in archive.infolist()}


def _rewrite(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_compressed_member_is_refused_before_it_is_inflated(saved_network):
    """A deflated member may declare up to MAX_ARRAY_BYTES in a few bytes of file: under
    the fuzzers' 2 GiB address space that was a MemoryError."""
    path, members = saved_network
    with pytest.raises(ValueError, match="is compressed"):
        le.load(_rewrite(path, members, zipfile.ZIP_DEFLATED))


def test_a_garbled_npy_header_is_a_value_error(saved_network):
    """numpy parses a damaged npy header with ``tokenize``: its TokenError escaped load."""
    path, members = saved_network
    data = members["0.layer.W.npy"]
    size = int.from_bytes(data[8:10], "little")
    text = data[10:10 + size].decode("latin1")
    garbled = text.replace("'shape': (", "'shape': ((", 1)[:size - 1] + "\n"
    members["0.layer.W.npy"] = data[:10] + garbled.encode("latin1") + data[10 + size:]
    with pytest.raises(ValueError, match="not a readable lutengine .npz file"):
        le.load(_rewrite(path, members))
