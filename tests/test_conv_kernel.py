"""The tree encoding of Conv2d patches read straight from the image (kernels/conv.py) and
the im2col patch matrix (lutengine._dispatch.conv), against the loop oracle in
``reference.py``, ``torch.nn.functional.unfold`` and :mod:`kernels.encode` on the patches.

Codes must match bit for bit, for every kernel, stride and padding, for the serial and the
parallel variant with any unit size and thread count.
"""

import numba
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import reference as ref
from kernels import conv, encode
from lutengine import LutMatmul, _dispatch, datasets

#: (n, Cin, H, W, kernel, stride, padding): 1x1, 3x3 pad 1, 5x5 stride 2, non-square
#: images and kernels, one image, stride above the kernel, a kernel larger than the image
GEOMETRIES = [
    (3, 4, 8, 8, 1, 1, 0),
    (2, 3, 8, 8, 3, 1, 1),
    (2, 3, 11, 11, 5, 2, 2),
    (2, 2, 7, 12, 3, 1, 1),
    (1, 5, 13, 6, 3, 2, 0),
    (1, 3, 9, 9, 5, 2, 2),
    (2, 2, 10, 7, (3, 2), (2, 1), (1, 0)),
    (2, 2, 9, 9, 2, 3, 0),
    (1, 2, 3, 2, 5, 1, 2),
]
geometry_ids = [f"n{g[0]}c{g[1]}_{g[2]}x{g[3]}_k{g[4]}s{g[5]}p{g[6]}" for g in GEOMETRIES]
variant = pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])


def pick(parallel):
    return conv.encode_tree_conv_parallel if parallel else conv.encode_tree_conv_serial


def pair(value):
    return (value, value) if np.ndim(value) == 0 else tuple(value)


def run_kernel(parallel, X, dims, thr, kernel_size, stride, padding, out_rows):
    """The kernel called directly: (codes, nonfinite count)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    Ho, Wo = (X.shape[2] + 2 * ph - kh) // sh + 1, (X.shape[3] + 2 * pw - kw) // sw + 1
    codes = np.full((X.shape[0] * Ho * Wo, dims.shape[0]), 255, dtype=np.uint8)
    nonfinite = pick(parallel)(X, dims, thr, kh, kw, sh, sw, ph, pw, codes, out_rows,
                               numba.get_num_threads())
    return codes, nonfinite


def random_trees(rng, D, C, grid):
    """split_dims (C, 4) over the D patch features and heap thresholds (C, 16); on a
    half grid (with ``grid``) values equal to thresholds, and to the padding's 0, are common."""
    dims = rng.integers(0, D, (C, 4)).astype(np.int64)
    if grid:
        thr = (rng.integers(-3, 4, (C, 16)) / 2).astype(np.float32)
    else:
        thr = (0.7 * rng.standard_normal((C, 16))).astype(np.float32)
    return dims, thr


def random_images(rng, shape, grid):
    if grid:
        return (rng.integers(-3, 4, shape) / 2).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def all_features(D, C):
    """split dims covering every feature at least once (C*4 >= D)."""
    return (np.arange(C * 4) % D).reshape(C, 4).astype(np.int64)


# ---------------------------------------------------------------------------------------
# im2col

@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_ids)
def test_im2col_matches_torch_unfold_and_loops(geometry):
    torch = pytest.importorskip("torch")
    n, Cin, H, W, k, s, p = geometry
    X = np.random.default_rng(1).standard_normal((n, Cin, H, W)).astype(np.float32)
    patches = _dispatch.conv.im2col(X, k, s, p)
    (kh, kw) = pair(k)
    assert patches.dtype == np.float32 and patches.flags.c_contiguous
    unfolded = torch.nn.functional.unfold(torch.from_numpy(X), k, stride=s, padding=p)
    expected = unfolded.transpose(1, 2).reshape(-1, Cin * kh * kw).numpy()
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(patches, ref.ref_im2col(X, k, s, p))
    (_, _), (_, _), (_, _), (Ho, Wo) = _dispatch.conv.geometry(X.shape, k, s, p)
    assert patches.shape == (n * Ho * Wo, Cin * kh * kw)


def test_im2col_is_the_conv2d_matmul():
    """patches · weight.reshape(Cout, -1)ᵀ is torch's conv2d, rows ordered (n, y, x)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out = torch.nn.functional.conv2d(torch.from_numpy(X), torch.from_numpy(weight), stride=2,
                                     padding=1).numpy()  # (n, Cout, Ho, Wo)
    product = _dispatch.conv.im2col(X, 3, 2, 1).astype(np.float64) @ weight.reshape(4, -1).T
    np.testing.assert_allclose(product, out.transpose(0, 2, 3, 1).reshape(-1, 4), atol=1e-4)


def test_im2col_casts_to_float32():
    X = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(_dispatch.conv.im2col(X, 3, 1, 1),
                                  ref.ref_im2col(X, 3, 1, 1).astype(np.float32))


# ---------------------------------------------------------------------------------------
# encoder against the oracle and against kernels.encode on the patches

@variant
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_ids)
@pytest.mark.parametrize("grid", [False, True], ids=["normal", "grid"])
def test_encode_tree_conv_matches_oracle(threads, parallel, geometry, grid):
    n, Cin, H, W, k, s, p = geometry
    rng = np.random.default_rng(GEOMETRIES.index(geometry) + 100 * grid)
    X = random_images(rng, (n, Cin, H, W), grid)
    D = Cin * np.prod(pair(k))
    dims, thr = random_trees(rng, D, 9, grid)
    dims[:, :] = np.where(rng.random(dims.shape) < 0.5, dims, all_features(D, 9))
    expected = ref.ref_encode_tree_conv(X, dims, thr, k, s, p)
    patches = ref.ref_im2col(X, k, s, p)
    by_encode = np.empty_like(expected)
    assert encode.encode_tree_serial(patches, dims, thr, by_encode, 32, False, 1) == 0
    np.testing.assert_array_equal(by_encode, expected)
    with threads(2 if parallel else 1):
        for out_rows in (1, 2, 3, 100):
            codes, nonfinite = run_kernel(parallel, X, dims, thr, k, s, p, out_rows)
            assert nonfinite == 0
            np.testing.assert_array_equal(codes, expected)
        codes, nonfinite = _dispatch.conv.encode_tree_conv(X, dims, thr, k, s, p)
    assert nonfinite == 0
    np.testing.assert_array_equal(codes, expected)


def test_encode_tree_conv_every_feature_every_code():
    """Trees on single features (all four levels the same tap) with thresholds splitting
    the values: every tap of every channel is read and every code occurs."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    D = 3 * 5 * 5
    dims = np.repeat(np.arange(D, dtype=np.int64)[:, None], 4, axis=1)
    quantiles = np.quantile(X, [0.5, 0.25, 0.75] + list(np.linspace(0.1, 0.9, 12)))
    thr = np.tile(np.sort(quantiles).astype(np.float32), (D, 1))
    thr[:, 0] = np.median(X)
    expected = ref.ref_encode_tree_conv(X, dims, thr, 5, 2, 2)
    for parallel in (False, True):
        codes, nonfinite = run_kernel(parallel, X, dims, thr, 5, 2, 2, 2)
        assert nonfinite == 0
        np.testing.assert_array_equal(codes, expected)
    assert len(np.unique(expected)) > 4


# ---------------------------------------------------------------------------------------
# thresholds of fitted LutMatmul layers, on real images

def _fitted_layer(patches, Cout, C, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((patches.shape[1], Cout)).astype(np.float32)
    return LutMatmul(C, progress=False).fit(patches, weight)


def _check_layer(layer, X, k, s, p, threads):
    """Codes and predictions through the conv encoder equal the layer's on the patches."""
    patches = _dispatch.conv.im2col(X, k, s, p)
    expected = ref.ref_encode_tree(patches, layer.split_dims_, layer.thresholds_)
    np.testing.assert_array_equal(layer.transform(patches), expected)
    for nthreads in (1, 2):
        with threads(nthreads):
            codes, nonfinite = _dispatch.conv.encode_tree_conv(X, layer.split_dims_,
                                                               layer.thresholds_, k, s, p)
            assert nonfinite == 0
            np.testing.assert_array_equal(codes, expected)
            for parallel in (False, True):
                np.testing.assert_array_equal(run_kernel(parallel, X, layer.split_dims_,
                                                         layer.thresholds_, k, s, p, 3)[0],
                                              expected)
    np.testing.assert_array_equal(layer.predict_codes(codes), layer.predict(patches))
    return expected


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (5, 2, 2), (1, 1, 0), (3, 2, 0)])
def test_digits_fitted_layer(threads, k, s, p):
    """scikit-learn's 8x8 digits: many pixels are exactly 0 (as is the padding) and the
    trees' thresholds come from the data, so values equal to their threshold are common."""
    X_train, _, X_test, _ = datasets.load_digits()
    train = X_train[:300].reshape(-1, 1, 8, 8)
    test = np.ascontiguousarray(X_test[:40].reshape(-1, 1, 8, 8))
    layer = _fitted_layer(_dispatch.conv.im2col(train, k, s, p), 6, min(8, k * k), 0)
    codes = _check_layer(layer, test, k, s, p, threads)
    assert len(np.unique(codes)) >= 8
    _check_layer(layer, test[:1], k, s, p, threads)  # one image


def test_random_multichannel_fitted_layer(threads):
    """Cin=6 post-ReLU activations (half exact zeros), non-square, 3x3 pad 1 and 5x5
    stride 2 pad 2 layers fitted on one set of images and run on another."""
    rng = np.random.default_rng(4)
    images = np.maximum(rng.standard_normal((24, 6, 12, 10)), 0).astype(np.float32)
    for k, s, p in ((3, 1, 1), (5, 2, 2)):
        layer = _fitted_layer(_dispatch.conv.im2col(images[:16], k, s, p), 5, 16, 1)
        _check_layer(layer, images[16:], k, s, p, threads)


def test_cifar10_fitted_layer(data_root, threads):
    """Real CIFAR-10 pixels (the lossless first 4000 training images), 3x3 pad 1 and 5x5
    stride 2 layers: a first convolution of a CIFAR network."""
    path = data_root / "cifar10" / "cifar10_train_first4000_lossless.npz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with np.load(path) as archive:
        images = archive["images"][:40]
    X = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    for k, s, p, C in ((3, 1, 1, 8), (5, 2, 2, 16)):
        layer = _fitted_layer(_dispatch.conv.im2col(X[:24], k, s, p), 8, C, 2)
        codes = _check_layer(layer, X[24:], k, s, p, threads)
        assert len(np.unique(codes)) == 16


# ---------------------------------------------------------------------------------------
# threads, units, NaN/Inf

def test_results_do_not_depend_on_threads_or_units(threads):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5, 3, 17, 13)).astype(np.float32)
    dims, thr = random_trees(rng, 27, 16, False)
    expected = ref.ref_encode_tree_conv(X, dims, thr, 3, 1, 1)
    for nthreads in (1, 2):
        with threads(nthreads):
            for parallel in (False, True):
                for out_rows in (1, 4, 17, 64):
                    codes, _ = run_kernel(parallel, X, dims, thr, 3, 1, 1, out_rows)
                    np.testing.assert_array_equal(codes, expected)
    with threads(2):  # one image with more output rows than PARALLEL_MIN_ROWS
        big = rng.standard_normal((1, 3, 70, 40)).astype(np.float32)
        codes, _ = _dispatch.conv.encode_tree_conv(big, dims, thr, 3, 1, 1)
        np.testing.assert_array_equal(codes, ref.ref_encode_tree_conv(big, dims, thr, 3, 1, 1))


@variant
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_reported_only_where_read(threads, parallel, bad):
    """A NaN/Inf at a pixel some tree reads is reported; one in a channel no tree reads, or
    in a column no window of stride 2 covers, is not (it cannot change the codes)."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    dims = np.array([[0, 4, 8, 9], [13, 17, 1, 3]], dtype=np.int64)  # channels 0 and 1 only
    thr = np.zeros((2, 16), dtype=np.float32)
    with threads(2 if parallel else 1):
        assert run_kernel(parallel, X, dims, thr, 3, 1, 1, 2)[1] == 0
        unread = X.copy()
        unread[1, 2, 4, 4] = bad  # channel 2
        assert run_kernel(parallel, unread, dims, thr, 3, 1, 1, 2)[1] == 0
        uncovered = X.copy()
        uncovered[0, 0, 3, 9] = bad  # 3x3 stride 2 no padding: columns 0..8 only
        assert run_kernel(parallel, uncovered, dims, thr, 3, 2, 0, 2)[1] == 0
        assert ref.ref_im2col(uncovered, 3, 2, 0).shape[0] > 0
        for image, channel, y, x in ((0, 0, 0, 0), (1, 1, 8, 9), (1, 0, 4, 5)):
            poisoned = X.copy()
            poisoned[image, channel, y, x] = bad
            patches = ref.ref_im2col(poisoned, 3, 1, 1)
            assert ref.ref_nonfinite(patches, dims)
            codes, nonfinite = run_kernel(parallel, poisoned, dims, thr, 3, 1, 1, 2)
            assert nonfinite > 0
            np.testing.assert_array_equal(codes, ref.ref_encode_tree(patches, dims, thr))
    poisoned = X.copy()
    poisoned[0, 1, 2, 3] = bad
    assert _dispatch.conv.encode_tree_conv(poisoned, dims, thr, 3, 1, 1)[1] > 0


# ---------------------------------------------------------------------------------------
# property: any geometry

@given(n=st.integers(1, 3), cin=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), c=st.integers(1, 6), out_rows=st.integers(1, 5),
       parallel=st.booleans(), grid=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_encode_tree_conv_any_geometry(n, cin, h, w, kh, kw, sh, sw, ph, pw, c, out_rows,
                                       parallel, grid, seed):
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)  # at least one output position
    rng = np.random.default_rng(seed)
    X = random_images(rng, (n, cin, h, w), grid)
    dims, thr = random_trees(rng, cin * kh * kw, c, grid)
    codes, nonfinite = run_kernel(parallel, X, dims, thr, (kh, kw), (sh, sw), (ph, pw), out_rows)
    assert nonfinite == 0
    np.testing.assert_array_equal(
        codes, ref.ref_encode_tree_conv(X, dims, thr, (kh, kw), (sh, sw), (ph, pw)))
