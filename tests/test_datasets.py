import gzip
import hashlib
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from lutengine import datasets

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _real_root(name):
    env = os.environ.get("LUTENGINE_DATA")
    if not env:
        pytest.skip("LUTENGINE_DATA is not set")
    if datasets.find_dataset_dir(name, env) is None:
        pytest.skip(f"{name} IDX files not found under LUTENGINE_DATA={env}")
    return Path(env)


def _idx_bytes(arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def _write_synthetic(root, name="mnist", seed=0, gz=True, dotted=False, n=(12, 5)):
    """Write four small IDX files under root/<subdir>; return {stem: uncompressed bytes}."""
    rng = np.random.default_rng(seed)
    folder = root / datasets._SUBDIRS[name]
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for split, count in zip(("train", "test"), n):
        img_stem, lbl_stem = datasets._SPLITS[split]
        contents[img_stem] = _idx_bytes(rng.integers(0, 256, (count, 28, 28)))
        contents[lbl_stem] = _idx_bytes(rng.integers(0, 10, count))
    for stem, data in contents.items():
        fname = stem.replace("-idx", ".idx") if dotted else stem
        if gz:
            (folder / (fname + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / fname).write_bytes(data)
    return contents


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env var, empty HOME, and a digest table that accepts the given synthetic files."""
    monkeypatch.delenv("LUTENGINE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    table = {"mnist": {}, "fashion": {}}
    monkeypatch.setattr(datasets, "_SHA256", table)

    def trust(name, contents):
        table[name].update({k: hashlib.sha256(v).hexdigest() for k, v in contents.items()})

    return trust


def test_real_mnist():
    root = _real_root("mnist")
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        X, y = datasets.load_mnist(split, data_home=root)
        assert X.shape == (sum(counts), 784) and X.dtype == np.float32
        assert y.shape == (sum(counts),) and y.dtype == np.int64
        assert X.min() == 0.0 and X.max() == 1.0
        assert np.bincount(y).tolist() == counts
    assert abs(datasets.load_mnist("train")[0].mean() - 0.1307) < 1e-3


def test_real_mnist_cached_reload_is_fast():
    root = _real_root("mnist")
    datasets.load_mnist("train", data_home=root)
    start = time.perf_counter()
    X, _ = datasets.load_mnist("train", data_home=root)
    assert time.perf_counter() - start < 1.0
    X[:] = -1  # returned arrays are copies: the cache must stay intact
    assert datasets.load_mnist("train", data_home=root)[0].min() == 0.0


def test_real_fashion():
    root = _real_root("fashion")
    for split, per_class in (("train", 6000), ("test", 1000)):
        X, y = datasets.load_fashion_mnist(split, data_home=root)
        assert X.shape == (10 * per_class, 784) and X.dtype == np.float32
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert np.bincount(y).tolist() == [per_class] * 10


def test_real_load_default_returns_mnist():
    _real_root("mnist")
    X_train, y_train, X_test, y_test, name = datasets.load_default()
    assert name == "mnist"
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert len(y_train) == 60000 and len(y_test) == 10000


def test_read_idx_raw_and_gz(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    (tmp_path / "b.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    (tmp_path / "c").write_bytes(gzip.compress(_idx_bytes(arr)))  # gzip found by magic bytes
    for fname in ("a", "b.gz", "c"):
        out = datasets.read_idx(tmp_path / fname)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, arr)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "x").write_bytes(b"\0\0\x0c\x01" + struct.pack(">I", 3) + arr.tobytes())
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "x")), [1, -2, 70000])


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "bad magic"),
        (b"\0\0\x08\x03" + struct.pack(">I", 5), "truncated IDX header"),
        (_idx_bytes(np.zeros((4, 5)))[:-3], "truncated IDX data"),
        (_idx_bytes(np.zeros((4, 5))) + b"x", "oversized IDX data"),
    ],
)
def test_read_idx_malformed(tmp_path, data, match):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.ones((50, 50))))[:-20])
    with pytest.raises(ValueError, match="t.gz"):
        datasets.read_idx(path)


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (True, True), (False, True)])
def test_synthetic_load_all_spellings(tmp_path, isolated, gz, dotted):
    contents = _write_synthetic(tmp_path / "data", gz=gz, dotted=dotted)
    isolated("mnist", contents)
    X, y = datasets.load_mnist("train", data_home=tmp_path / "data")
    assert X.shape == (12, 784) and X.dtype == np.float32 and y.dtype == np.int64
    expected = np.frombuffer(contents["train-images-idx3-ubyte"], np.uint8, offset=16)
    np.testing.assert_allclose(X.ravel(), expected / 255, rtol=1e-6)
    assert datasets.load_mnist("test", data_home=str(tmp_path / "data"))[0].shape == (5, 784)


def test_data_home_takes_precedence_over_env(tmp_path, isolated, monkeypatch):
    isolated("fashion", _write_synthetic(tmp_path / "arg", "fashion", seed=1, n=(7, 3)))
    _write_synthetic(tmp_path / "env", "fashion", seed=2, gz=False, n=(9, 4))  # fails checksum
    monkeypatch.setenv("LUTENGINE_DATA", str(tmp_path / "env"))
    assert datasets.find_dataset_dir("fashion", tmp_path / "arg") == tmp_path / "arg" / "fashion-mnist"
    assert datasets.load_fashion_mnist(data_home=tmp_path / "arg")[0].shape == (7, 784)
    assert datasets.find_dataset_dir("fashion", tmp_path / "nowhere") == tmp_path / "env" / "fashion-mnist"
    with pytest.raises(ValueError, match=str(tmp_path / "env")):
        datasets.load_fashion_mnist()


def test_env_then_home_cache(tmp_path, isolated):
    cache = tmp_path / "home" / ".cache" / "lutengine"
    isolated("mnist", _write_synthetic(cache))
    assert datasets.find_dataset_dir("mnist") == cache / "mnist"
    assert datasets.load_dataset("mnist", "test")[1].shape == (5,)


def test_incomplete_folder_is_skipped(tmp_path, isolated):
    _write_synthetic(tmp_path / "a")
    (tmp_path / "a" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert datasets.find_dataset_dir("mnist", tmp_path / "a") is None


def test_checksum_mismatch_names_file_and_digests(tmp_path, isolated):
    contents = _write_synthetic(tmp_path)
    isolated("mnist", contents)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    corrupted = bytearray(contents["train-images-idx3-ubyte"])
    corrupted[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(corrupted)))
    expected = hashlib.sha256(contents["train-images-idx3-ubyte"]).hexdigest()
    actual = hashlib.sha256(bytes(corrupted)).hexdigest()
    with pytest.raises(ValueError) as info:
        datasets.load_mnist(data_home=tmp_path)
    message = str(info.value)
    assert str(path) in message and expected in message and actual in message


def test_real_digests_reject_synthetic_files(tmp_path, monkeypatch):
    monkeypatch.delenv("LUTENGINE_DATA", raising=False)
    _write_synthetic(tmp_path)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        datasets.load_mnist(data_home=tmp_path)


def test_truncated_file_in_dataset(tmp_path, isolated):
    contents = _write_synthetic(tmp_path, gz=False)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    truncated = contents["train-labels-idx1-ubyte"][:-2]
    path.write_bytes(truncated)
    isolated("mnist", {**contents, "train-labels-idx1-ubyte": truncated})
    with pytest.raises(ValueError, match="truncated") as info:
        datasets.load_mnist(data_home=tmp_path)
    assert str(path) in str(info.value)


def test_missing_files_message(tmp_path, isolated, monkeypatch):
    monkeypatch.setenv("LUTENGINE_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_fashion_mnist("test", data_home=tmp_path / "arg")
    message = str(info.value)
    for place in (tmp_path / "arg", tmp_path / "env", tmp_path / "home" / ".cache" / "lutengine"):
        assert str(place / "fashion-mnist") in message
    for stem in datasets._FILES:
        assert stem + ".gz" in message
    assert "LUTENGINE_DATA" in message and "download=True" in message


def test_bad_split_and_name(tmp_path):
    with pytest.raises(ValueError, match="split"):
        datasets.load_mnist("validation", data_home=tmp_path)
    with pytest.raises(ValueError, match="'fashion'.*'mnist'"):
        datasets.load_dataset("cifar10", data_home=tmp_path)
    with pytest.raises(ValueError, match="valid names"):
        datasets.find_dataset_dir("kmnist")


def test_load_digits():
    X_train, y_train, X_test, y_test = datasets.load_digits()
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert X_train.min() == 0.0 and X_train.max() == 1.0


def test_fashion_subset_checksum_shapes_balance():
    with np.load(datasets.FASHION_SUBSET_PATH) as stored:
        arrays = {key: stored[key] for key in stored.files}
    assert sorted(arrays) == ["x_test", "x_train", "y_test", "y_train"]
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert arrays[key].dtype == np.uint8
        header = f"{arrays[key].dtype.str}{arrays[key].shape}".encode()
        digest.update(header + arrays[key].tobytes())
    assert digest.hexdigest() == datasets._FASHION_SUBSET_SHA256
    assert arrays["x_train"].shape == (6000, 28, 28) and arrays["x_test"].shape == (1000, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [600] * 10
    assert np.bincount(arrays["y_test"]).tolist() == [100] * 10
    assert datasets.FASHION_SUBSET_PATH.stat().st_size < 4_000_000
    notice = (datasets.FASHION_SUBSET_PATH.parent / "FASHION_MNIST_LICENSE").read_text()
    assert "MIT License" in notice and "Zalando SE" in notice

    X_train, y_train, X_test, y_test = datasets.load_fashion_subset()
    assert X_train.shape == (6000, 784) and X_test.shape == (1000, 784)
    assert X_train.dtype == X_test.dtype == np.float32 and X_train.flags.c_contiguous
    assert y_train.dtype == y_test.dtype == np.int64
    np.testing.assert_array_equal(X_test, arrays["x_test"].reshape(1000, 784) / np.float32(255))
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_fashion_subset_checksum_mismatch(tmp_path, monkeypatch):
    with np.load(datasets.FASHION_SUBSET_PATH) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10
    path = tmp_path / "subset.npz"
    np.savez_compressed(path, **arrays)
    monkeypatch.setattr(datasets, "FASHION_SUBSET_PATH", path)
    with pytest.raises(ValueError, match="SHA-256 mismatch") as info:
        datasets.load_fashion_subset()
    assert str(path) in str(info.value)


def test_fashion_subset_regenerates_from_the_full_set(tmp_path):
    root = _real_root("fashion")
    digest = datasets.write_fashion_subset(tmp_path / "subset.npz", data_home=root)
    assert digest == datasets._FASHION_SUBSET_SHA256
    with np.load(tmp_path / "subset.npz") as fresh, \
            np.load(datasets.FASHION_SUBSET_PATH) as shipped:
        for key in shipped.files:
            np.testing.assert_array_equal(fresh[key], shipped[key])


def test_load_default_falls_back_to_fashion_subset(tmp_path, isolated):
    X_train, y_train, X_test, y_test, name = datasets.load_default(data_home=tmp_path)
    assert name == "fashion-subset"
    assert X_train.shape == (6000, 784) and X_test.shape == (1000, 784)
    np.testing.assert_array_equal(y_test, datasets.load_fashion_subset()[3])


def test_load_default_prefers_mnist(tmp_path, isolated):
    isolated("mnist", _write_synthetic(tmp_path))
    X_train, y_train, X_test, y_test, name = datasets.load_default(data_home=tmp_path)
    assert name == "mnist"
    assert X_train.shape == (12, 784) and X_test.shape == (5, 784)


def _mirror(tmp_path, isolated, name="mnist"):
    """A fake mirror folder of gzipped synthetic files, trusted; returns its file:// URL."""
    contents = _write_synthetic(tmp_path / "mirror", name)
    isolated(name, contents)
    return (tmp_path / "mirror" / datasets._SUBDIRS[name]).as_uri() + "/", contents


def test_download_from_file_url_with_progress(tmp_path, isolated, monkeypatch, capsys):
    url, contents = _mirror(tmp_path, isolated)
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setattr(datasets, "_MIRRORS", {"mnist": (dead, url)})
    folder = datasets.download_dataset("mnist", data_home=tmp_path / "home")
    assert folder == tmp_path / "home" / "mnist"
    for stem, data in contents.items():
        assert gzip.decompress((folder / (stem + ".gz")).read_bytes()) == data
    assert not list(folder.glob("*.part"))
    bars = capsys.readouterr().err
    assert "B/s" in bars
    for stem in datasets._FILES:  # one bar per file, counting every byte
        size = tqdm.format_sizeof((tmp_path / "mirror" / "mnist" / (stem + ".gz")).stat().st_size,
                                  divisor=1024)
        assert f"{stem}.gz: 100%" in bars and f"{size}/{size}" in bars
    X, y = datasets.load_mnist("train", data_home=tmp_path / "home")
    assert X.shape == (12, 784)


def test_download_skips_present_files_and_loads(tmp_path, isolated, monkeypatch):
    url, contents = _mirror(tmp_path, isolated)
    monkeypatch.setattr(datasets, "_MIRRORS", {"mnist": (url,)})
    home = tmp_path / "home" / "mnist"
    home.mkdir(parents=True)
    (home / "t10k-labels-idx1-ubyte").write_bytes(contents["t10k-labels-idx1-ubyte"])
    X, y = datasets.load_mnist("test", data_home=tmp_path / "home", download=True)
    assert X.shape == (5, 784)
    assert not (home / "t10k-labels-idx1-ubyte.gz").exists()


def test_load_default_download(tmp_path, isolated, monkeypatch):
    url, _ = _mirror(tmp_path, isolated)
    monkeypatch.setattr(datasets, "_MIRRORS", {"mnist": (url,)})
    assert datasets.load_default(tmp_path / "home", download=True)[-1] == "mnist"


def test_download_offline_is_a_clear_error(tmp_path, isolated, monkeypatch):
    dead = [(tmp_path / f"mirror{i}").as_uri() + "/" for i in range(2)]
    monkeypatch.setattr(datasets, "_MIRRORS", {"mnist": tuple(dead)})
    with pytest.raises(ConnectionError, match="could not download mnist") as info:
        datasets.download_dataset("mnist", data_home=tmp_path / "home", progress=False)
    message = str(info.value)
    assert "offline" in message and all(m in message for m in dead)
    assert str(tmp_path / "home" / "mnist") in message


# -- CIFAR-10 (JPEG files in one .npz, see datasets.load_cifar10) ------------------------------

def test_real_cifar10():
    root = _real_root("cifar10")
    for split, n in (("train", 50_000), ("test", 10_000)):
        X, y = datasets.load_cifar10(split, data_home=root)
        assert X.shape == (n, 3, 32, 32) and X.dtype == np.float32 and X.flags.c_contiguous
        assert y.shape == (n,) and y.dtype == np.int64
        assert X.min() == 0.0 and X.max() == 1.0
        assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10
    # decoded channel means of the train split (official: 0.4914, 0.4822, 0.4465)
    means = datasets.load_cifar10("train")[0].mean(axis=(0, 2, 3))
    assert np.allclose(means, [0.4914, 0.4822, 0.4465], atol=2e-3)


def test_real_cifar10_close_to_lossless_subset():
    """The JPEG images are in the original order: the first 4 000 are near their exact pixels."""
    root = _real_root("cifar10")
    lossless = root / datasets.CIFAR10_SUBDIR / datasets.CIFAR10_LOSSLESS_FILE
    if not lossless.is_file():
        pytest.skip(f"{lossless} not found")
    with np.load(lossless) as stored:
        exact = stored["images"].transpose(0, 3, 1, 2) / np.float32(255)
        labels = stored["labels"]
    X, y = datasets.load_cifar10("train", data_home=root)
    assert np.array_equal(y[:4000], labels)
    per_image = np.abs(X[:4000] - exact).mean(axis=(1, 2, 3))
    assert per_image.mean() < 0.04 and per_image.max() < 0.15
    # a shifted order would be far off
    assert np.abs(X[1:4001] - exact).mean() > 0.15


def test_real_cifar10_cached_reload_is_fast_and_independent():
    root = _real_root("cifar10")
    X, _ = datasets.load_cifar10("test", data_home=root)
    X[:] = 0  # the returned arrays are copies: the cache is untouched
    start = time.perf_counter()
    again, y = datasets.load_cifar10("test", data_home=root)
    assert time.perf_counter() - start < 1.0
    assert again.max() == 1.0
    y[:] = -1
    assert datasets.load_cifar10("test", data_home=root)[1].min() == 0


def test_cifar10_missing_message(tmp_path, isolated, monkeypatch):
    monkeypatch.setenv("LUTENGINE_DATA", str(tmp_path / "env"))
    assert datasets.find_dataset_dir("cifar10", tmp_path / "arg") is None
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_cifar10("test", data_home=tmp_path / "arg")
    message = str(info.value)
    for place in (tmp_path / "arg", tmp_path / "env", tmp_path / "home" / ".cache" / "lutengine"):
        assert str(place / "cifar10") in message
    assert datasets.CIFAR10_FILE in message and "LUTENGINE_DATA" in message


def test_cifar10_bad_split_and_checksum(tmp_path, isolated):
    with pytest.raises(ValueError, match="split"):
        datasets.load_cifar10("validation", data_home=tmp_path)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    np.savez(folder / datasets.CIFAR10_FILE, test_labels=np.zeros(3, np.uint8))
    assert datasets.find_dataset_dir("cifar10", tmp_path) == folder
    with pytest.raises(ValueError, match="SHA-256 mismatch") as info:
        datasets.load_cifar10("test", data_home=tmp_path)
    assert datasets.CIFAR10_FILE in str(info.value)
