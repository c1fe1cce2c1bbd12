"""The CIFAR-10 CNN experiment (cifar10_cnn) on a tiny CNN and a few hundred images, run
through the command line: schema, the import against PyTorch, the written files."""

import functools
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from lutengine import cli, datasets  # noqa: E402
from lutengine.experiments import REGISTRY, cifar10_cnn  # noqa: E402

#: run() options the command line cannot set, for a run of seconds
TINY = {"architecture": "tiny", "max_test": 200, "fit_rows": 300, "learned_ncodebooks": None,
        "lut_rows": 300, "lut_epochs": 1, "lut_calibration_rows": 100, "timing_rows": 32,
        "timing_repeats": 1, "batch1_calls": 3, "ablation_ncodebooks": 8}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if datasets.find_dataset_dir("cifar10") is None:
        pytest.skip("cifar10/ not found under LUTENGINE_DATA or ~/.cache/lutengine")
    out = tmp_path_factory.mktemp("cifar10")
    argv = ["reproduce", "cifar10-cnn", "--ncodebooks", "4", "--epochs", "1", "--max-train",
            "300", "--out", str(out), "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cifar10_cnn, "run", functools.partial(cifar10_cnn.run, **TINY))
        assert cli.main(argv) == 0
    return json.loads((out / "cifar10_cnn_cifar10.json").read_text()), out


def test_registered():
    assert REGISTRY["cifar10-cnn"] is cifar10_cnn and cifar10_cnn.NAME == "cifar10_cnn"
    args = cli.build_parser().parse_args(["reproduce", "cifar10-cnn", "--out", "x"])
    assert args.name == "cifar10-cnn"


def test_rejects_options_it_does_not_take(tmp_path, capsys):
    assert cli.main(["reproduce", "cifar10-cnn", "--dataset", "mnist", "--out",
                     str(tmp_path)]) == 1
    assert "does not take the options --dataset" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown methods"):
        cifar10_cnn.run(methods=("nope",))
    with pytest.raises(ValueError, match="unknown architecture"):
        cifar10_cnn.run(architecture="huge")


def test_schema(result):
    result, _ = result
    assert result["dataset"] == "cifar10" and result["n_train"] == 300
    assert result["n_test"] == 200
    assert result["architecture"]["layer_inputs"] == [27, 36, 512, 16]
    assert result["ncodebooks_per_layer"] == {"4": [4, 4, 4, 4]}
    training = result["training"]
    assert training["epochs"] == 1 and len(training["epoch_seconds"]) == 1
    assert training["train_seconds"] > 0 and len(training["epoch_test_accuracy"]) == 1
    assert {"cpu", "torch", "onnxruntime"} <= set(result["machine"])
    assert [(r["method"], r["ncodebooks"]) for r in result["rows"]] == [
        ("onnxruntime", None), ("torch", None), ("lutengine exact", None),
        ("replace_layers", 4), ("learned", 4)]
    for row in result["rows"]:
        assert 0 <= row["accuracy"] <= 1
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"]
                                                         / result["torch_accuracy"])
        assert row["images_per_second"] == pytest.approx(32 / (row["forward_ms"] / 1e3))
        assert row["speedup_vs_ort"] == pytest.approx(row["ort_ms"] / row["forward_ms"])
        assert row["batch1_ms"] > 0
        assert (row["build_seconds"] is None) == (row["ncodebooks"] is None)
    assert result["rows"][0]["speedup_vs_ort"] == 1.0
    assert [(r["layer"], r["layer_inputs"], r["ncodebooks"]) for r in result["ablation"]] == [
        (0, 27, 8), (1, 36, 8), (2, 512, 8), (3, 16, 8)]
    for row in result["ablation"]:
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"]
                                                         / result["torch_accuracy"])


def test_exact_import_matches_torch(result):
    result, _ = result
    assert result["exact_accuracy"] == result["torch_accuracy"]
    assert result["training"]["epoch_test_accuracy"][-1] == result["torch_accuracy"]
    check = result["import_check"]
    assert check["predictions_differing"] == 0
    assert check["max_abs_diff_vs_torch"] < 1e-3 and check["ort_max_abs_diff_vs_torch"] < 1e-3
    exact_rows = {r["method"]: r["accuracy"] for r in result["rows"] if r["ncodebooks"] is None}
    assert exact_rows == {"onnxruntime": result["torch_accuracy"],
                          "torch": result["torch_accuracy"],
                          "lutengine exact": result["exact_accuracy"]}


def test_files_written(result):
    _, out = result
    md = (out / "cifar10_cnn_cifar10.md").read_text()
    assert "## rows" in md and "speedup_vs_ort" in md
    for suffix in cifar10_cnn.PLOTS:
        assert (out / f"cifar10_cnn_cifar10_{suffix}.png").read_bytes()[:4] == b"\x89PNG"


def test_augment_crops_and_flips():
    X = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    same = cifar10_cnn.augment(X, np.random.default_rng(0), padding=0, flip=False)
    assert np.array_equal(same, X) and same is not X
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = cifar10_cnn.augment(X, rng, padding=2, flip=True)
        assert out.shape == X.shape and out.dtype == np.float32
        for image, original in zip(out, X):
            padded = np.pad(original, ((0, 0), (2, 2), (2, 2)))
            crops = [padded[:, dy:dy + 4, dx:dx + 5] for dy in range(5) for dx in range(6)]
            assert any(np.array_equal(image, c) or np.array_equal(image, c[:, :, ::-1])
                       for c in crops)
