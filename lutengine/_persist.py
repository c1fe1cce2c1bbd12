"""Saving and loading fitted objects as plain ``.npz`` files (no pickle).

A file holds a JSON header (class name, format version, constructor parameters) and one
array per fitted attribute. Classes opt in with :func:`savable` and list their fitted
attributes in ``_state_attrs``; loading sets parameters and arrays on a new instance
without re-running ``__init__`` (so nothing is rebuilt).
"""

import json
import zipfile

import numpy as np

FORMAT_VERSION = 1
_CLASSES = {}


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
    """Read an object written by ``save`` (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {key: f[key] for key in f.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"path {str(path)!r} is not a readable lutengine .npz file: {exc}") from exc
    try:
        header = json.loads(str(data.pop("__header__")))
        cls = _CLASSES[header["class"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"path {str(path)!r} is not a lutengine model file (no valid header)") from exc
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path {str(path)!r} has format version {header.get('format_version')}, "
                         f"this lutengine reads version {FORMAT_VERSION}")
    missing = set(cls._state_attrs) - set(data)
    if missing:
        raise ValueError(f"path {str(path)!r} lacks the fitted arrays {sorted(missing)}")
    obj = cls.__new__(cls)
    vars(obj).update(header["params"])
    for name in cls._state_attrs:
        value = data[name]
        setattr(obj, name, value[()] if value.ndim == 0 else value)
    return obj
