"""NumPy oracles for every kernel in ``kernels/`` (float64, vectorised, no Numba).

Each function restates the papers' definitions (MADDNESS: Blalock & Guttag 2021) as plainly
as possible, independently of the kernels it checks: no blocking, no threads, dense
one-hot matrices, brute-force split search.
"""

import numpy as np


def ref_encode_tree(X, split_dims, thresholds):
    """Codes of the MADDNESS hash trees (MADDNESS §4.1).

    Tree ``c`` compares column ``split_dims[c, level]`` with the heap-ordered threshold
    ``thresholds[c, 2**level - 1 + node]``; a value strictly greater goes right, and the
    code is the 4 decision bits read most-significant first. NaN never goes right.
    """
    X = np.asarray(X)
    C = split_dims.shape[0]
    node = np.zeros((X.shape[0], C), dtype=np.int64)
    codebook = np.arange(C)[None, :]
    for level in range(4):
        values = X[:, split_dims[:, level]]
        bits = values > thresholds[codebook, 2**level - 1 + node]
        node = 2 * node + bits
    return node.astype(np.uint8)


def ref_nonfinite(X, cols):
    """Whether any of the columns ``cols`` of X holds NaN or ±Inf."""
    return bool(~np.isfinite(np.asarray(X)[:, np.unique(cols)]).all())


def ref_encode_pq(X, cols, bounds, centroids):
    """Index of the nearest centroid (squared L2, first on ties) in every subspace.

    Codebook ``c`` owns the columns ``cols[bounds[c]:bounds[c + 1]]`` and the first
    ``width`` entries of each of its 16 centroids. Rows whose distances are all
    non-finite get code 0.
    """
    X = np.asarray(X, dtype=np.float64)
    C = bounds.shape[0] - 1
    codes = np.empty((X.shape[0], C), dtype=np.uint8)
    for c in range(C):
        lo, hi = bounds[c], bounds[c + 1]
        sub = X[:, cols[lo:hi]]
        cent = centroids[c, :, : hi - lo].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            dist = ((sub[:, None, :] - cent[None, :, :]) ** 2).sum(axis=2)
        dist[~np.isfinite(dist)] = np.inf
        codes[:, c] = np.argmin(dist, axis=1)
    return codes


def ref_build_luts(prototypes, B):
    """``T[c, k, m] = <P[c, k, :], B[:, m]>`` in float64 (MADDNESS §3.2)."""
    return np.einsum("ckd,dm->ckm", prototypes.astype(np.float64), B.astype(np.float64))


def ref_quantize_luts(luts):
    """uint8 tables, per-output offsets (C, M) and per-output scales (M,) (MADDNESS §4.4,
    one scale per output).

    The offset of codebook c for output m is ``min_k T[c, k, m]``; ``scale[m] =
    2**-ceil(log2(gap_m)) * (255.5 - 1e-10)`` with gap_m the largest range ``max_k - min_k``
    over the codebooks of output m; ``q = floor((T - offset) * scale + 0.5)``. A gap of 0
    (every table of the output constant) is given the scale 1.
    """
    T = np.asarray(luts, dtype=np.float64)
    offsets = T.min(axis=1)
    gaps = (T.max(axis=1) - offsets).max(axis=0)
    scales = np.ones(T.shape[2])
    spread = gaps > 0
    scales[spread] = 2.0 ** -np.ceil(np.log2(gaps[spread])) * (255.5 - 1e-10)
    q = np.floor((T - offsets[:, None, :]) * scales + 0.5)
    assert q.min() >= 0 and q.max() <= 255
    return q.astype(np.uint8), offsets, scales


def _gather(codes, luts):
    """``luts[c, codes[n, c], :]`` for every (n, c): shape (N, C, M)."""
    return luts[np.arange(codes.shape[1])[None, :], codes]


def ref_accumulate(codes, luts_q):
    """The quantised scan's integer sums ``Σ_c luts_q[c, codes[n, c], m]``, int64 (N, M)."""
    return _gather(codes, luts_q).astype(np.int64).sum(axis=1)


def ref_scan_quantized(codes, luts_q, scales, offset_sums, out_bias):
    """Dequantised scan, float64 (N, M): ``acc / scales[m] + offset_sums[m] + out_bias[m]``."""
    acc = ref_accumulate(codes, luts_q)
    return (acc / np.asarray(scales, np.float64) + np.asarray(offset_sums, np.float64)
            + np.asarray(out_bias, np.float64))


def ref_pack_codes(codes):
    """Codes (N, C) in the packed layout of kernels/packed.py (MADDNESS's reference layout): uint8
    ``[ceil(N/32), ceil(C/2), 32]``, codebook 2j in the low nibble, 2j+1 in the high one,
    padding rows and the missing high nibble of odd C zero."""
    N, C = codes.shape
    padded = np.zeros((-(-N // 32) * 32, -(-C // 2) * 2), dtype=np.uint8)
    padded[:N, :C] = codes
    blocks = padded.reshape(-1, 32, padded.shape[1] // 2, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks[..., 0] | (blocks[..., 1] << 4), dtype=np.uint8)


def ref_unpack_codes(packed, nrows, ncodebooks):
    """Inverse of :func:`ref_pack_codes`."""
    pairs = np.stack([packed & 15, packed >> 4], axis=-1)  # (blocks, C/2, 32, 2)
    return pairs.transpose(0, 2, 1, 3).reshape(packed.shape[0] * 32, -1)[:nrows, :ncodebooks]


def ref_encode_tree_packed(X, split_dims, thresholds):
    return ref_pack_codes(ref_encode_tree(X, split_dims, thresholds))


def _ref_pair(value):
    return (value, value) if np.ndim(value) == 0 else tuple(value)


def ref_im2col(X, kernel_size, stride=1, padding=0):
    """Conv2d patches (groups=1, zero padding) of X (n, Cin, H, W), by loops over the
    output positions: row ``(n*Ho + y)*Wo + x`` holds at feature ``ci*kh*kw + dy*kw + dx``
    the value ``X[n, ci, y*sh + dy - ph, x*sw + dx - pw]``, 0 outside the image."""
    X = np.asarray(X)
    (kh, kw), (sh, sw), (ph, pw) = _ref_pair(kernel_size), _ref_pair(stride), _ref_pair(padding)
    n, Cin, H, W = X.shape
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    padded = np.zeros((n, Cin, H + 2 * ph, W + 2 * pw), dtype=X.dtype)
    padded[:, :, ph:ph + H, pw:pw + W] = X
    patches = np.empty((n, Ho, Wo, Cin * kh * kw), dtype=X.dtype)
    for y in range(Ho):
        for x in range(Wo):
            window = padded[:, :, y * sh:y * sh + kh, x * sw:x * sw + kw]  # (n, Cin, kh, kw)
            patches[:, y, x] = window.reshape(n, -1)
    return patches.reshape(n * Ho * Wo, -1)


def ref_encode_tree_conv(X, split_dims, thresholds, kernel_size, stride=1, padding=0):
    """MADDNESS codes of the Conv2d patches: :func:`ref_encode_tree` on :func:`ref_im2col`."""
    return ref_encode_tree(ref_im2col(X, kernel_size, stride, padding), split_dims, thresholds)


def ref_scan_quantized_packed(packed, nrows, luts_q, scales, offset_sums, out_bias):
    return ref_scan_quantized(ref_unpack_codes(packed, nrows, luts_q.shape[0]), luts_q, scales,
                            offset_sums, out_bias)


# -- the SIMD primitives of kernels/simd, on NumPy arrays (u8x32: 32 uint8; u16x16: 16
# uint16); arrays are read flat from ``start``

def ref_load_u8x32(arr, start):
    return arr.reshape(-1)[start:start + 32].copy()


def ref_load_table16(arr, start):
    return np.tile(arr.reshape(-1)[start:start + 16], 2)


def ref_store_u8x32(arr, start, v):
    arr.reshape(-1)[start:start + 32] = v


def ref_store_u16x16(arr, start, v):
    arr.reshape(-1)[start:start + 16] = v


def ref_zeros_u8x32():
    return np.zeros(32, np.uint8)


def ref_zeros_u16x16():
    return np.zeros(16, np.uint16)


def ref_lookup_u8x32(table, idx):
    """``vpshufb`` (Intel SDM): per 128-bit lane, ``idx & 0x80 ? 0 : lane_table[idx & 15]``."""
    lane = np.arange(32) // 16
    return np.where(idx >= 128, 0, table[16 * lane + (idx & 15)]).astype(np.uint8)


def ref_low_nibbles(v):
    return v & 15


def ref_high_nibbles(v):
    return v >> 4


def ref_add_u8x32(a, b):
    return ((a.astype(np.int64) + b) % 256).astype(np.uint8)


def ref_add_words(acc, v):
    words = v[0::2].astype(np.int64) + 256 * v[1::2].astype(np.int64)
    return ((acc.astype(np.int64) + words) % 65536).astype(np.uint16)


def ref_add_high_bytes(acc, v):
    return ((acc.astype(np.int64) + v[1::2]) % 65536).astype(np.uint16)


def _row_sums(words, odd):
    """All 32 byte sums from the word sums and the odd-byte sums."""
    out = np.empty(32, np.int64)
    out[0::2] = (words.astype(np.int64) - 256 * odd.astype(np.int64)) % 65536
    out[1::2] = odd
    return out.astype(np.uint16)


def ref_row_sums_low(words, odd):
    return _row_sums(words, odd)[:16]


def ref_row_sums_high(words, odd):
    return _row_sums(words, odd)[16:]


def ref_store_dequantized(arr, start, v, inv_scale, shift):
    flat = arr.reshape(-1)
    flat[start:start + len(v)] = v.astype(np.float32) * inv_scale + shift


def ref_load_f32x8(arr, start):
    return arr.reshape(-1)[start:start + 8].copy()


def ref_zeros_f32x8():
    return np.zeros(8, np.float32)


def ref_zeros_i32x8():
    return np.zeros(8, np.int32)


def ref_tree_step(node, x, level_thresholds):
    """One MADDNESS tree level (MADDNESS §4.1): go right (bit 1) iff x > the threshold
    of the current node."""
    return (2 * node + (x > level_thresholds[node])).astype(np.int32)


def ref_add_times_zero(acc, x):
    """NaN where acc or x is NaN or x is ±Inf, else acc."""
    return np.where(np.isfinite(x), acc, np.nan).astype(np.float32)


def ref_sum_f32x8(v):
    return np.float32(np.nan if np.isnan(v).any() else v.sum())


def ref_narrow_u8x32(a, b, c, d):
    return (np.concatenate([a, b, c, d]) % 256).astype(np.uint8)


def ref_pack_nibbles(low, high):
    return ((low.astype(np.int64) | (high.astype(np.int64) << 4)) % 256).astype(np.uint8)


def ref_scan_float(codes, luts, out_bias):
    """Exact sum ``Σ_c luts[c, codes[n, c], :] + out_bias`` in float64."""
    return _gather(codes, luts).astype(np.float64).sum(axis=1) + np.asarray(out_bias, np.float64)


def ref_fused_chain(X, split_dims, thresholds, luts, inv_scale, shift, layout, codes=None):
    """Forward of a chain of quantised MADDNESS layers with ReLU between them, layer by
    layer on whole arrays, in the flat plan of kernels/fused.py: float32 (N, width of the
    last layer).

    Layer ``l`` = ``layout[l]`` = (first tree, C, first table entry, padded width, width,
    first scalar): its trees are rows ``first:first + C`` of split_dims / thresholds and
    read its input H (X, then the previous layer's ``width`` columns); its tables are
    ``luts[start:start + 16·C·padded]`` as (C, 16, padded), of which the first ``width``
    columns count. ``Z = float32(acc · inv_scale + shift)`` rounded once (the product of a
    16-bit integer and a float32 is exact in float64: a fused multiply-add, up to a double
    rounding that needs a float64 sum exactly halfway between float32 numbers); ``H =
    max(Z, 0)`` except after the last layer. ``codes``: a list receiving each layer's codes.
    """
    H = np.asarray(X, dtype=np.float32)
    for layer, (first, C, start, padded, width, vec) in enumerate(np.asarray(layout).tolist()):
        layer_codes = ref_encode_tree(H, split_dims[first:first + C], thresholds[first:first + C])
        if codes is not None:
            codes.append(layer_codes)
        tables = np.asarray(luts)[start:start + 16 * C * padded].reshape(C, 16, padded)[:, :, :width]
        acc = ref_accumulate(layer_codes, tables)
        Z = (acc * np.asarray(inv_scale[vec:vec + width], np.float64)
             + np.asarray(shift[vec:vec + width], np.float64)).astype(np.float32)
        H = Z if layer == len(layout) - 1 else np.maximum(Z, np.float32(0))
    return H


def ref_onehot(codes):
    """Dense one-hot matrix G (N × 16C): ``G[n, 16c + k] = 1`` iff ``codes[n, c] == k``."""
    N, C = codes.shape
    G = np.zeros((N, 16 * C))
    G[np.arange(N)[:, None], 16 * np.arange(C)[None, :] + codes] = 1.0
    return G


def ref_onehot_gram(codes):
    """``GᵀG`` (float64)."""
    G = ref_onehot(codes)
    return G.T @ G


def ref_onehot_rowsum(codes, A):
    """``GᵀA`` (float64)."""
    return ref_onehot(codes).T @ np.asarray(A, dtype=np.float64)


def _sse(block):
    """Sum over columns of the within-block squared deviations (two-pass)."""
    if block.shape[0] == 0:
        return 0.0
    return float(((block - block.mean(axis=0)) ** 2).sum())


def ref_split_loss(X, rows, dim, threshold):
    """SSE of the rows with ``x <= threshold`` plus SSE of those with ``x > threshold``."""
    sub = np.asarray(X, dtype=np.float64)[rows]
    right = sub[:, dim] > threshold
    return _sse(sub[~right]) + _sse(sub[right])


def ref_best_split(X, rows, dim):
    """Brute-force best cut of ``X[rows]`` on column ``dim`` (MADDNESS §4.2).

    Every cut between two distinct sorted values is tried; the loss is SSE(left) +
    SSE(right) over all columns. Returns ``(loss, threshold, losses)``: the smallest
    loss, the float64 midpoint of its cut (first cut on ties) and the loss of every
    cut in ascending order. Without a possible cut: the bucket's SSE and its largest
    value (``(0, inf)`` when empty).
    """
    sub = np.asarray(X, dtype=np.float64)[rows]
    if sub.shape[0] == 0:
        return 0.0, np.inf, np.empty(0)
    distinct = np.unique(sub[:, dim])
    if distinct.shape[0] < 2:
        return _sse(sub), distinct[-1], np.empty(0)
    losses = np.array([_sse(sub[sub[:, dim] <= lo]) + _sse(sub[sub[:, dim] > lo])
                       for lo in distinct[:-1]])
    best = int(np.argmin(losses))
    return losses[best], (distinct[best] + distinct[best + 1]) / 2, losses



def ref_merge_topk(scores, ids_offset, rows, top_scores, top_ids):
    """The running top-k after merging: for each q, the k best of query ``rows[q]``'s
    current entries and ``scores[q]`` (ids ``ids_offset + j``), ranked by score then by
    lower id; returned as (scores, ids) sorted best first."""
    out_scores, out_ids = top_scores.astype(np.float64).copy(), top_ids.copy()
    k = top_scores.shape[1]
    for q, r in enumerate(rows):
        s = np.concatenate([top_scores[r], scores[q]]).astype(np.float64)
        i = np.concatenate([top_ids[r], ids_offset + np.arange(scores.shape[1])])
        keep = np.lexsort((i, -s))[:k]
        out_scores[r], out_ids[r] = s[keep], i[keep]
    return out_scores, out_ids


def ref_rows_dot(W, ids, X):
    """``<W[ids[i, j]], X[i]>`` in float64."""
    return np.einsum("ijd,id->ij", np.asarray(W, np.float64)[ids], np.asarray(X, np.float64))


def ref_h2alsh_search(W_sorted, Q, k):
    """What H2-ALSH approximates, and returns exactly when every ring is scanned: the
    top-k positions by inner product (float64; equal scores: smaller position first)
    and their float32 scores."""
    S = np.asarray(Q, np.float64) @ np.asarray(W_sorted, np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(S.shape[1]), S.shape), -S), axis=1)[:, :k]
    return order, np.take_along_axis(S, order, 1).astype(np.float32)


# -- 4-bit PQ fast scan for MIPS (kernels/fastscan.py)

def ref_fastscan_tables(Q, centroids, bounds):
    """Per query: float tables ``T[c, j] = <x[lo_c:hi_c], centroids[c, j, :w_c]>``,
    ``q = floor((T - min_c) · scale + 0.5)`` with ``scale = min(255 / max_c range_c,
    (65535 - C) / Σ_c range_c)`` (1 when every table is constant), padded with a zero
    table to an even count. Returns (uint8 (nq, Cpad, 16), offsets Σ_c min_c (nq,),
    scales (nq,)), float64 arithmetic."""
    Q = np.asarray(Q, np.float64)
    C = bounds.shape[0] - 1
    T = np.stack([Q[:, bounds[c]:bounds[c + 1]]
                  @ centroids[c, :, :bounds[c + 1] - bounds[c]].T.astype(np.float64)
                  for c in range(C)], axis=1)  # (nq, C, 16)
    mins = T.min(axis=2)
    ranges = T.max(axis=2) - mins
    top, total = ranges.max(axis=1), ranges.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(top > 0, np.minimum(255.0 / top, (65535.0 - C) / total), 1.0)
    q = np.clip(np.floor((T - mins[:, :, None]) * scales[:, None, None] + 0.5), 0, 255)
    qtables = np.zeros((Q.shape[0], C + C % 2, 16), dtype=np.uint8)
    qtables[:, :C] = q
    return qtables, mins.sum(axis=1), scales


def ref_fastscan_scan(packed, qtables, nrows):
    """uint16 scores (nq, nrows): Σ_c qtables[q, c, code_c] over the unpacked codes."""
    codes = ref_unpack_codes(packed, nrows, packed.shape[1] * 2).astype(np.int64)
    C = codes.shape[1]
    sums = np.zeros((qtables.shape[0], nrows), dtype=np.int64)
    for c in range(C):
        sums += qtables[:, c, :].astype(np.int64)[:, codes[:, c]]
    assert sums.max(initial=0) < 2**16
    return sums.astype(np.uint16)


def ref_fastscan_keys(scores, offset, scale, norms, qtable):
    """16-bit keys of the approximate inner products ``a = norm · (score / scale +
    offset)``, in float32 as the kernel: ``floor(clip((a - lo) · kscale, 0, 65535))`` with
    lo = M · min(offset, 0), hi = M · max(top / scale + offset, 0), M = norms[0], top the
    largest possible score and kscale = 65535 / (hi - lo) (0 when hi = lo)."""
    f = np.float32
    inv = f(1.0) / f(scale)
    top = f(qtable.astype(np.int64).max(axis=1).sum())
    M, offset = f(norms[0]), f(offset)
    hi = M * max(top * inv + offset, f(0.0))
    lo = M * min(offset, f(0.0))
    with np.errstate(over="ignore"):
        kscale = f(65535.0) / (hi - lo) if hi > lo else f(0.0)
    kscale = kscale if np.isfinite(kscale) else f(0.0)
    a = norms.astype(np.float32) * (scores.astype(np.float32) * inv + offset)
    return np.clip((a - lo) * kscale, f(0.0), f(65535.0)).astype(np.uint16)


def ref_fastscan_search(packed, nrows, qtables, offsets, scales, norms, rows, Q, k, rerank):
    """Per query: keys of the scores (:func:`ref_fastscan_keys`); the cut t = the largest
    key with at least ``rerank`` rows keyed ≥ t; candidates = rows keyed > t, then rows
    keyed t in row order up to ``rerank`` in all; their exact inner products (float64);
    the best k by score, then lower row. Returns (positions (nq, k), scores float32)."""
    scores = ref_fastscan_scan(packed, qtables, nrows)
    pos = np.empty((Q.shape[0], k), dtype=np.int64)
    out = np.empty((Q.shape[0], k), dtype=np.float32)
    for q in range(Q.shape[0]):
        keys = ref_fastscan_keys(scores[q], offsets[q], scales[q], norms[:nrows], qtables[q])
        at_least = np.cumsum(np.bincount(keys, minlength=65536)[::-1])[::-1]
        cut = np.nonzero(at_least >= rerank)[0].max()
        above = np.nonzero(keys > cut)[0]
        ties = np.nonzero(keys == cut)[0][:rerank - above.size]
        cand = np.concatenate([above, ties])
        exact = np.asarray(rows, np.float64)[cand] @ np.asarray(Q[q], np.float64)
        best = np.lexsort((cand, -exact))[:k]
        pos[q], out[q] = cand[best], exact[best]
    return pos, out


# -- networks (lutengine.network), node by node from the ops' fields

def ref_windows(X, kernel_size, stride, padding, fill):
    """Every window of images X (n, C, H, W) padded by ``fill``: (n, C, Ho, Wo, kh, kw),
    window (y, x) starting at row ``y*sh - ph`` and column ``x*sw - pw`` (floor mode)."""
    (kh, kw), (sh, sw), (ph, pw) = _ref_pair(kernel_size), _ref_pair(stride), _ref_pair(padding)
    n, C, H, W = X.shape
    padded = np.full((n, C, H + 2 * ph, W + 2 * pw), fill, dtype=np.float64)
    padded[:, :, ph:ph + H, pw:pw + W] = X
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))
    return windows[:, :, ::sh, ::sw]


def ref_patches(windows):
    """Conv2d patches of :func:`ref_windows` as PyTorch's ``unfold`` orders them: row
    ``(n*Ho + y)*Wo + x``, feature ``(ci, dy, dx)`` in C order."""
    n, C, rows, cols, kh, kw = windows.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * rows * cols, C * kh * kw)


def ref_layer(layer, rows):
    """A weight layer on float32 rows (n, features), float64 (n, outputs): a Dense as
    ``rows @ W + b``; a LutMatmul / PQMatmul as its encoder (hash trees or nearest
    centroids) and its scan. With int8 tables, the deployed product: the exact integer sums
    times the float32 ``1 / scale`` plus the float32 ``Σ_c offsets + bias``, rounded once to
    float32 (as :func:`ref_fused_chain`; a later layer's trees compare these very values);
    with float tables, the exact sums + bias."""
    if hasattr(layer, "W"):
        return rows.astype(np.float64) @ layer.W.astype(np.float64) + layer.b
    if hasattr(layer, "split_dims_"):
        codes = ref_encode_tree(rows, layer.split_dims_, layer.thresholds_)
    else:
        codes = ref_encode_pq(rows, layer.subspace_cols_, layer.subspace_bounds_,
                              layer.centroids_)
    if not layer.quantize:
        return ref_scan_float(codes, layer.luts_, layer.bias_)
    inv_scale = np.float32(1) / layer.lut_scale_.astype(np.float32)
    shift = layer.lut_offsets_.sum(axis=0, dtype=np.float64).astype(np.float32) \
        + layer.bias_.astype(np.float32)
    Z = ref_accumulate(codes, layer.luts_q_) * inv_scale.astype(np.float64) + shift
    return Z.astype(np.float32).astype(np.float64)


def _ref_gelu(H, approximate):
    from scipy.special import erf

    if approximate == "tanh":
        return 0.5 * H * (1 + np.tanh(np.sqrt(2 / np.pi) * (H + 0.044715 * H ** 3)))
    return 0.5 * H * (1 + erf(H / np.sqrt(2)))


def ref_op(op, values):
    """One op of the table on its input values (batch first), float64 or int64 ids in;
    its output, float64."""
    name = type(op).__name__
    H = values[0].astype(np.float64) if values[0].dtype != np.int64 else values[0]
    if name == "Linear":
        return ref_layer(op.layer, values[0].reshape(-1, H.shape[-1])).reshape(
            *H.shape[:-1], -1)
    if name == "Conv2d":
        windows = ref_windows(H, op.kernel_size, op.stride, op.padding, 0.0)
        n, _, rows, cols = windows.shape[:4]
        out = ref_layer(op.layer, ref_patches(windows).astype(np.float32))  # (n·Ho·Wo, out)
        return out.reshape(n, rows, cols, -1).transpose(0, 3, 1, 2)
    if name == "BatchNorm":
        channels = (-1,) + (1,) * (H.ndim - 2)
        return H * op.scale.reshape(channels) + op.shift.reshape(channels)
    if name == "ReLU":
        return np.where(H > 0, H, 0.0)
    if name == "GELU":
        return _ref_gelu(H, op.approximate)
    if name == "MaxPool2d":
        return ref_windows(H, op.kernel_size, op.stride, op.padding, -np.inf).max(axis=(4, 5))
    if name == "AvgPool2d":
        return ref_windows(H, op.kernel_size, op.stride, op.padding, 0.0).mean(axis=(4, 5))
    if name == "Flatten":
        return H.reshape(len(H), -1)
    if name in ("Softmax", "LogSoftmax"):
        Z = H - H.max(axis=-1, keepdims=True)
        log_total = np.log(np.exp(Z).sum(axis=-1, keepdims=True))
        return Z - log_total if name == "LogSoftmax" else np.exp(Z - log_total)
    if name in ("Add", "Mul"):
        other = op.constant.astype(np.float64) if op.constant is not None \
            else values[1].astype(np.float64)
        return H + other if name == "Add" else H * other
    if name == "Concat":
        axis = op.axis + 1 if op.axis >= 0 else op.axis
        return np.concatenate([v.astype(np.float64) for v in values], axis=axis)
    if name == "Embedding":
        return op.table.astype(np.float64)[H]
    if name == "Identity":
        return H
    raise NotImplementedError(f"no oracle for op {name}")


def network_forward(net, X):
    """The output of a Network for X (an array, or {input name: array}), node by node from
    the ops' fields (:func:`ref_op`), each value rounded to float32 as the Network holds it.
    Only the nodes the output needs are evaluated."""
    values = dict(X) if isinstance(X, dict) else {next(iter(net.inputs)): X}
    values = {name: np.asarray(v, np.int64 if net.inputs[name].dtype == "int64"
                               else np.float32) for name, v in values.items()}
    needed, stack = set(), [net.output]
    by_name = {node.name: node for node in net.nodes}
    while stack:
        name = stack.pop()
        if name in by_name and name not in needed:
            needed.add(name)
            stack.extend(by_name[name].inputs)
    for node in net.nodes:
        if node.name in needed:
            out = ref_op(node.op, [values[source] for source in node.inputs])
            values[node.name] = out.astype(np.float32)
    return values[net.output]
