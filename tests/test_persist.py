"""``lutengine.load`` trusts nothing in the file: targeted defects, then the fuzz of
tests/fuzz_load.py in a subprocess (a crash or hang there fails the test, not the run)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lutengine as le

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
