"""Fused forward of a chain of quantised MADDNESS layers with ReLU between them.

MADDNESS (Blalock & Guttag 2021, §4) encodes a row with hash trees that read 4 columns
each, then sums uint8 table rows. In a chain ``X → layer 0 → ReLU → … → layer L-1``, layer
``l + 1``'s trees read only ``4 · C`` of layer ``l``'s outputs, so layer ``l`` need not
compute the others: its tables, ``inv_scale`` and ``shift`` are compacted at plan time to
the columns the next trees read, and the next layer's split dimensions index that compacted
vector (``lutengine/runtime.py`` builds the plan). The last layer computes every output.

``fused_chain_*`` runs every layer on a block of rows before moving to the next block, so
the block's activations live in per-worker scratch (L1/L2) and are never written to memory:
for each layer, encode the block (layer 0 gathers its split values from the rows of
C-ordered X, as ``encode_tree`` does; hidden layers keep their activations transposed,
``hidden[column, row]``, so each tree reads its 4 columns contiguously, as the F-ordered
encoder does), sum the uint8 table rows exactly in uint16, dequantise with one multiply-add
``float32(acc) * inv_scale[m] + shift[m]`` (as kernels/scan.py), apply ReLU on all but the
last layer, and feed the next layer.

The layers' arrays are concatenated (a fixed number of arguments, whatever the depth):

- ``split_dims`` int64 (ΣC, 4), ``thresholds`` float32 (ΣC, 16): the trees of every layer;
- ``luts`` uint8, flat: layer ``l``'s tables ``(C_l, 16, padded_l)``, its width padded with
  zeros to a multiple of 32 (whole vectors, as in kernels/scan.py);
- ``inv_scale``, ``shift`` float32, flat: layer ``l``'s ``width_l`` dequantisation scalars;
- ``layout`` int64 (L, 6), one row per layer: the columns named below.

Returns how many blocks read a NaN or ±Inf from X (the hidden layers' inputs are
dequantised table sums, finite).
"""

import numpy as np
from numba import njit, prange

from ._flags import INLINE, JIT, PJIT
from .encode import _tree_codes

#: the columns of ``layout``: first tree (row of split_dims / thresholds), number of trees,
#: first table entry in ``luts``, padded width (a multiple of 32, the table row stride),
#: width computed (the columns the next layer reads; every output for the last layer),
#: first entry in ``inv_scale`` / ``shift``
CODE_START, NCODEBOOKS, LUT_START, PADDED_WIDTH, WIDTH, VEC_START = range(6)
LAYOUT_COLUMNS = 6


@njit(**INLINE)
def _scratch_sizes(layout):
    """(most trees of a layer, widest padded table, widest hidden layer) over the layers."""
    cmax, padded, hidden = 1, 1, 1
    for layer in range(layout.shape[0]):
        cmax = max(cmax, layout[layer, NCODEBOOKS])
        padded = max(padded, layout[layer, PADDED_WIDTH])
        if layer < layout.shape[0] - 1:
            hidden = max(hidden, layout[layer, WIDTH])
    return cmax, padded, hidden


@njit(**INLINE)
def _accumulate(luts, lut_start, padded, block_codes, ncodebooks, i, acc):
    """``acc[m] = Σ_c luts[c, code of row i, m]`` in uint16 (exact for C ≤ 256)."""
    for m in range(padded):
        acc[m] = 0
    for c in range(ncodebooks):
        base = lut_start + (c * 16 + np.int64(block_codes[c, i])) * padded
        entries = luts[base:base + padded]  # a view: luts[base + m] would wrap negative indices
        for m in range(padded):
            acc[m] += np.uint16(entries[m])


@njit(**INLINE)
def _chain_block(X, split_dims, thresholds, luts, inv_scale, shift, layout, out, start, stop,
                 values, block_codes, acc, hidden):
    """Rows start..stop-1 of out through every layer; 1 if a value read from X was NaN/Inf.

    Layer l writes its activations into ``hidden[l % 2]`` (column-major: ``[m, row]``) and
    layer l + 1 reads them there."""
    nrows = stop - start
    last = layout.shape[0] - 1
    poison = np.float32(0.0)
    for layer in range(layout.shape[0]):
        first = layout[layer, CODE_START]
        ncodebooks = layout[layer, NCODEBOOKS]
        lut_start = layout[layer, LUT_START]
        padded = layout[layer, PADDED_WIDTH]
        width = layout[layer, WIDTH]
        vec_start = layout[layer, VEC_START]
        # -- encode the block's input into block_codes[c, i]
        if layer == 0:
            for i in range(nrows):
                row = X[start + i]
                for c in range(ncodebooks):
                    dims = split_dims[first + c]
                    for level in range(4):
                        values[c, level, i] = row[dims[level]]
            for c in range(ncodebooks):
                poison += _tree_codes(values[c, 0], values[c, 1], values[c, 2], values[c, 3], 0,
                                      nrows, thresholds[first + c], block_codes[c])
        else:
            source = hidden[(layer - 1) % 2]
            for c in range(ncodebooks):
                dims = split_dims[first + c]
                _tree_codes(source[dims[0]], source[dims[1]], source[dims[2]], source[dims[3]],
                            0, nrows, thresholds[first + c], block_codes[c])
        # -- lookup-accumulate, dequantise (one multiply-add), ReLU between layers
        inv = inv_scale[vec_start:vec_start + width]
        sh = shift[vec_start:vec_start + width]
        if layer == last:
            for i in range(nrows):
                _accumulate(luts, lut_start, padded, block_codes, ncodebooks, i, acc)
                o = out[start + i]
                for m in range(width):
                    o[m] = np.float32(acc[m]) * inv[m] + sh[m]
        else:
            target = hidden[layer % 2]
            for i in range(nrows):
                _accumulate(luts, lut_start, padded, block_codes, ncodebooks, i, acc)
                for m in range(width):
                    target[m, i] = max(np.float32(acc[m]) * inv[m] + sh[m], np.float32(0.0))
    return np.int64(poison != 0.0)


@njit(**JIT)
def fused_chain_serial(X, split_dims, thresholds, luts, inv_scale, shift, layout, out,
                       block_rows, nworkers):
    """Serial twin of :func:`fused_chain_parallel` (``nworkers`` is ignored)."""
    n = X.shape[0]
    rows = max(1, min(block_rows, n))
    cmax, padded, hidden_width = _scratch_sizes(layout)
    values = np.empty((cmax, 4, rows), dtype=np.float32)
    block_codes = np.empty((cmax, rows), dtype=np.uint8)
    acc = np.empty(padded, dtype=np.uint16)
    hidden = np.empty((2, hidden_width, rows), dtype=np.float32)
    nonfinite = np.int64(0)
    for start in range(0, n, rows):
        nonfinite += _chain_block(X, split_dims, thresholds, luts, inv_scale, shift, layout, out,
                                  start, min(start + rows, n), values, block_codes, acc, hidden)
    return nonfinite


@njit(**PJIT)
def fused_chain_parallel(X, split_dims, thresholds, luts, inv_scale, shift, layout, out,
                         block_rows, nworkers):
    """The chain's output for every row of C-ordered float32 X (n, D) into float32
    ``out`` (n, width of the last layer); returns how many row blocks read NaN/Inf from X.

    Blocks of ``block_rows`` rows go through every layer at once; each of ``nworkers``
    workers (the thread count) takes every ``nworkers``-th block with its own scratch and
    owns those rows of ``out``."""
    n = X.shape[0]
    rows = max(1, min(block_rows, n))
    nblocks = (n + rows - 1) // rows
    nworkers = max(1, min(nworkers, nblocks))
    cmax, padded, hidden_width = _scratch_sizes(layout)
    counts = np.zeros(nworkers, dtype=np.int64)
    for w in prange(nworkers):
        # scratch allocated once per worker: private, so LLVM knows it aliases nothing
        values = np.empty((cmax, 4, rows), dtype=np.float32)
        block_codes = np.empty((cmax, rows), dtype=np.uint8)
        acc = np.empty(padded, dtype=np.uint16)
        hidden = np.empty((2, hidden_width, rows), dtype=np.float32)
        for b in range(w, nblocks, nworkers):
            start = b * rows
            counts[w] += _chain_block(X, split_dims, thresholds, luts, inv_scale, shift, layout,
                                      out, start, min(start + rows, n), values, block_codes, acc,
                                      hidden)
    return counts.sum()
