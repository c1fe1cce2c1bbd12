"""How much the int8 tables lose against the float tables, on layers with outlier outputs.

MADDNESS (Blalock & Guttag 2021) quantises the lookup tables to 8 bits with one
power-of-two scale shared by every output, and sums them by rounded averages (its "fast
8-bit aggregation"). The widest output then sets the quantum of all, and the averages lose
more as C grows. lutengine scales each output on its own (one scale per output, one offset
per codebook and output) and sums the entries exactly. For C codebooks on

- ``minilm``: a real transformer's FFN output dense (all-MiniLM-L6-v2, the layer with the
  most outlying output channel, :mod:`lutengine.experiments.minilm`), fitted on the first
  three quarters of the tokens and measured on the rest;
- ``synthetic-outlier``: real image rows (``dataset``) times a Gaussian layer whose first
  output is scaled ×25,

each row gives the held-out nmse ‖Ŷ − Y‖² / ‖Y‖² of the float tables, of lutengine's
per-output int8 tables (``predict``), and of the single-scale int8 baselines
(:func:`single_scale_int8`, summed exactly and averaged as before) on the same codes, and
the worst output's own nmse over its float-table nmse.
"""

import numpy as np
from tqdm import tqdm

from ..matmul import LutMatmul
from . import _common, minilm

#: file stem of the results (``{NAME}.json`` and friends)
NAME = "quantization"

#: PNG suffix -> (x field, y field, x-axis log base, table)
PLOTS = {"ratio": ("ncodebooks", "nmse_over_float", 2, "curves")}

LAYERS = ("minilm", "synthetic-outlier")
#: outputs of the synthetic layer, and the factor of its outlier output
SYNTHETIC_OUTPUTS, OUTLIER_FACTOR = 64, 25.0


def single_scale_int8(luts, codes, bias, averaged=False):
    """The baselines: int8 tables with ONE power-of-two scale for all outputs, in NumPy:
    float64 (n, M). With ``averaged``, read as MADDNESS's fast 8-bit aggregation reads them
    and as lutengine did before its per-output scales (rounded averages of codebook pairs, level by level,
    in groups of 16, the expected rounding bias subtracted); else with the kernels' exact
    integer sums.

    Per codebook c the offset is its smallest entry over every code and output; the scale
    ``2**-ceil(log2(gap)) · 255.5`` (gap: the widest codebook range over all outputs) maps
    every table into [0, 255] with ``q = floor((T − offset)·scale + 0.5)``; the result is
    ``(Σ_c q[c, code_c] − rounding bias) / scale + Σ_c offset_c + bias``."""
    T = np.asarray(luts, dtype=np.float64)
    offsets = T.min(axis=(1, 2))
    gap = (T.max(axis=(1, 2)) - offsets).max()
    scale = 2.0 ** -np.ceil(np.log2(gap)) * (255.5 - 1e-10) if gap > 0 else 1.0
    q = np.floor((T - offsets[:, None, None]) * scale + 0.5).astype(np.int64)
    entries = q[np.arange(T.shape[0])[None, :], codes]  # (n, C, M)
    C = T.shape[0]
    sizes = [16] * (C // 16) + [s for s in (8, 4, 2, 1) if C % 16 & s] if averaged else [C]
    acc, start, rounding_bias = 0, 0, 0.0
    for size in sizes:
        group = entries[:, start:start + size]
        if averaged:
            while group.shape[1] > 1:
                group = (group[:, 0::2] + group[:, 1::2] + 1) >> 1
            acc = acc + size * group[:, 0]
            rounding_bias += size / 4 * np.log2(size)
        else:
            acc = group.sum(axis=1)
        start += size
    return (acc - rounding_bias) / scale + offsets.sum() + np.asarray(bias, dtype=np.float64)


def _nmse(Y_hat, Y):
    return float(np.sum((Y_hat - Y) ** 2) / np.sum(Y ** 2))


def _worst_output_ratio(Y_hat, Y_float, Y):
    """max over outputs of (output nmse of Y_hat) / (output nmse of the float tables)."""
    return float(np.max(np.sum((Y_hat - Y) ** 2, axis=0) / np.sum((Y_float - Y) ** 2, axis=0)))


def minilm_layer(n_tokens, layer=minilm.DEFAULT_LAYER):
    """(A_train, A_test, W, b) of the MiniLM FFN output dense: 3/4 of the tokens train."""
    H, W, b = minilm.ffn_layer(layer, n_tokens)
    split = 3 * len(H) // 4
    return H[:split], H[split:], W, b


def synthetic_outlier_layer(dataset, data_home, max_train, max_test, random_state):
    """(A_train, A_test, B, bias): image rows times a Gaussian layer, output 0 scaled ×25."""
    Xtr, _, Xte, _ = _common.load_data(dataset, data_home, max_train)
    rng = np.random.default_rng(random_state)
    B = rng.standard_normal((Xtr.shape[1], SYNTHETIC_OUTPUTS)) / np.sqrt(Xtr.shape[1])
    B[:, 0] *= OUTLIER_FACTOR
    bias = rng.standard_normal(SYNTHETIC_OUTPUTS) * 0.1
    return Xtr, Xte[:max_test], B.astype(np.float32), bias.astype(np.float32)


def run(dataset="mnist", ncodebooks=(16, 32, 64, 128), layers=LAYERS, n_tokens=8192,
        max_train=8000, max_test=2000, random_state=0, progress=True, data_home=None):
    """Fit :class:`~lutengine.LutMatmul` per layer and C; measure the three tables.

    Parameters
    ----------
    dataset : {"mnist", "fashion", "digits"}
        Rows of the synthetic layer.
    ncodebooks : sequence of int
    layers : subset of :data:`LAYERS`
    n_tokens : int
        Tokens of MiniLM activations (3/4 train, 1/4 held out).
    max_train, max_test : int
        Training and held-out rows of the synthetic layer.
    random_state : int
        Seed of the synthetic layer's weights.

    Returns
    -------
    dict
        ``rows`` (per layer and C: ``layer, ncodebooks, float_nmse, per_output_nmse,
        single_scale_nmse, per_output_over_float, single_scale_over_float, worst_output_*``),
        ``curves`` (the same, one row per table kind, for the plots), ``layer_info`` and
        the settings.
    """
    unknown = sorted(set(layers) - set(LAYERS))
    if unknown:
        raise ValueError(f"unknown layers {unknown}; valid: {list(LAYERS)}")
    data = {}
    if "minilm" in layers:
        data["minilm"] = minilm_layer(n_tokens)
    if "synthetic-outlier" in layers:
        data["synthetic-outlier"] = synthetic_outlier_layer(dataset, data_home, max_train,
                                                            max_test, random_state)
    too_many = [C for C in ncodebooks for A, *_ in data.values() if C > A.shape[1]]
    if too_many:
        raise ValueError(f"ncodebooks must be <= every layer's input width, got {too_many}")
    rows, curves, layer_info = [], [], []
    for name, (A, A_test, B, bias) in data.items():
        Y = A_test.astype(np.float64) @ B + bias
        layer_info.append({"layer": name, "n_train": len(A), "n_test": len(A_test),
                           "shape": f"{B.shape[0]}x{B.shape[1]}",
                           "output_rms_max_over_median": minilm.channel_rms_ratio(Y)})
        for C in tqdm(ncodebooks, desc=f"{NAME} ({name})", disable=not progress):
            est = LutMatmul(C, progress=False).fit(A, B, bias=bias)
            codes = est.transform(A_test)
            tables = {"float": est.set_params(quantize=False).predict(A_test),
                      "int8 per-output": est.set_params(quantize=True).predict(A_test),
                      "int8 single-scale": single_scale_int8(est.luts_, codes, bias),
                      "int8 single-scale averaged": single_scale_int8(est.luts_, codes, bias,
                                                                      averaged=True)}
            nmse = {kind: _nmse(Y_hat, Y) for kind, Y_hat in tables.items()}
            worst = {kind: _worst_output_ratio(Y_hat, tables["float"], Y)
                     for kind, Y_hat in tables.items()}
            rows.append({
                "layer": name, "ncodebooks": int(C), "float_nmse": nmse["float"],
                "per_output_nmse": nmse["int8 per-output"],
                "single_scale_nmse": nmse["int8 single-scale"],
                "per_output_over_float": nmse["int8 per-output"] / nmse["float"],
                "single_scale_over_float": nmse["int8 single-scale"] / nmse["float"],
                "averaged_single_scale_nmse": nmse["int8 single-scale averaged"],
                "averaged_single_scale_over_float":
                    nmse["int8 single-scale averaged"] / nmse["float"],
                "worst_output_per_output": worst["int8 per-output"],
                "worst_output_single_scale": worst["int8 single-scale"],
                "train_float_nmse": est.float_nmse_,
                "train_quantization_nmse": est.quantization_nmse_})
            curves += [{"layer": name, "method": kind, "ncodebooks": int(C), "nmse": nmse[kind],
                        "nmse_over_float": nmse[kind] / nmse["float"]} for kind in tables]
    return {"dataset": dataset, "minilm_layer": minilm.DEFAULT_LAYER, "n_tokens": n_tokens,
            "synthetic_outlier_factor": OUTLIER_FACTOR, "random_state": random_state,
            "nmse": "sum((Y_hat - Y)^2) / sum(Y^2) on held-out rows",
            "layer_info": layer_info, "rows": rows, "curves": curves}
