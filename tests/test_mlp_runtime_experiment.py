"""The MLP runtime experiment (mlp_runtime) on scikit-learn's digits with a tiny budget, run
through the command line: schema, the ONNX import against onnxruntime, the written files."""

import functools
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lutengine import cli, nn  # noqa: E402
from lutengine.experiments import REGISTRY, mlp_runtime  # noqa: E402

#: run() options the command line cannot set, for a run of seconds
TINY = {"timing_rows": 48, "timing_repeats": 1, "batch1_calls": 5, "mlp_epochs": 1}

ROW_FIELDS = ["method", "ncodebooks", "accuracy", "accuracy_std", "relative_accuracy",
              "rows_per_second", "speedup_vs_ort", "batch1_us", "latency_vs_ort", "forward_ms",
              "ort_ms", "ort_batch1_us", "fused", "build_seconds"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp_runtime")
    argv = ["reproduce", "mlp-runtime", "--dataset", "digits", "--ncodebooks", "4",
            "--epochs", "1", "--max-train", "400", "--out", str(out), "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlp_runtime, "run", functools.partial(mlp_runtime.run, **TINY))
        assert cli.main(argv) == 0
    return json.loads((out / "mlp_runtime_digits.json").read_text()), out


def test_registered():
    assert REGISTRY["mlp-runtime"] is mlp_runtime and mlp_runtime.NAME == "mlp_runtime"
    args = cli.build_parser().parse_args(["reproduce", "mlp-runtime", "--out", "x"])
    assert args.name == "mlp-runtime"


def test_rejects_bad_options(tmp_path, capsys):
    assert cli.main(["reproduce", "mlp-runtime", "--ks", "3", "--out", str(tmp_path)]) == 1
    assert "does not take the options --ks" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown methods"):
        mlp_runtime.run(methods=("nope",))
    with pytest.raises(ValueError, match="ncodebooks"):
        mlp_runtime.run(ncodebooks=())
    with pytest.raises(ValueError, match="timing_rows"):
        mlp_runtime.run(timing_rows=0)


def test_schema(result):
    result, _ = result
    assert result["dataset"] == "digits" and result["network"] == "64x256x256x10"
    assert result["n_train"] == 400 and result["seeds"] == 1 and result["threads"] == 1
    assert result["mlp_training"]["epochs"] == 1 and result["learn_luts"]["epochs"] == 1
    assert {"cpu", "torch", "onnx", "onnxruntime"} <= set(result["machine"])
    assert result["targets"] == mlp_runtime.TARGETS
    rows = result["rows"]
    assert [(r["method"], r["ncodebooks"]) for r in rows] == [
        ("onnxruntime", None), ("torch", None), ("lutengine exact", None),
        ("learn_luts", 4), ("replace_layers", 4)]
    for row in rows:
        assert list(row) == ROW_FIELDS
        assert 0 <= row["accuracy"] <= 1
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"]
                                                         / result["exact_accuracy"])
        assert row["rows_per_second"] == pytest.approx(48 / (row["forward_ms"] / 1e3))
        assert row["speedup_vs_ort"] == pytest.approx(row["ort_ms"] / row["forward_ms"])
        assert row["latency_vs_ort"] == pytest.approx(row["batch1_us"] / row["ort_batch1_us"])
        assert row["batch1_us"] > 0
        assert (row["build_seconds"] is None) == (row["ncodebooks"] is None)
    assert rows[0]["speedup_vs_ort"] == 1.0 and rows[0]["latency_vs_ort"] == 1.0
    # the exact network runs layer by layer, every converted one as one fused chain
    assert [r["fused"] for r in rows] == [None, None, False, True, True]
    assert [(v["method"], v["ncodebooks"]) for v in result["verdict"]] == [
        ("learn_luts", 4), ("replace_layers", 4)]
    for verdict, row in zip(result["verdict"], rows[3:]):
        assert verdict["relative_accuracy_met"] == (row["relative_accuracy"] >= 0.97)
        assert verdict["speedup_vs_ort_met"] == (row["speedup_vs_ort"] >= 5)
        assert verdict["latency_vs_ort_met"] == (row["latency_vs_ort"] <= 1.5)


def test_onnx_import_equals_onnxruntime(result):
    result, _ = result
    check = result["onnx_check"]
    assert check["ops"] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"]
    assert check["rows"] == result["n_test"]
    assert check["tolerance"] == 1e-4 and check["within_tolerance"]
    assert 0 <= check["max_relative_error"] <= 1e-4
    assert check["predictions_differing"] == 0 and check["torch_max_relative_error"] <= 1e-4
    exact = {r["method"]: r["accuracy"] for r in result["rows"] if r["ncodebooks"] is None}
    assert exact == {"onnxruntime": result["exact_accuracy"],
                     "torch": result["exact_accuracy"],
                     "lutengine exact": result["exact_accuracy"]}


def test_files_written(result):
    _, out = result
    md = (out / "mlp_runtime_digits.md").read_text()
    assert "## rows" in md and "## verdict" in md and "speedup_vs_ort" in md
    for suffix in mlp_runtime.PLOTS:
        assert (out / f"mlp_runtime_digits_{suffix}.png").read_bytes()[:4] == b"\x89PNG"


def test_onnx_and_torch_twins_compute_the_mlp(tmp_path):
    import onnx
    import torch

    rng = np.random.default_rng(0)
    layers = [nn.Dense(rng.standard_normal((5, 7)), rng.standard_normal(7)),
              nn.Dense(rng.standard_normal((7, 3)), rng.standard_normal(3))]
    mlp = nn.MLP(layers)
    X = rng.standard_normal((6, 5)).astype(np.float32)
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_runtime.onnx_model(layers), str(path))
    session = mlp_runtime.ort_session(path)
    expected = mlp.forward(X)
    np.testing.assert_allclose(session.run(None, {"x": X})[0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(nn.from_onnx(path).forward(X), expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        got = mlp_runtime.torch_mlp(layers)(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    logits = mlp_runtime.onnx_model(layers, softmax=False)
    assert [node.op_type for node in logits.graph.node] == ["Gemm", "Relu", "Gemm", "Identity"]
