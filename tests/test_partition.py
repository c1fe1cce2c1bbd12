"""Subspace partitions (contiguous, OPQ, r²), checked against independent NumPy computations."""

import itertools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lutengine import datasets, partition


def _expected_bounds(D, C):
    """Contiguous widths written out: ⌊D/C⌋ each, one more for the first D mod C."""
    widths = [D // C + (1 if c < D % C else 0) for c in range(C)]
    return np.array([0] + list(itertools.accumulate(widths)))


def _subspace_of(cols, bounds):
    """``sub[j]``: the codebook owning original column ``j``."""
    sub = np.full(len(cols), -1)
    for c in range(len(bounds) - 1):
        sub[cols[bounds[c]:bounds[c + 1]]] = c
    return sub


def _shuffled_blocks(rng, n_blocks, width, n_rows, kind):
    """Columns in blocks of ``width`` mutually dependent columns, independent across blocks,
    then shuffled: returns ``(X, block)`` with ``block[j]`` the block of column ``j``."""
    parts = []
    for _ in range(n_blocks):
        if kind == "factor":  # one latent factor per block plus a little noise
            part = rng.normal(size=(n_rows, 1)) * rng.uniform(1, 3, size=width)
        else:  # 16 well separated clusters per block
            part = 3 * rng.normal(size=(16, width))[rng.integers(16, size=n_rows)]
        parts.append(part + 0.3 * rng.normal(size=(n_rows, width)))
    perm = rng.permutation(n_blocks * width)
    X = np.concatenate(parts, axis=1)[:, perm].astype(np.float32)
    return X, (np.arange(n_blocks * width) // width)[perm]


def _pair_recovery(cols, bounds, block):
    """Fraction of same-block column pairs that share a subspace."""
    sub = _subspace_of(cols, bounds)
    same = block[:, None] == block[None, :]
    np.fill_diagonal(same, False)
    return (same & (sub[:, None] == sub[None, :])).sum() / same.sum()


@given(D=st.integers(1, 24), C_frac=st.floats(0, 1), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["contiguous", "opq", "r2"]))
@example(D=10, C_frac=0.0, seed=0, kind="r2")      # C = 1
@example(D=10, C_frac=1.0, seed=0, kind="opq")     # C = D
@example(D=11, C_frac=0.3, seed=0, kind="opq")     # D not divisible by C
@example(D=1, C_frac=1.0, seed=0, kind="r2")
def test_partition_is_a_permutation_with_contiguous_bounds(D, C_frac, seed, kind):
    C = 1 + round(C_frac * (D - 1))
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(24, D)).astype(np.float32)
    if kind == "opq":
        cols, bounds = partition.opq(A, C, random_state=seed, n_iter=2)
    else:
        cols, bounds = partition.learn(kind, A, C)
    assert cols.dtype == np.int64 and bounds.dtype == np.int64
    np.testing.assert_array_equal(np.sort(cols), np.arange(D))
    np.testing.assert_array_equal(bounds, _expected_bounds(D, C))


def test_learn_dispatches_and_rejects_unknown_kinds():
    A = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    for got, want in [(partition.learn("contiguous", A, 5), partition.contiguous(12, 5)),
                      (partition.learn("r2", A, 5), partition.r2(A, 5)),
                      (partition.learn("opq", A, 5, random_state=1),
                       partition.opq(A, 5, random_state=1))]:
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="partition.*contiguous.*opq.*r2"):
        partition.learn("pca", A, 5)


@pytest.mark.parametrize("seed", range(3))
def test_r2_puts_each_correlated_block_in_one_subspace(seed):
    X, block = _shuffled_blocks(np.random.default_rng(seed), 4, 6, 500, "factor")
    cols, bounds = partition.r2(X, 4)
    sub = _subspace_of(cols, bounds)
    for b in range(4):
        assert len(set(sub[block == b])) == 1, (b, sub[block == b])
    np.testing.assert_array_equal(partition.r2(X, 4)[0], cols)  # deterministic


def test_r2_handles_constant_columns():
    rng = np.random.default_rng(0)
    X, block = _shuffled_blocks(rng, 3, 4, 400, "factor")
    X = np.concatenate([X, np.zeros((400, 2), np.float32), np.full((400, 2), 0.5, np.float32)],
                       axis=1)
    sq = partition._squared_correlation(X)
    assert np.isfinite(sq).all()
    np.testing.assert_array_equal(np.diag(sq), 1.0)
    live = np.arange(12)
    np.testing.assert_allclose(sq[np.ix_(live, live)],
                               np.corrcoef(X[:, live].astype(np.float64), rowvar=False) ** 2,
                               atol=1e-5)
    off_diagonal = ~np.eye(16, dtype=bool)
    assert (sq[12:][off_diagonal[12:]] == 0).all() and (sq[:, 12:][off_diagonal[:, 12:]] == 0).all()
    cols, _ = partition.r2(X, 4)
    np.testing.assert_array_equal(np.sort(cols), np.arange(16))
    position = np.argsort(cols)  # where each column lands in the order
    for b in range(3):  # a block stays one run; the constant columns may sit anywhere
        assert np.ptp(position[:12][block == b]) == 3, position


def test_opq_groups_shuffled_blocks_better_than_contiguous():
    """Each block holds 16 clusters, so grouping a block into one subspace is what PQ wants;
    the shuffle leaves the contiguous partition at chance level."""
    for seed in range(3):
        X, block = _shuffled_blocks(np.random.default_rng(seed), 4, 8, 2000, "clusters")
        opq = _pair_recovery(*partition.opq(X, 4, random_state=seed), block)
        naive = _pair_recovery(*partition.contiguous(32, 4), block)
        assert opq > naive, (seed, opq, naive)


def test_opq_is_reproducible_for_a_fixed_random_state():
    X, _ = _shuffled_blocks(np.random.default_rng(5), 4, 4, 600, "clusters")
    first = partition.opq(X, 4, random_state=7, max_rows=300)
    np.testing.assert_array_equal(first[0], partition.opq(X, 4, random_state=7, max_rows=300)[0])
    R1 = partition._opq_rotation(X, 4, 7, 8, 300)
    np.testing.assert_array_equal(R1, partition._opq_rotation(X, 4, 7, 8, 300))
    # a different subsample gives a different rotation
    assert not np.array_equal(R1, partition._opq_rotation(X, 4, 8, 8, 300))


def _brute_force_best(R):
    D = len(R)
    return max(itertools.permutations(range(D)),
               key=lambda p: sum(abs(R[p[dim], dim]) for dim in range(D)))


@pytest.mark.parametrize("seed", range(4))
def test_matching_maximises_the_absolute_weight(seed):
    rng = np.random.default_rng(seed)
    R, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert tuple(partition._nearest_permutation(R)) == _brute_force_best(R)
    flips = rng.choice([-1.0, 1.0], size=5)  # sign flips of columns change nothing
    np.testing.assert_array_equal(partition._nearest_permutation(R * flips),
                                  partition._nearest_permutation(R))


def test_opq_uses_the_best_matching_of_its_rotation():
    X, _ = _shuffled_blocks(np.random.default_rng(2), 1, 5, 300, "clusters")
    R = partition._opq_rotation(X, 2, 3, 8, 4096)
    np.testing.assert_allclose(R.T @ R, np.eye(5), atol=1e-5)
    assert tuple(partition.opq(X, 2, random_state=3)[0]) == _brute_force_best(R)


def test_r2_on_mnist_raises_within_subspace_correlation(data_root):
    """Real pixels: r² clustering gathers more correlated pixels per subspace than the
    row-major contiguous split, by the mean within-subspace r² from np.corrcoef."""
    A = datasets.load_mnist("train", data_home=data_root)[0][:5000]
    live = np.flatnonzero(np.ptp(A, axis=0) > 0)
    sq = np.zeros((784, 784))
    sq[np.ix_(live, live)] = np.corrcoef(A[:, live].astype(np.float64), rowvar=False) ** 2

    def within(cols, bounds):
        means = []
        for c in range(len(bounds) - 1):
            block = sq[np.ix_(cols[bounds[c]:bounds[c + 1]], cols[bounds[c]:bounds[c + 1]])]
            means.append(block[~np.eye(len(block), dtype=bool)].mean())
        return np.mean(means)

    cols, bounds = partition.r2(A, 16)
    np.testing.assert_array_equal(np.sort(cols), np.arange(784))
    assert within(cols, bounds) > within(*partition.contiguous(784, 16))
