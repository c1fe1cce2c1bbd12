"""Fuzzing ``lutengine.load`` with damaged and crafted files (run in a subprocess by
tests/test_persist.py, so that a crash or a hang fails that test instead of killing it).

Saved files of every savable class are mutated: truncated, bytes flipped, arrays swapped,
dropped or added, dtypes, shapes and values changed, indices put out of range, NaN and Inf
put in tables, header parameters replaced. Each file must either be rejected by ``load``
with a ``ValueError``, or load into an object whose ``predict`` / ``search`` runs and
agrees with the NumPy oracles of ``tests/reference.py`` applied to the loaded arrays (an
out-of-bounds read would not). Prints a JSON summary of the outcomes.

    python tests/fuzz_load.py --examples 200
"""

import argparse
import collections
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402

import lutengine as le  # noqa: E402

OUTCOMES = collections.Counter()
DTYPES = ("float64", "float32", "float16", "int64", "int32", "uint8", "int8", "bool", "<U3")
PARAM_VALUES = (-1, 0, 1, 3, 2**40, 2.5, float("nan"), "x", None, True, [1], {"a": 1})


def _models():
    """One small fitted object per savable class and method: (name, object)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 12)).astype(np.float32)
    B = rng.standard_normal((12, 5)).astype(np.float32)
    W = rng.standard_normal((600, 7)).astype(np.float32) * rng.lognormal(0, 1, (600, 1))
    bias = rng.standard_normal(600)
    yield "lut", le.LutMatmul(4, progress=False).fit(A, B, bias=np.ones(5))
    yield "lut-r2-float", le.LutMatmul(3, partition="r2", quantize=False,
                                       progress=False).fit(A, B)
    yield "pq", le.PQMatmul(3, random_state=0, progress=False).fit(A, B)
    yield "mips-brute", le.MipsIndex(W, method="brute")
    yield "mips-normscan", le.MipsIndex(W, method="normscan", bias=bias)
    yield "mips-h2alsh", le.MipsIndex(W, method="h2alsh", random_state=0, max_ring=200,
                                      scan_threshold=50)
    yield "mips-fastscan", le.MipsIndex(W, method="fastscan", random_state=0, ncodebooks=3,
                                        rerank=20, train_rows=256)


def _saved(obj):
    buffer = io.BytesIO()
    obj.save(buffer)
    raw = buffer.getvalue()
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    return raw, arrays


def _write(arrays, path):
    np.savez(path, **arrays)


@st.composite
def _mutation(draw, raw, arrays):
    """(kind, file bytes or arrays) of one damaged file."""
    names = sorted(k for k in arrays if k != "__header__")
    kind = draw(st.sampled_from(["truncate", "flip", "swap", "drop", "extra", "dtype",
                                 "shape", "index", "nonfinite", "value", "param"]))
    if kind == "truncate":
        return kind, raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        return kind, bytes(data)
    out = dict(arrays)
    name = draw(st.sampled_from(names))
    value = out[name]
    if kind == "swap":
        other = draw(st.sampled_from(names))
        out[name], out[other] = out[other], value
    elif kind == "drop":
        del out[name]
    elif kind == "extra":
        out[draw(st.sampled_from(["extra_", "x"]))] = np.zeros(3)
    elif kind == "dtype":
        try:
            out[name] = value.astype(draw(st.sampled_from(DTYPES)))
        except ValueError:
            pass  # e.g. a method name as a number: the file stays as it was
    elif kind == "shape":
        change = draw(st.sampled_from(["ravel", "cut", "grow", "transpose", "scalar", "empty"]))
        if change == "ravel":
            out[name] = value.ravel()
        elif change == "cut" and value.ndim and value.shape[0]:
            out[name] = value[:-1]
        elif change == "grow" and value.ndim:
            out[name] = np.concatenate([value, value[:1]])
        elif change == "transpose":
            out[name] = np.asfortranarray(value.T)
        elif change == "empty":
            out[name] = value[:0] if value.ndim else value.reshape(1)[:0]
        else:
            out[name] = value.reshape(-1)[:1].reshape(()) if value.size else value
    elif kind in ("index", "nonfinite", "value") and value.size and value.dtype.kind in "iufb":
        flat = value.copy().reshape(-1)
        at = draw(st.integers(0, flat.size - 1))
        if kind == "index":
            new = draw(st.sampled_from([-1, -2**31, flat.size, int(flat.max()) + 1, 2**40]))
        elif kind == "nonfinite":
            new = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        else:
            new = draw(st.integers(-300, 300))
        try:
            flat[at] = new
        except (OverflowError, ValueError):
            pass  # a value the dtype cannot hold: the file stays as it was
        out[name] = flat.reshape(value.shape)
    elif kind == "param":
        header = json.loads(str(out["__header__"]))
        params = header["params"]
        key = draw(st.sampled_from(sorted(params) + ["class", "format_version", "unknown"]))
        new = draw(st.sampled_from(PARAM_VALUES))
        if key in params:
            params[key] = new
        elif key == "unknown":
            params["predict"] = new
        else:
            header[key] = new
        out["__header__"] = np.array(json.dumps(header))
    return kind, out


def _exercise(obj):
    """Run what a user would run on the loaded object and check it against the oracles."""
    rng = np.random.default_rng(1)
    if isinstance(obj, le.MipsIndex):
        Q = rng.standard_normal((4, obj.n_features_)).astype(np.float32)
        k = min(5, obj.n_items)
        ids, scores = obj.search(Q, k)
        assert ids.shape == (4, k) and ids.min() >= 0 and ids.max() < obj.n_items
        rows = np.empty_like(obj.rows_)
        rows[obj.order_] = obj.rows_
        Qa = np.hstack([Q, np.ones((4, rows.shape[1] - Q.shape[1]), np.float32)])
        exact = np.einsum("qkd,qd->qk", rows[ids].astype(np.float64), Qa)
        np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4 * (np.abs(exact).max() + 1))
        return
    A = rng.standard_normal((40, obj.n_features_in_)).astype(np.float32)
    codes = obj.transform(A)
    if isinstance(obj, le.LutMatmul):
        expected_codes = ref.ref_encode_tree(A, obj.split_dims_, obj.thresholds_)
    else:
        expected_codes = ref.ref_encode_pq(A, obj.subspace_cols_, obj.subspace_bounds_,
                                           obj.centroids_)
    np.testing.assert_array_equal(codes, expected_codes)
    if obj.quantize:
        offsets = obj.lut_offsets_.sum(axis=0, dtype=np.float64)
        expected = ref.ref_scan_quantized(codes, obj.luts_q_, obj.lut_scale_, offsets, obj.bias_)
    else:
        expected = ref.ref_scan_float(codes, obj.luts_, obj.bias_)
    got = obj.predict(A)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * (np.abs(expected).max() + 1))


def run(examples):
    workdir = Path(tempfile.mkdtemp())
    for name, model in _models():
        raw, arrays = _saved(model)

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(mutation=_mutation(raw, arrays))
        def fuzz(mutation):
            kind, content = mutation
            path = workdir / "m.npz"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                _write(content, path)
            try:
                obj = le.load(path)
            except ValueError:
                OUTCOMES[f"{name} {kind}: rejected"] += 1
                return
            _exercise(obj)
            OUTCOMES[f"{name} {kind}: loaded, results checked"] += 1

        fuzz()
    files = sum(OUTCOMES.values())
    rejected = sum(v for k, v in OUTCOMES.items() if k.endswith("rejected"))
    return {"files": files, "rejected": rejected, "loaded": files - rejected,
            "outcomes": dict(sorted(OUTCOMES.items()))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="mutated files per model")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.examples), indent=1))


if __name__ == "__main__":
    main()
