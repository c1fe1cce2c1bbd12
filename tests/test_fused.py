"""The fused chain forward (kernels/fused.py, lutengine/_dispatch/fused.py,
lutengine/runtime.py): the kernel against its NumPy oracle, and ``FusedChain.forward``
against the layer-by-layer ``relu(layer.predict(H))`` on real data."""

import warnings

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from kernels import fused
from lutengine import LutMatmul, NotFittedError, PQMatmul, QuantizationWarning, config, datasets, nn
from lutengine._dispatch import fused as dispatch_fused
from lutengine.runtime import FusedChain

rows = st.one_of(st.sampled_from([1, 2, 7, 31, 32, 33, 64, 65, 257]), st.integers(1, 300))
block_rows = st.sampled_from([1, 3, 7, 32, 256])
seeds = st.integers(0, 2**32 - 1)
#: (C, width computed) of each layer
chain_shapes = st.lists(st.tuples(st.one_of(st.sampled_from([1, 2, 16, 17]), st.integers(1, 20)),
                                  st.one_of(st.sampled_from([1, 10, 31, 32, 33]),
                                            st.integers(1, 70))),
                        min_size=1, max_size=4)

variant = pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])

#: the tree level of each of the 15 heap-ordered nodes (and the unused 16th threshold)
NODE_LEVEL = np.array([0, 1, 1, 2, 2, 2, 2] + [3] * 9)


def kernel(parallel):
    return fused.fused_chain_parallel if parallel else fused.fused_chain_serial


def run_kernel(parallel, X, plan, block):
    out = np.full((X.shape[0], plan.n_outputs), np.nan, dtype=np.float32)
    nonfinite = kernel(parallel)(X, plan.split_dims, plan.thresholds, plan.luts, plan.inv_scale,
                                 plan.shift, plan.layout, out, block, numba.get_num_threads())
    return out, nonfinite


def reference_of(X, plan, codes=None):
    return ref.ref_fused_chain(X, plan.split_dims, plan.thresholds, plan.luts, plan.inv_scale,
                               plan.shift, plan.layout, codes)


def chain_plan(rng, X, shapes, grid):
    """A plan of random layers over X (already compacted: each layer's trees index the
    previous layer's computed columns). Thresholds are values of the layer's actual input
    (so inputs equal to their threshold are common and must go left), tables uniform
    uint8, shifts centring the outputs on 0 (ReLU zeroes about half). ``grid``: scales are
    powers of two and shifts multiples of 1/4, so every float operation is exact."""
    arrays = [[], [], [], [], []]  # split_dims, thresholds, luts, inv_scale, shift
    H = X
    for C, width in shapes:
        dims = rng.integers(0, H.shape[1], (C, 4)).astype(np.int64)
        thresholds = H[rng.integers(0, H.shape[0], (C, 16)), dims[:, NODE_LEVEL]]
        luts = rng.integers(0, 256, (C, 16, width), dtype=np.uint8)
        if grid:
            inv_scale = 2.0 ** -rng.integers(4, 9, width)
            shift = -np.round(127.5 * C * inv_scale * 4) / 4 + rng.integers(-4, 5, width) / 4
        else:
            inv_scale = rng.uniform(0.5, 2.0, width) / (64 * C)
            shift = -127.5 * C * inv_scale + rng.standard_normal(width)
        for array, value in zip(arrays, (dims, thresholds, luts, inv_scale, shift)):
            array.append(value)
        plan = dispatch_fused.build_plan(*arrays, X.shape[1])
        H = np.maximum(reference_of(X, plan), 0)  # the next layer's input
    return plan


def x_matrix(rng, n, d, grid):
    if grid:
        return (rng.integers(-3, 4, (n, d)) / 2).astype(np.float32)
    return rng.standard_normal((n, d)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# the kernel against reference.ref_fused_chain

@variant
@given(shapes=chain_shapes, n=rows, d=st.integers(1, 40), seed=seeds, block=block_rows,
       grid=st.booleans())
def test_kernel_matches_reference(parallel, shapes, n, d, seed, block, grid):
    """Outputs equal bit for bit: exact uint16 sums, and one rounding of acc·inv + shift
    (exact arithmetic altogether with ``grid``)."""
    rng = np.random.default_rng(seed)
    X = x_matrix(rng, n, d, grid)
    plan = chain_plan(rng, X, shapes, grid)
    out, nonfinite = run_kernel(parallel, X, plan, block)
    assert nonfinite == 0
    np.testing.assert_array_equal(out, reference_of(X, plan))


@variant
@given(C=st.integers(1, 40), width=st.integers(1, 70), n=rows, seed=seeds, block=block_rows)
def test_kernel_sums_the_codes_tables_exactly(parallel, C, width, n, seed, block):
    """One layer with inv_scale 1 and shift 0: the output is the integer sum of the tables
    at the trees' codes, ``Σ_c luts[c, code[n, c], m]`` (up to 255·C, exact in uint16)."""
    rng = np.random.default_rng(seed)
    X = x_matrix(rng, n, 30, grid=True)
    dims = rng.integers(0, 30, (C, 4)).astype(np.int64)
    thresholds = (rng.integers(-3, 4, (C, 16)) / 2).astype(np.float32)
    luts = rng.integers(0, 256, (C, 16, width), dtype=np.uint8)
    plan = dispatch_fused.build_plan([dims], [thresholds], [luts], [np.ones(width)],
                                     [np.zeros(width)], 30)
    out, _ = run_kernel(parallel, X, plan, block)
    codes = ref.ref_encode_tree(X, dims, thresholds)
    np.testing.assert_array_equal(out, ref.ref_accumulate(codes, luts).astype(np.float32))


@variant
@given(n=rows, seed=seeds, block=block_rows, bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_kernel_reports_nonfinite_in_the_first_layers_split_columns_only(parallel, n, seed,
                                                                         block, bad):
    rng = np.random.default_rng(seed)
    X = x_matrix(rng, n, 12, grid=False)
    plan = chain_plan(rng, X, [(2, 9), (3, 4)], grid=False)
    first = plan.split_dims[: plan.layout[0, fused.NCODEBOOKS]]
    row = rng.integers(n)
    unread = np.setdiff1d(np.arange(12), first)
    if unread.size:
        harmless = X.copy()
        harmless[row, rng.choice(unread)] = bad
        out, nonfinite = run_kernel(parallel, harmless, plan, block)
        assert nonfinite == 0
        np.testing.assert_array_equal(out, reference_of(X, plan))
    poisoned = X.copy()
    poisoned[row, first[rng.integers(first.shape[0]), rng.integers(4)]] = bad
    assert ref.ref_nonfinite(poisoned, first)
    assert run_kernel(parallel, poisoned, plan, block)[1] != 0


def test_parallel_kernel_gives_the_serial_bits_for_any_worker_count(threads):
    rng = np.random.default_rng(7)
    X = x_matrix(rng, 1000, 50, grid=False)
    plan = chain_plan(rng, X, [(16, 40), (8, 30), (4, 10)], grid=False)
    expected, _ = run_kernel(False, X, plan, 32)
    with threads(2):
        for workers in (1, 2, 3, 64):
            out = np.empty_like(expected)
            fused.fused_chain_parallel(X, plan.split_dims, plan.thresholds, plan.luts,
                                       plan.inv_scale, plan.shift, plan.layout, out, 32, workers)
            np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------------------
# FusedChain on real networks

def layer_by_layer(layers, X):
    """The unfused forward: ``relu(layer.predict(H))`` layer after layer."""
    H = X
    for layer in layers[:-1]:
        H = nn.relu(layer.predict(H))
    return layers[-1].predict(H)


def fit_layers(net, X, ncodebooks, **options):
    """A LutMatmul per layer of ``net``, each fitted on what it receives from the ones
    before it."""
    layers, H = [], X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)
        for dense in net.layers:
            layer = LutMatmul(ncodebooks, progress=False, **options).fit(H, dense.W,
                                                                        bias=dense.b)
            layers.append(layer)
            H = nn.relu(layer.predict(H))
    return layers


def assert_same_forward(actual, expected):
    """Both round acc·inv + shift with a fast-math multiply-add: a tight tolerance relative
    to the outputs' scale, and the same argmax on at least 99.9 % of the rows."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale)
    assert np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)) >= 0.999


@pytest.fixture(scope="module")
def digits():
    X_train, y_train, X_test, _ = datasets.load_digits()
    net = nn.MLP.train(X_train, y_train, [32, 24], epochs=3, progress=False)
    return X_train, X_test, net


@pytest.fixture(scope="module")
def digits_layers(digits):
    X_train, _, net = digits
    return fit_layers(net, X_train, 8)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_forward_matches_layer_by_layer_on_digits(digits, digits_layers, depth):
    _, X_test, _ = digits
    layers = digits_layers[-depth:]
    X = X_test if depth == 3 else nn.relu(layer_by_layer(digits_layers[:3 - depth], X_test))
    assert_same_forward(FusedChain(layers).forward(X), layer_by_layer(layers, X))


@pytest.mark.parametrize("ncodebooks, partition", [(4, "contiguous"), (16, "r2")])
def test_forward_matches_layer_by_layer_other_codebooks(digits, ncodebooks, partition):
    X_train, X_test, net = digits
    layers = fit_layers(net, X_train, ncodebooks, partition=partition)
    assert_same_forward(FusedChain(layers).forward(X_test), layer_by_layer(layers, X_test))


def test_forward_mnist_784_64_64_10(data_root, threads):
    """A 784-64-64-10 network trained for one epoch on MNIST, its layers fitted on 3000
    rows; the 10 000 test rows (the parallel kernel with 2 threads) and one row at a time."""
    if datasets.find_dataset_dir("mnist", data_root) is None:
        pytest.skip("MNIST not found under LUTENGINE_DATA")
    X_train, y_train = datasets.load_mnist("train", data_home=data_root)
    X_test, _ = datasets.load_mnist("test", data_home=data_root)
    net = nn.MLP.train(X_train[:5000], y_train[:5000], [64, 64], epochs=1, progress=False)
    layers = fit_layers(net, X_train[:3000], 16)
    chain = FusedChain(layers)
    assert sum(len(cols) for cols in chain.computed_columns_) < 128  # some columns skipped
    expected = layer_by_layer(layers, X_test)
    with threads(2):
        assert_same_forward(chain.forward(X_test), expected)
    with threads(1):
        assert_same_forward(chain.forward(X_test), expected)
    singles = np.concatenate([chain.forward(X_test[i:i + 1]) for i in range(50)])
    assert_same_forward(singles, expected[:50])


def test_forward_one_row_at_a_time(digits, digits_layers):
    _, X_test, _ = digits
    chain = FusedChain(digits_layers)
    expected = layer_by_layer(digits_layers, X_test)
    for i in (0, 1, 17, len(X_test) - 1):
        row = np.ascontiguousarray(X_test[i:i + 1])
        out = chain.forward(row)
        assert out.shape == (1, 10) and out.dtype == np.float32
        assert_same_forward(out, expected[i:i + 1])
        np.testing.assert_array_equal(out, chain.forward(X_test)[i:i + 1])


@pytest.mark.parametrize("n", [1, 6, 7, 8, 33, 100])
def test_rows_not_a_multiple_of_the_block(digits, digits_layers, monkeypatch, n):
    _, X_test, _ = digits
    monkeypatch.setattr(config, "FUSED_BLOCK_ROWS", 7)
    chain = FusedChain(digits_layers)
    assert_same_forward(chain.forward(X_test[:n]), layer_by_layer(digits_layers, X_test[:n]))


def test_serial_and_parallel_dispatch_give_the_same_bits(digits, digits_layers, monkeypatch,
                                                         threads):
    _, X_test, _ = digits
    chain = FusedChain(digits_layers)
    with threads(1):
        serial = chain.forward(X_test)
    monkeypatch.setattr(config, "PARALLEL_MIN_ROWS", 1)
    with threads(2):
        np.testing.assert_array_equal(chain.forward(X_test), serial)


def test_forward_accepts_what_predict_accepts(digits, digits_layers):
    """float64, F-ordered, integer and list inputs are converted like LutMatmul's input."""
    _, X_test, _ = digits
    chain = FusedChain(digits_layers)
    X = X_test[:20]
    expected = chain.forward(X)
    for converted in (X.astype(np.float64), np.asfortranarray(X), X.tolist(),
                      np.repeat(X, 2, axis=1)[:, ::2]):
        np.testing.assert_array_equal(chain.forward(converted), expected)
    whole = np.round(X * 16).astype(np.int64)
    np.testing.assert_array_equal(chain.forward(whole), chain.forward(whole.astype(np.float32)))


def test_plan_computes_only_the_columns_the_next_trees_read(digits_layers):
    chain = FusedChain(digits_layers)
    assert chain.n_features_in_ == 64 and chain.n_outputs_ == 10
    layout = chain._plan.layout
    for i, (cols, after) in enumerate(zip(chain.computed_columns_, digits_layers[1:])):
        np.testing.assert_array_equal(cols, np.unique(after.split_dims_))
        assert layout[i, fused.WIDTH] == len(cols) < digits_layers[i].n_outputs_
        assert layout[i, fused.PADDED_WIDTH] % 32 == 0
    assert layout[-1, fused.WIDTH] == 10
    assert repr(chain) == "FusedChain(64 → 32 → 24 → 10, ncodebooks=[8, 8, 8])"


# ---------------------------------------------------------------------------------------
# errors

def test_layers_must_be_fitted_quantised_lutmatmul_that_chain(digits, digits_layers):
    X_train, _, net = digits
    l0, l1, l2 = digits_layers
    with pytest.raises(ValueError, match="layers must not be empty"):
        FusedChain([])
    with pytest.raises(TypeError, match="layers must be a list"):
        FusedChain(l0)
    with pytest.raises(TypeError, match=r"layers\[1\] must be a fitted LutMatmul, got Dense"):
        FusedChain([l0, net.layers[1], l2])
    pq = PQMatmul(4, progress=False, random_state=0).fit(X_train[:200], net.layers[0].W)
    with pytest.raises(TypeError, match=r"layers\[0\] must be a fitted LutMatmul, got PQMatmul"):
        FusedChain([pq, l1])
    with pytest.raises(NotFittedError, match=r"layers\[1\] is not fitted"):
        FusedChain([l0, LutMatmul(4)])
    exact = LutMatmul(8, quantize=False, progress=False).fit(X_train, net.layers[0].W,
                                                           bias=net.layers[0].b)
    with pytest.raises(ValueError, match=r"layers\[0\] must have quantize=True"):
        FusedChain([exact, l1, l2])
    with pytest.raises(ValueError, match=r"layers\[0\] has 32 outputs, but layers\[1\] takes 64"):
        FusedChain([l0, l0])


def test_forward_rejects_bad_input(digits, digits_layers):
    _, X_test, _ = digits
    chain = FusedChain(digits_layers)
    read = int(digits_layers[0].split_dims_[0, 0])
    for bad in (np.nan, np.inf):
        X = X_test[:40].copy()
        X[5, read] = bad
        with pytest.raises(ValueError, match="X contains NaN or Inf"):
            chain.forward(X)
        with pytest.raises(ValueError, match="X contains NaN or Inf"):
            chain.forward(X[5:6])
    unread = np.setdiff1d(np.arange(64), digits_layers[0].split_dims_)
    if unread.size:  # as LutMatmul.predict: a column no tree reads cannot change the result
        X = X_test[:40].copy()
        X[5, unread[0]] = np.nan
        np.testing.assert_array_equal(chain.forward(X), chain.forward(X_test[:40]))
    with pytest.raises(ValueError, match="X has 63 columns, but the estimator was fitted with 64"):
        chain.forward(X_test[:, :63])
    with pytest.raises(ValueError, match="X has 63 columns"):
        chain.forward(np.ascontiguousarray(X_test[:1, :63]))
    with pytest.raises(ValueError, match="X must be 2-D"):
        chain.forward(X_test[0])
    with pytest.raises(ValueError, match="X must not be empty"):
        chain.forward(X_test[:0])
    with pytest.raises(TypeError, match="X must be a real numeric array"):
        chain.forward(X_test.astype(bool))
