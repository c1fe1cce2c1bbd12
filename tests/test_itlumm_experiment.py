"""The ITLUMM experiment (itlumm_mnist) on digits: schema, and rows recomputed directly."""

import numpy as np
import pytest

from lutengine import nn
from lutengine.experiments import _common, itlumm_mnist


@pytest.fixture(scope="module")
def result():
    return itlumm_mnist.run("digits", ncodebooks=(1, 4), methods=("maddness", "itlumm-r2-kl"),
                            hidden_sizes=(16, 16), epochs=30, seeds=2, progress=False)


def test_schema(result, tmp_path):
    assert result["dataset"] == "digits" and result["network"] == "64x16x16x10"
    assert 0.8 < result["exact_accuracy"] <= 1
    per_layer = {(r["layer"], r["method"], r["ncodebooks"]) for r in result["per_layer"]}
    assert per_layer == {(i, m, C) for i in range(3) for m in ("maddness", "itlumm-r2-kl")
                         for C in (1, 4)}
    all_layers = [(r["method"], r["finetune"], r["ncodebooks"], len(r["seeds"]))
                  for r in result["all_layers"]]
    assert sorted(all_layers) == sorted((m, f, C, 2 if C == 1 else 1)
                                        for m in ("maddness", "itlumm-r2-kl")
                                        for f in (False, True) for C in (1, 4))
    for r in result["all_layers"]:
        assert r["accuracy"] == pytest.approx(np.mean(r["seeds"]))
    assert [(r["layer"], r["shape"], r["ncodebooks"]) for r in result["breakeven"]] == \
        [(i, shape, C) for C in (1, 4) for i, shape in enumerate(("64x16", "16x16", "16x10"))]
    for r in result["breakeven"]:
        assert r["speedup_vs_blas"] == pytest.approx(r["blas_ms"] / r["predict_ms"])
    paths = _common.write_results(result, tmp_path, itlumm_mnist.NAME, plots=itlumm_mnist.PLOTS)
    md = (tmp_path / "itlumm_mnist_digits.md").read_text()
    assert "## per_layer" in md and "## all_layers" in md and "## breakeven" in md
    for suffix in ("all_layers", "per_layer", "breakeven"):
        png = tmp_path / f"itlumm_mnist_digits_{suffix}.png"
        assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_are_the_replaced_networks_accuracy(result):
    """Two rows recomputed with the same training and replacement calls, outside run()."""
    Xtr, ytr, Xte, yte = _common.load_data("digits")
    net = nn.MLP.train(Xtr, ytr, [16, 16], epochs=30, random_state=0, progress=False)
    assert net.score(Xte, yte) == result["exact_accuracy"]
    one = nn.replace_layers(net, Xtr, ytr, 4, layers=[1], finetune=False, partition="r2",
                            lut_objective="kl", progress=False)
    row = next(r for r in result["per_layer"]
               if (r["layer"], r["method"], r["ncodebooks"]) == (1, "itlumm-r2-kl", 4))
    assert row["accuracy"] == one.score(Xte, yte)
    every = nn.replace_layers(net, Xtr, ytr, 1, random_state=1, progress=False)
    row = next(r for r in result["all_layers"]
               if (r["method"], r["finetune"], r["ncodebooks"]) == ("maddness", True, 1))
    assert row["seeds"][1] == every.score(Xte, yte)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown methods"):
        itlumm_mnist.run("digits", methods=("nope",), progress=False)
    with pytest.raises(ValueError, match="ncodebooks must be <= the narrowest layer input 8"):
        itlumm_mnist.run("digits", hidden_sizes=(8,), ncodebooks=(16,), progress=False)
