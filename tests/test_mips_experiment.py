"""The MIPS experiment (mips_mnist) on digits, against references."""

import json

import numpy as np
import pytest

from lutengine.experiments import _common, mips_mnist


@pytest.fixture(scope="module")
def digits_result():
    return mips_mnist.run("digits", ks=(4, 8, 64), hidden=64, epochs=3, l1=1e-3,
                          progress=False)


def test_run_on_digits_schema_and_oracle(digits_result, tmp_path):
    result = digits_result
    assert result["dataset"] == "digits"
    assert set(result["full_accuracy"]) == {"plain", "sparse"}
    rows = result["rows"]
    assert len(rows) == 2 * len(mips_mnist.METHODS) * 3
    fields = {"network", "method", "k", "active_neurons", "active_ratio", "accuracy",
              "relative_accuracy", "recall"}
    for r in rows:
        assert fields <= set(r)
        full = result["full_accuracy"][r["network"]]
        assert r["relative_accuracy"] == pytest.approx(r["accuracy"] / full)
        bottom = r["method"] != "h2alsh-top"
        assert r["active_neurons"] == min(2 * r["k"] if bottom else r["k"], 64)
        assert r["active_ratio"] == r["active_neurons"] / 64
        assert 0 <= r["recall"] <= 1
    for network in ("plain", "sparse"):
        oracle = {r["k"]: r for r in rows if r["network"] == network and r["method"] == "oracle"}
        assert oracle[64]["accuracy"] == result["full_accuracy"][network]
        assert all(r["recall"] == 1.0 for r in oracle.values())
        # 64 rows: every H2-ALSH ring is scanned exactly, so it finds the oracle's units
        same = {r["k"]: r for r in rows if r["network"] == network and r["method"] == "h2alsh"}
        assert all(r["recall"] == 1.0 for r in same.values())
        assert all(same[k]["accuracy"] == pytest.approx(oracle[k]["accuracy"], abs=0.01)
                   for k in oracle)
    accs = [np.mean([r["accuracy"] for r in rows if r["method"] == "oracle" and r["k"] == k])
            for k in (4, 8, 64)]
    assert accs[0] <= accs[1] <= accs[2]
    json.dumps(result)
    paths = _common.write_results(result, tmp_path, mips_mnist.NAME, plots=mips_mnist.PLOTS)
    assert {p.name for p in paths} >= {"mips_mnist_digits.json", "mips_mnist_digits.md",
                                       "mips_mnist_digits_accuracy.png"}


def test_oracle_matches_a_direct_reference():
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(5, 12)).astype(np.float32)
    mask = mips_mnist.oracle_active(Z, 3, bottom=True)
    ranks = np.argsort(np.argsort(Z, axis=1), axis=1)
    assert np.array_equal(mask, (ranks < 3) | (ranks >= 9))
    assert np.array_equal(mips_mnist.oracle_active(Z, 3, bottom=False), ranks >= 9)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        mips_mnist.run("digits", methods=("lsh",), progress=False)


def test_mips_speed_curve_on_a_small_set(tmp_path):
    from lutengine.experiments import mips_speed

    result = mips_speed.run(n_rows=3000, d=16, candidates=(10, 3000), n_queries=4, repeats=1,
                            progress=False, ncodebooks=(4, 32), reranks=(3000,))
    rows = result["rows"]
    assert [(r["norms"], r["method"], r["candidates"]) for r in rows] == [
        (norms, method, c) for norms in ("gaussian", "lognormal")
        for method, c in (("normscan", None), ("h2alsh", 10), ("h2alsh", 3000),
                          ("fastscan", None))]
    for r in rows:
        assert r["speedup_vs_brute"] == pytest.approx(r["brute_ms_per_query"] / r["ms_per_query"])
        assert 0 <= r["recall_at_k"] <= 1
    # normscan is exact; so is H2-ALSH here: 3000 rows in 16 dimensions make rings of at
    # most ~120 rows, all under the scan threshold, so every visited ring is scanned exactly;
    # fastscan re-ranks every row (rerank ≥ N); 32 codebooks > d = 16 are skipped
    assert all(r["recall_at_k"] == 1.0 for r in rows)
    assert [(r["ncodebooks"], r["rerank"]) for r in rows if r["method"] == "fastscan"] == \
        [(4, 3000)] * 2
    paths = _common.write_results(result, tmp_path, mips_speed.NAME, plots=mips_speed.PLOTS)
    assert tmp_path / "mips_speed_3000x16_curve.png" in paths


def test_recall_at_k_counts_rows_reaching_the_kth_score():
    from lutengine.experiments.mips_speed import recall_at_k

    W = np.diag([5.0, 4.0, 3.0, 2.0]).astype(np.float32)
    Q = np.ones((1, 4), np.float32)
    assert recall_at_k(np.array([[0, 1]]), W, Q, 2) == 1.0
    assert recall_at_k(np.array([[0, 3]]), W, Q, 2) == 0.5
