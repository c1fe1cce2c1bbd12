"""Saving and loading fitted objects as plain ``.npz`` files (no pickle).

A file holds a JSON header (class name, format version, constructor parameters) and one
array per fitted attribute. Classes opt in with :func:`savable`, name their parameters in
``_param_names`` and their fitted attributes in ``_state_attrs``, and check a loaded state
in ``_check_state()``. Loading sets parameters and arrays on a new instance without
re-running ``__init__`` (so nothing is rebuilt), and trusts nothing in the file: whatever
a kernel will index is checked before any kernel sees it, and every defect is reported as
a ``ValueError`` that names the file and what is wrong.
"""

import json
import zipfile
import zlib

import numpy as np

#: 2: per-output table scales and offsets (``lut_scale_`` (M,), ``lut_offsets_`` (C, M))
FORMAT_VERSION = 2
_CLASSES = {}
#: what reading a damaged archive or array header can raise
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                MemoryError, UnicodeDecodeError)


def savable(cls):
    """Class decorator: register ``cls`` so :func:`load` can rebuild it."""
    _CLASSES[cls.__name__] = cls
    return cls


def save(obj, path):
    """Write ``obj``'s parameters and fitted arrays to ``path``."""
    header = {"class": type(obj).__name__, "format_version": FORMAT_VERSION,
              "params": obj.get_params()}
    arrays = {name: np.asarray(getattr(obj, name)) for name in obj._state_attrs}
    np.savez(path, __header__=np.array(json.dumps(header)), **arrays)


def load(path):
    """Read an object written by :func:`save` (``allow_pickle=False``); raise
    ``ValueError`` for any file that is not one, or whose contents are inconsistent."""
    data = _read_arrays(path)
    cls, params = _read_header(data.pop("__header__", None), path)
    names = set(cls._state_attrs)
    if set(data) != names:
        raise ValueError(f"path {str(path)!r}: a {cls.__name__} file holds the arrays "
                         f"{sorted(names)}; missing {sorted(names - set(data))}, "
                         f"unexpected {sorted(set(data) - names)}")
    obj = cls.__new__(cls)
    vars(obj).update(params)
    for name in cls._state_attrs:
        value = data[name]
        setattr(obj, name, value[()] if value.ndim == 0 else value)
    try:
        obj._check_state()
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"path {str(path)!r} holds an invalid {cls.__name__}: {exc}") from exc
    return obj


def _read_arrays(path):
    try:
        with open(path, "rb") as stream:
            archive = np.load(stream, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array (.npy), not a lutengine .npz archive")
            with archive:
                return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except _READ_ERRORS as exc:
        raise ValueError(f"path {str(path)!r} is not a readable lutengine .npz file: {exc}") from exc


def _read_header(header, path):
    """The registered class and its parameters (a dict naming exactly its parameters)."""
    try:
        if header is None or header.ndim != 0 or header.dtype.kind != "U":
            raise ValueError("no JSON header")
        header = json.loads(str(header))
        cls = _CLASSES[header["class"]]
        version, params = header["format_version"], header["params"]
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"path {str(path)!r} is not a lutengine model file (no valid header)") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"path {str(path)!r} has format version {version!r}, this lutengine "
                         f"reads version {FORMAT_VERSION}: fit and save the model again")
    if not isinstance(params, dict) or set(params) != set(cls._param_names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"path {str(path)!r}: the parameters of a {cls.__name__} are "
                         f"{sorted(cls._param_names)}, the file has {got}")
    return cls, params
