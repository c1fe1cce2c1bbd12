"""Saving and loading fitted objects and networks as plain ``.npz`` files (no pickle).

A file holds a JSON header (class name, format version, parameters) and one array per
fitted attribute. Classes opt in with :func:`savable`, name their parameters in
``_param_names`` and their fitted attributes in ``_state_attrs``, and check a loaded state
in ``_check_state()``; a class with a richer file (a Network) gives ``_to_file`` (header
parameters and arrays), ``_file_members`` (the array names a header implies) and
``_from_file``.

Loading trusts nothing in the file, and allocates nothing the file merely declares:

1. the archive's member names are read from its directory (uncompressed ``.npy`` members
   only, as ``np.savez`` writes them: what is read is never more than the file holds), and
   the header alone (at most ``config.MAX_HEADER_BYTES``) is read first;
2. the member names the header implies are compared with the archive's before any other
   member is read;
3. each member's npy header (dtype, shape) is read and checked against
   ``config.MAX_ARRAY_BYTES`` (and all members together against ``config.MAX_FILE_BYTES``)
   and against the size the archive declares, before its data is read; the data is read in
   bounded chunks, so a member shorter than declared costs no more than it holds;
4. the object is rebuilt without re-running ``__init__`` (nothing is refitted), and checked
   whole (dtypes, shapes, index ranges) before any kernel sees it.

Every defect is a ``ValueError`` naming the file and what is wrong.
"""

import json
import math
import tokenize
import zipfile
import zlib

import numpy as np

from ._validation import check_limit

#: 2: per-output table scales and offsets (``lut_scale_`` (M,), ``lut_offsets_`` (C, M))
FORMAT_VERSION = 2
_CLASSES = {}
_HEADER = "__header__"
#: array dtypes a file may hold: booleans, integers, floats, strings (never objects)
_KINDS = "biufU"
#: bytes read at a time from a member
_CHUNK = 1 << 24
#: what reading a damaged archive or array header can raise (numpy parses a damaged npy
#: header with ``ast`` and ``tokenize``: SyntaxError, TokenError)
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                UnicodeDecodeError, NotImplementedError, RuntimeError, TypeError, SyntaxError,
                tokenize.TokenError)


def savable(cls):
    """Class decorator: register ``cls`` so :func:`load` can rebuild it."""
    _CLASSES[cls.__name__] = cls
    return cls


def savable_class(name):
    """The registered class named ``name``, or None."""
    return _CLASSES.get(name) if isinstance(name, str) else None


def save(obj, path):
    """Write ``obj``'s parameters and fitted arrays to ``path``."""
    cls = next(c for c in type(obj).__mro__ if _CLASSES.get(c.__name__) is c)
    if hasattr(obj, "_to_file"):
        params, arrays = obj._to_file()
    else:
        params = obj.get_params()
        arrays = {name: np.asarray(getattr(obj, name)) for name in obj._state_attrs}
    for name, array in arrays.items():
        if array.dtype.kind not in _KINDS or array.dtype.fields is not None:
            raise TypeError(f"{name} must hold numbers or strings to be saved, got dtype "
                            f"{array.dtype}")
    header = {"class": cls.__name__, "format_version": FORMAT_VERSION, "params": params}
    np.savez(path, **{_HEADER: np.array(json.dumps(header))}, **arrays)


def restore(cls, params, state):
    """A ``cls`` with parameters ``params`` and fitted arrays ``state`` (each name of
    ``_state_attrs``), checked by its ``_check_state``."""
    if not isinstance(params, dict) or set(params) != set(cls._param_names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"the parameters of a {cls.__name__} are {sorted(cls._param_names)}, "
                         f"got {got}")
    obj = cls.__new__(cls)
    vars(obj).update(params)
    for name in cls._state_attrs:
        value = state[name]
        setattr(obj, name, value[()] if value.ndim == 0 else value)
    obj._check_state()
    return obj


def load(path):
    """Read an object written by :func:`save` (any registered class: estimators, indexes,
    networks); raise ``ValueError`` for any file that is not one, or whose contents are
    inconsistent or exceed the limits of :mod:`lutengine.config`."""
    where = f"path {str(path)!r}"
    with _Archive(path, where) as archive:
        cls, params = _read_header(archive.header(), where)
        try:
            members = cls._file_members(params) if hasattr(cls, "_file_members") \
                else set(cls._state_attrs)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{where} holds an invalid {cls.__name__}: {exc}") from exc
        arrays = archive.read(members, cls.__name__)
    try:
        if hasattr(cls, "_from_file"):
            return cls._from_file(params, arrays)
        return restore(cls, params, arrays)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"{where} holds an invalid {cls.__name__}: {exc}") from exc


class _Archive:
    """The members of an .npz file, read one by one within the limits (see the module
    docstring)."""

    def __init__(self, path, where):
        self.where = where
        try:
            with open(path, "rb") as stream:
                if stream.read(6) == b"\x93NUMPY":
                    raise ValueError("it holds a single array (.npy), not a lutengine .npz "
                                     "archive")
            self.zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from exc
        infos = self.zip.infolist()
        check_limit(len(infos), "MAX_FILE_MEMBERS", f"the number of arrays in {where}")
        self.infos = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.filename[:-4] in self.infos:
                self.zip.close()
                raise ValueError(f"{where} is not a lutengine .npz file: member "
                                 f"{info.filename!r} is not a distinct .npy array")
            if info.compress_type != zipfile.ZIP_STORED:  # a few bytes could declare GiBs
                self.zip.close()
                raise ValueError(f"{where} is not a lutengine .npz file: member "
                                 f"{info.filename!r} is compressed (lutengine writes them "
                                 "uncompressed)")
            self.infos[info.filename[:-4]] = info
        self.total = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _unreadable(self, exc):
        return ValueError(f"{self.where} is not a readable lutengine .npz file: {exc}")

    def header(self):
        """The JSON header (a dict), read within MAX_HEADER_BYTES."""
        if _HEADER not in self.infos:
            raise ValueError(f"{self.where} is not a lutengine model file (no valid header)")
        text = self._array(_HEADER, "MAX_HEADER_BYTES")
        try:
            if text.ndim != 0 or text.dtype.kind != "U":
                raise ValueError("the header is not a string")
            return json.loads(str(text))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{self.where} is not a lutengine model file (no valid header)") \
                from exc

    def read(self, names, what):
        """The arrays ``names`` (exactly the archive's members besides the header)."""
        present = set(self.infos) - {_HEADER}
        if present != names:
            raise ValueError(f"{self.where}: a {what} file holds the arrays {sorted(names)}; "
                             f"missing {sorted(names - present)}, unexpected "
                             f"{sorted(present - names)}")
        return {name: self._array(name, "MAX_ARRAY_BYTES") for name in sorted(names)}

    def _array(self, name, limit):
        """One member: its npy header checked, then exactly the bytes it declares."""
        info = self.infos[name]
        try:
            with self.zip.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"npy format version {version} is not supported")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(stream, max_header_size=10000)
                if dtype.kind not in _KINDS or dtype.fields is not None \
                        or dtype.subdtype is not None:
                    raise ValueError(f"array {name!r} has dtype {dtype}, not numbers or "
                                     "strings")
                count = math.prod(shape)
                nbytes = count * dtype.itemsize
                check_limit(max(count, nbytes), limit, f"the size in bytes of array {name!r}")
                self.total += nbytes
                check_limit(self.total, "MAX_FILE_BYTES", f"the bytes of the arrays in "
                                                          f"{self.where}")
                if info.file_size != stream.tell() + nbytes:
                    raise ValueError(f"array {name!r} declares {nbytes} bytes of data, the "
                                     f"archive {info.file_size - stream.tell()}")
                data = bytearray()
                while len(data) < nbytes:
                    chunk = stream.read(min(_CHUNK, nbytes - len(data)))
                    if not chunk:
                        raise ValueError(f"array {name!r} is truncated")
                    data += chunk
        except _READ_ERRORS as exc:
            raise self._unreadable(exc) from exc
        if count == 0:
            return np.empty(shape, dtype)
        array = np.frombuffer(data, dtype=dtype, count=count)
        return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_header(header, where):
    """The registered class and its parameters."""
    try:
        cls = _CLASSES[header["class"]]
        version, params = header["format_version"], header["params"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where} is not a lutengine model file (no valid header)") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"{where} has format version {version!r}, this lutengine reads "
                         f"version {FORMAT_VERSION}: fit and save the model again")
    if not hasattr(cls, "_file_members") and (not isinstance(params, dict)
                                               or set(params) != set(cls._param_names)):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{where}: the parameters of a {cls.__name__} are "
                         f"{sorted(cls._param_names)}, the file has {got}")
    return cls, params
