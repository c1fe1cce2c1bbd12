"""The ``lutengine`` command: demo on the embedded default (and --download from a fake
mirror), reproduce on digits, errors."""

import gzip
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_info

import lutengine as le
from lutengine import cli, datasets
from lutengine.cli import main
from lutengine.experiments import _common

REPO_ROOT = Path(__file__).resolve().parent.parent

ROW_FIELDS = {"method", "ncodebooks", "accuracy", "relative_accuracy", "nmse", "fit_seconds",
              "predict_ms", "blas_ms", "speedup_vs_blas"}


@pytest.fixture
def no_mnist(monkeypatch, tmp_path):
    """Hide every MNIST copy: empty $LUTENGINE_DATA and a HOME without ~/.cache/lutengine."""
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("LUTENGINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path))


def _digits():
    """The digits split, built here from scikit-learn (not through lutengine)."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    n = int(0.8 * len(X))
    return X[:n], y[:n], X[n:], y[n:]


@pytest.fixture
def small_demo(monkeypatch):
    """The demo's network and fits made small (the table's structure is what is tested)."""
    monkeypatch.setattr(cli, "DEMO", {**cli.DEMO, "hidden": 32, "epochs": 1, "train_rows": 2000,
                                      "fit_rows": 500})


def _demo_table(out):
    """The exact accuracy and the table's rows (C, accuracy, kept, predict ms, BLAS ms,
    speed-up) printed by ``lutengine demo``."""
    exact = float(out.split("exact test accuracy ")[1].split()[0])
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    return exact, [(int(r[0]), *map(float, r[1:5]), float(r[5].rstrip("x"))) for r in rows]


def test_demo_runs_on_the_embedded_fashion_subset(no_mnist, small_demo, capsys):
    assert main(["demo", "--ncodebooks", "4", "8"]) == 0
    out = capsys.readouterr().out
    assert "dataset: fashion-subset (2000 train / 1000 test rows, 784 features)" in out
    assert "--download" in out and "LUTENGINE_DATA" in out
    assert "MLP 784-32-10" in out
    exact, rows = _demo_table(out)
    assert 0.3 < exact <= 1
    assert [r[0] for r in rows] == [4, 8]
    for C, acc, kept, predict_ms, blas_ms, speedup in rows:
        assert 0 <= acc <= 1 and 0 <= kept <= 1
        assert kept == pytest.approx(acc / exact, abs=1e-3)
        assert predict_ms > 0 and blas_ms > 0
        # printed with 3 decimals (ms) and 1 (speed-up): the ratio of the rounded times
        # brackets the printed speed-up up to those roundings
        low, high = (blas_ms - 5e-4) / (predict_ms + 5e-4), (blas_ms + 5e-4) / max(predict_ms - 5e-4, 1e-9)
        assert low - 0.05 <= speedup <= high + 0.05
    winners = [r for r in rows if r[2] >= cli.DEMO_KEPT_TARGET]
    if winners:
        C, *_, speedup = max(winners, key=lambda r: r[-1])
        assert f"=> C={C}: " in out and f"at {speedup:.1f}x BLAS's speed" in out
    else:
        assert "=> no C kept 95%" in out


def test_demo_restores_thread_counts(no_mnist, small_demo, capsys):
    before = numba.get_num_threads(), threadpool_info()
    assert main(["demo", "--ncodebooks", "2"]) == 0
    assert (numba.get_num_threads(), threadpool_info()) == before


def test_demo_rejects_more_codebooks_than_features(no_mnist, capsys):
    assert main(["demo", "--ncodebooks", "8", "1000"]) == 1
    err = capsys.readouterr().err
    assert "--ncodebooks" in err and "784" in err and "1000" in err


def _idx_gz(array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), compresslevel=1)


def test_demo_download_from_a_fake_mirror(no_mnist, small_demo, tmp_path, monkeypatch, capsys):
    """--download fetches the four files (here: the embedded subset written as IDX files,
    trusted by their digests) into --data-home and runs the demo on them."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with np.load(datasets.FASHION_SUBSET_PATH) as stored:
        arrays = {"train-images-idx3-ubyte": stored["x_train"],
                  "train-labels-idx1-ubyte": stored["y_train"],
                  "t10k-images-idx3-ubyte": stored["x_test"],
                  "t10k-labels-idx1-ubyte": stored["y_test"]}
    digests = {}
    for stem, array in arrays.items():
        (mirror / (stem + ".gz")).write_bytes(_idx_gz(array))
        raw = gzip.decompress((mirror / (stem + ".gz")).read_bytes())
        digests[stem] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setitem(datasets._SHA256, "mnist", digests)
    monkeypatch.setitem(datasets._MIRRORS, "mnist", (mirror.as_uri() + "/",))
    home = tmp_path / "home"
    assert main(["demo", "--download", "--data-home", str(home), "--ncodebooks", "4"]) == 0
    captured = capsys.readouterr()
    assert "dataset: mnist (2000 train / 1000 test rows, 784 features)" in captured.out
    assert [r[0] for r in _demo_table(captured.out)[1]] == [4]
    assert "train-images-idx3-ubyte.gz: 100%" in captured.err
    assert sorted(p.name for p in (home / "mnist").iterdir()) == sorted(f"{s}.gz" for s in arrays)


def test_demo_download_offline_is_an_error_message(no_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(datasets._MIRRORS, "mnist", ((tmp_path / "unreachable").as_uri() + "/",))
    assert main(["demo", "--download", "--data-home", str(tmp_path / "home")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lutengine: error: could not download mnist") and "offline" in err


def test_reproduce_classifier_layer_on_digits(tmp_path, capsys):
    out_dir = tmp_path / "results"
    argv = ["reproduce", "classifier-layer", "--dataset", "digits", "--ncodebooks", "2", "4",
            "--methods", "maddness", "pq", "itlumm-r2-kl", "--out", str(out_dir), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    result = json.loads((out_dir / "classifier_layer_digits.json").read_text())
    assert result["dataset"] == "digits" and result["threads"] == 1
    assert result["mlp_train_seconds"] > 0
    assert [(r["method"], r["ncodebooks"]) for r in result["rows"]] == \
        [("maddness", 2), ("maddness", 4), ("pq", 2), ("pq", 4), ("itlumm-r2-kl", 2),
         ("itlumm-r2-kl", 4)]

    # the exact accuracy is the MLP's own forward pass, recomputed here in NumPy
    Xtr, ytr, Xte, yte = _digits()
    mlp, _ = _common.train_mlp(Xtr, ytr, result["hidden"], result["random_state"])
    (W1, W2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    H_train = np.maximum(Xtr.astype(np.float64) @ W1 + b1, 0)
    H_test = np.maximum(Xte.astype(np.float64) @ W1 + b1, 0)
    logits = H_test @ W2 + b2
    assert result["exact_accuracy"] == np.mean(np.argmax(logits, axis=1) == yte)
    assert result["exact_accuracy"] == pytest.approx(mlp.score(Xte, yte), abs=2 / len(yte))

    for row in result["rows"]:
        assert set(row) == ROW_FIELDS
        assert 0 <= row["accuracy"] <= 1
        assert row["relative_accuracy"] == pytest.approx(row["accuracy"] / result["exact_accuracy"])
        assert row["nmse"] >= 0
        assert row["fit_seconds"] > 0 and row["predict_ms"] > 0 and row["blas_ms"] > 0
        assert row["speedup_vs_blas"] == pytest.approx(row["blas_ms"] / row["predict_ms"])

    # MADDNESS is deterministic: refitting gives the reported accuracy and NMSE
    maddness = result["rows"][1]
    est = le.LutMatmul(4, progress=False).fit(H_train.astype(np.float32), W2, bias=b2)
    Y_hat = est.predict(H_test.astype(np.float32)).astype(np.float64)
    assert maddness["accuracy"] == np.mean(np.argmax(Y_hat, axis=1) == yte)
    expected_nmse = np.mean((Y_hat - logits) ** 2) / np.var(logits)
    assert maddness["nmse"] == pytest.approx(expected_nmse, rel=1e-5)

    # so is ITLUMM with the R² partition and KL-fitted tables
    itlumm = result["rows"][5]
    est = le.LutMatmul(4, partition="r2", lut_objective="kl", activation="softmax",
                       progress=False).fit(H_train.astype(np.float32), W2, bias=b2)
    assert itlumm["accuracy"] == np.mean(np.argmax(est.predict(H_test.astype(np.float32)), 1) == yte)

    md = (out_dir / "classifier_layer_digits.md").read_text()
    assert md.count("\n| maddness |") == 2 and md.count("\n| pq |") == 2
    assert "| maddness | 2 |" in printed
    for suffix in ("accuracy", "speed"):
        png = out_dir / f"classifier_layer_digits_{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_unknown_name_exits_with_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "no-such-experiment", "--out", str(tmp_path)])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "no-such-experiment" in err and "classifier-layer" in err


def test_reproduce_unknown_method_is_an_error_message(tmp_path, capsys):
    argv = ["reproduce", "classifier-layer", "--dataset", "digits", "--methods", "nope",
            "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "maddness" in err


def test_reproduce_without_mnist_says_where_to_put_it(no_mnist, tmp_path, capsys):
    assert main(["reproduce", "classifier-layer", "--dataset", "mnist", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "mnist dataset not found" in err and "LUTENGINE_DATA" in err


def test_warmup_command(capsys):
    assert main(["warmup"]) == 0
    assert "compiled" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "lutengine", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("demo", "reproduce", "warmup"):
        assert command in done.stdout
