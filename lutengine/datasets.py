"""Checksum-verified loaders for MNIST and Fashion-MNIST IDX files, their download, the
Fashion-MNIST subset shipped in the package (``lutengine/data/``, MIT licence, © Zalando SE),
and CIFAR-10 stored as JPEG files in one ``.npz`` (:func:`load_cifar10`, in ``ROOT/cifar10/``).

Files are searched for in ``data_home``, then ``$LUTENGINE_DATA``, then
``~/.cache/lutengine``; dataset ``mnist`` lives in ``ROOT/mnist/`` and
``fashion`` in ``ROOT/fashion-mnist/``. Each file may be gzipped or raw and
spelled ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``.
"""

import functools
import gzip
import hashlib
import io
import os
import urllib.request
from pathlib import Path

import numpy as np

ENV_VAR = "LUTENGINE_DATA"

_SUBDIRS = {"mnist": "mnist", "fashion": "fashion-mnist"}
_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FILES = _SPLITS["train"] + _SPLITS["test"]

# SHA-256 of the *uncompressed* IDX bytes (gz containers differ between mirrors).
# Computed from the reference copies, whose uncompressed MD5s equal the published ones.
_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

#: the Fashion-MNIST subset shipped with the package (:func:`load_fashion_subset`)
FASHION_SUBSET_PATH = Path(__file__).with_name("data") / "fashion_mnist_subset.npz"
_FASHION_SUBSET_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_FASHION_SUBSET_SHA256 = "5cd3a2803798d312a10420733bff2f43961036f7dcf168bc22273a3f39bfc082"

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Verified arrays keyed by (path, mtime_ns, size, expected digest).
_CACHE = {}


def _read_bytes(path):
    """Return the uncompressed bytes of ``path`` (gzip detected by suffix or magic)."""
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def _parse_idx(data, path):
    """Decode IDX ``data`` read from ``path`` into a native-endian array."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4].hex()!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise ValueError(f"{path}: {kind} IDX data ({len(data)} bytes, expected {expected})")
    flat = np.frombuffer(data, dtype, offset=header)
    return flat.astype(dtype.newbyteorder("=")).reshape(shape)


def read_idx(path):
    """Read an IDX file (raw or gzipped) without checksum verification.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    numpy.ndarray
        Array with the shape and dtype stored in the IDX header.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _verified_idx(path, digest):
    """Read ``path``, check its uncompressed SHA-256 against ``digest``, cache it."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, digest)
    if key not in _CACHE:
        data = _read_bytes(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ValueError(f"{path}: SHA-256 mismatch (expected {digest}, got {actual})")
        _CACHE[key] = _parse_idx(data, path)
    return _CACHE[key]


def _roots(data_home):
    """Return the candidate data roots in search order."""
    roots = [Path(data_home)] if data_home is not None else []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.append(Path.home() / ".cache" / "lutengine")
    return roots


def _locate(folder, stem):
    """Return the existing file for ``stem`` in ``folder`` under any accepted spelling."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def _check_name(name):
    if name not in _SUBDIRS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {sorted(_SUBDIRS)}")


def find_dataset_dir(name, data_home=None):
    """Return the first ``ROOT/<subdir>`` folder holding all four files of ``name`` (for
    ``"cifar10"``: the folder ``ROOT/cifar10/`` holding :data:`CIFAR10_FILE`).

    Parameters
    ----------
    name : {"mnist", "fashion", "cifar10"}
    data_home : str or Path, optional
        Searched before ``$LUTENGINE_DATA`` and ``~/.cache/lutengine``.

    Returns
    -------
    Path or None
    """
    if name == "cifar10":  # one .npz of JPEG files, not IDX (see load_cifar10)
        folders = (root / CIFAR10_SUBDIR for root in _roots(data_home))
        return next((folder for folder in folders if (folder / CIFAR10_FILE).is_file()), None)
    _check_name(name)
    for root in _roots(data_home):
        folder = root / _SUBDIRS[name]
        if all(_locate(folder, stem) for stem in _FILES):
            return folder
    return None


def _writable_folder(name, data_home):
    """The first data root whose ``<subdir>`` can be created and written."""
    for root in _roots(data_home):
        folder = root / _SUBDIRS[name]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise PermissionError(f"no writable data root among {[str(r) for r in _roots(data_home)]}")


def _fetch(url, dest, progress):
    """Stream ``url`` into ``dest`` (through ``dest.part``), with a tqdm bar in bytes."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                  unit_divisor=1024, desc=dest.name, disable=not progress) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))
    part.replace(dest)


def download_dataset(name, data_home=None, progress=True):
    """Fetch the missing files of ``name`` from its public mirrors into the first writable
    data root (``data_home``, ``$LUTENGINE_DATA``, ``~/.cache/lutengine``), then check them.

    Parameters
    ----------
    name : {"mnist", "fashion"}
    data_home : str or Path, optional
    progress : bool
        Show a progress bar (bytes) per file.

    Returns
    -------
    Path
        The folder holding the four verified files.

    Raises
    ------
    ConnectionError
        When no mirror could be reached for a file (offline, blocked, moved).
    """
    _check_name(name)
    folder = _writable_folder(name, data_home)
    for stem in _FILES:
        if _locate(folder, stem):
            continue
        errors = []
        for mirror in _MIRRORS[name]:
            try:
                _fetch(mirror + stem + ".gz", folder / (stem + ".gz"), progress)
                break
            except OSError as exc:
                errors.append(f"  {mirror}{stem}.gz: {exc}")
        else:
            raise ConnectionError(
                f"could not download {name} ({stem}.gz) from any mirror; are you offline?\n"
                + "\n".join(errors)
                + f"\nCopy the four files into {folder} by hand, or set ${ENV_VAR}.")
    for stem in _FILES:
        _verified_idx(_locate(folder, stem), _SHA256[name][stem])
    return folder


def _missing_message(name, data_home):
    if name == "cifar10":
        searched = "\n".join(f"  {root / CIFAR10_SUBDIR}" for root in _roots(data_home))
        return (f"cifar10 dataset not found. Searched, in order:\n{searched}\n"
                f"Put {CIFAR10_FILE} (CIFAR-10's 60 000 images as JPEG files in one .npz) "
                f"into one of those folders.\nSet ${ENV_VAR} to a root containing "
                f"'{CIFAR10_SUBDIR}/' or pass data_home=.")
    searched = "\n".join(f"  {root / _SUBDIRS[name]}" for root in _roots(data_home))
    files = "\n".join(f"  {stem}.gz (or uncompressed {stem})" for stem in _FILES)
    return (
        f"{name} dataset not found. Searched, in order:\n{searched}\n"
        f"Put these four files into one of those folders:\n{files}\n"
        f"Set ${ENV_VAR} to a root containing '{_SUBDIRS[name]}/', pass data_home=, "
        "or call with download=True."
    )


def load_dataset(name, split="train", data_home=None, download=False):
    """Load a verified split of MNIST or Fashion-MNIST.

    Parameters
    ----------
    name : {"mnist", "fashion"}
    split : {"train", "test"}
    data_home : str or Path, optional
        Root searched before ``$LUTENGINE_DATA`` and ``~/.cache/lutengine``.
    download : bool
        Download missing files from public mirrors into the first writable root.

    Returns
    -------
    X : ndarray of float32, shape (n, 784), values in [0, 1]
    y : ndarray of int64, shape (n,)
    """
    _check_name(name)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got split={split!r}")
    folder = find_dataset_dir(name, data_home)
    if folder is None and download:
        folder = download_dataset(name, data_home)
    if folder is None:
        raise FileNotFoundError(_missing_message(name, data_home))
    img_stem, lbl_stem = _SPLITS[split]
    images = _verified_idx(_locate(folder, img_stem), _SHA256[name][img_stem])
    labels = _verified_idx(_locate(folder, lbl_stem), _SHA256[name][lbl_stem])
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    X = images.reshape(len(images), -1).astype(np.float32)
    X /= 255
    return X, labels.astype(np.int64)


def load_mnist(split="train", data_home=None, download=False):
    """Load MNIST; see :func:`load_dataset`."""
    return load_dataset("mnist", split, data_home, download)


def load_fashion_mnist(split="train", data_home=None, download=False):
    """Load Fashion-MNIST; see :func:`load_dataset`."""
    return load_dataset("fashion", split, data_home, download)


#: CIFAR-10: the folder under a data root, the file :func:`load_cifar10` reads (every train
#: and test image as a JPEG of quality 75, in the original CIFAR order) and its SHA-256, the
#: file of the first 4 000 training images' exact pixels (tests), and the class names
CIFAR10_SUBDIR = "cifar10"
CIFAR10_FILE = "cifar10_yoongikim_jpeg_q75.npz"
_CIFAR10_SHA256 = "5f15e78705d161132a48e3d05c892d152462131f6967335ea12277f8bb97bfe8"
CIFAR10_LOSSLESS_FILE = "cifar10_train_first4000_lossless.npz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
_CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


@functools.lru_cache(maxsize=4)
def _cifar10_pixels(path, mtime_ns, size, split):
    """One split of the CIFAR-10 file at ``path``, checked against its SHA-256 and decoded
    once per (file version, split): read-only uint8 images (n, 3, 32, 32) and labels (n,)."""
    from PIL import Image

    path = Path(path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != _CIFAR10_SHA256:
        raise ValueError(f"{path}: SHA-256 mismatch (expected {_CIFAR10_SHA256}, got {actual})")
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        jpegs = stored[f"{split}_jpeg_bytes"]
        offsets = stored[f"{split}_jpeg_offsets"]
        labels = stored[f"{split}_labels"].astype(np.int64)
    n = _CIFAR10_SIZES[split]
    if offsets.shape != (n + 1,) or labels.shape != (n,):
        raise ValueError(f"{path}: expected {n} {split} images, got {len(offsets) - 1} offsets "
                         f"and {len(labels)} labels")
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        with Image.open(io.BytesIO(jpegs[offsets[i]:offsets[i + 1]].tobytes())) as image:
            images[i] = np.asarray(image.convert("RGB"))
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_cifar10(split="train", data_home=None):
    """Load CIFAR-10 (50 000 train / 10 000 test 32x32 colour images, 10 classes in
    :data:`CIFAR10_CLASSES`, original CIFAR order) from ``ROOT/cifar10/`` (roots as for
    MNIST: ``data_home``, ``$LUTENGINE_DATA``, ``~/.cache/lutengine``).

    The images are stored as JPEG files of quality 75, so they are close to, not equal to,
    the official pixels (median PSNR about 30 dB). Decoding a split takes seconds; the decoded
    uint8 arrays are kept in memory for later calls (nothing is written to disk).

    Parameters
    ----------
    split : {"train", "test"}
    data_home : str or Path, optional
        Root searched before ``$LUTENGINE_DATA`` and ``~/.cache/lutengine``.

    Returns
    -------
    X : ndarray of float32, shape (n, 3, 32, 32) (NCHW, RGB), values in [0, 1]
    y : ndarray of int64, shape (n,)
    """
    if split not in _CIFAR10_SIZES:
        raise ValueError(f"split must be one of {sorted(_CIFAR10_SIZES)}, got split={split!r}")
    folder = find_dataset_dir("cifar10", data_home)
    if folder is None:
        raise FileNotFoundError(_missing_message("cifar10", data_home))
    path = (folder / CIFAR10_FILE).resolve()
    stat = path.stat()
    images, labels = _cifar10_pixels(str(path), stat.st_mtime_ns, stat.st_size, split)
    X = images.astype(np.float32)
    X /= 255
    return X, labels.copy()


def load_digits():
    """scikit-learn's 8x8 digits (tiny runs and tests): pixels scaled to [0, 1] (divided
    by 16), the first 80% of rows for training and the last 20% for testing.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarrays (float32 / int64)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    X, y = sklearn_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    y = y.astype(np.int64)
    n_train = int(len(X) * 0.8)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _arrays_digest(arrays):
    """SHA-256 over each array's dtype, shape and bytes, in order (independent of the zip
    container, whose timestamps change whenever the file is rewritten)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_fashion_subset(path=FASHION_SUBSET_PATH, data_home=None, per_class=(600, 100), seed=0):
    """Regenerate the embedded subset from the full Fashion-MNIST: for each class, a fixed
    random choice of ``per_class`` (train, test) images, kept in their original order, as
    uint8 in ``np.savez_compressed``. Returns the SHA-256 of the arrays
    (:data:`_FASHION_SUBSET_SHA256` is that of the shipped file)::

        python -c "from lutengine import datasets; datasets.write_fashion_subset(data_home=DIR)"
    """
    folder = find_dataset_dir("fashion", data_home)
    if folder is None:
        raise FileNotFoundError(_missing_message("fashion", data_home))
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "test"), per_class):
        img_stem, lbl_stem = _SPLITS[split]
        images = _verified_idx(_locate(folder, img_stem), _SHA256["fashion"][img_stem])
        labels = _verified_idx(_locate(folder, lbl_stem), _SHA256["fashion"][lbl_stem])
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), count, replace=False)
                                       for k in range(10)]))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images[keep], labels[keep]
    np.savez_compressed(path, **arrays)
    return _arrays_digest(arrays[key] for key in _FASHION_SUBSET_ARRAYS)


def load_fashion_subset():
    """The Fashion-MNIST subset shipped in the package (6 000 training and 1 000 test images,
    balanced classes; MIT licence, © Zalando SE), checked against its SHA-256.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarrays (float32 in [0, 1], shape (n, 784) / int64)
    """
    with np.load(FASHION_SUBSET_PATH) as stored:
        arrays = [stored[key] for key in _FASHION_SUBSET_ARRAYS]
    actual = _arrays_digest(arrays)
    if actual != _FASHION_SUBSET_SHA256:
        raise ValueError(f"{FASHION_SUBSET_PATH}: SHA-256 mismatch (expected "
                         f"{_FASHION_SUBSET_SHA256}, got {actual}); reinstall lutengine")
    x_train, y_train, x_test, y_test = arrays
    return (x_train.reshape(len(x_train), -1) / np.float32(255), y_train.astype(np.int64),
            x_test.reshape(len(x_test), -1) / np.float32(255), y_test.astype(np.int64))


def load_default(data_home=None, download=False):
    """MNIST when found (or downloaded, with ``download=True``), else the embedded
    Fashion-MNIST subset (:func:`load_fashion_subset`).

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarrays (float32 / int64)
    name : {"mnist", "fashion-subset"}
    """
    if download or find_dataset_dir("mnist", data_home) is not None:
        return (*load_mnist("train", data_home, download), *load_mnist("test", data_home), "mnist")
    return (*load_fashion_subset(), "fashion-subset")
