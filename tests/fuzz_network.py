"""Fuzzing ``lutengine.load`` with damaged and crafted Network files, in a process whose
address space is limited (run in a subprocess by tests/test_fuzz.py, so that a crash or a
hang fails that test instead of killing it).

Saved Networks covering every op (chains and graphs; exact, LUT and PQ layers; int64 ids
next to float features; string and int classes) are mutated: truncated, bytes flipped, the
JSON header edited (op configs, windows, input shapes, node inputs, op names, layer
parameters, other fields), npy headers inside the zip rewritten (shapes blown up, dtypes
changed, text garbled), members added, dropped and renamed, arrays cast, reshaped, given
NaN / Inf or other values, members compressed (a small file declaring a large array). Each
file must either be rejected by ``load`` with a ``ValueError`` / ``TypeError``, or load
into a Network whose ``forward`` on random valid inputs agrees with the NumPy oracle
``reference.network_forward`` (else node by node: each node with ``reference.ref_op`` on
the values the Network gives its inputs, as float32 rounding amplified along a graph is no
defect). A MemoryError (also one wrapped in a rejection), any other exception, a
disagreement or a case running over :data:`CASE_SECONDS` is a failure; a signal or a hang
in native code kills the process (faulthandler). Prints a JSON summary of the outcomes by
mutation kind and exits nonzero on any failure.

    python tests/fuzz_network.py --examples 1000 --seed 0
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread per pool: a small baseline address space, on any host

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402, F401 (both fuzzers measure the same process: see ADDRESS_SPACE)
import numpy as np  # noqa: E402
import onnx  # noqa: E402, F401
import onnxruntime  # noqa: E402, F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402

import lutengine as le  # noqa: E402
from lutengine import nn, ops  # noqa: E402
from lutengine.importers import _random_inputs  # noqa: E402

# -- the harness (shared with fuzz_onnx.py) ---------------------------------------------------

GIB = 1 << 30
#: the address-space limit of the fuzz process: 2 GiB, or the baseline + 2 GiB where the
#: baseline (the process with lutengine, numba, onnx, onnxruntime and the models) is > 1 GiB
ADDRESS_SPACE = 2 * GIB
#: wall-clock limit of one case (load and check)
CASE_SECONDS = 60


class CaseTimeout(BaseException):
    """A case ran over CASE_SECONDS (a BaseException: no ``except Exception`` hides it)."""


def _timeout(signum, frame):
    raise CaseTimeout(f"the case ran over {CASE_SECONDS} s")


def address_space():
    """This process's virtual memory size in bytes (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def limit_address_space():
    """Set RLIMIT_AS (see :data:`ADDRESS_SPACE`); returns (baseline, limit) in bytes."""
    baseline = address_space()
    limit = ADDRESS_SPACE if baseline <= GIB else baseline + ADDRESS_SPACE
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return baseline, limit


def _raise_if_out_of_memory(exc):
    """Raise a MemoryError that a rejection wraps (onnxruntime's allocation errors too)."""
    cause = exc
    while cause is not None:
        if isinstance(cause, MemoryError) or "Failed to allocate" in str(cause) \
                or "bad_alloc" in str(cause):
            raise MemoryError(f"rejected for want of memory: {exc}") from exc
        cause = cause.__cause__ or cause.__context__


class Fuzz:
    """Runs cases and counts their outcomes by model and mutation kind."""

    def __init__(self):
        self.outcomes = collections.Counter()
        self.failures = []
        signal.signal(signal.SIGALRM, _timeout)
        faulthandler.enable()

    def case(self, model, kind, detail, load, check, kept):
        """``load()`` then ``check(obj)``: "rejected" when load raises ValueError /
        TypeError, "loaded" when check passes; anything else is recorded as a failure,
        with ``kept`` (where the case's file will be kept)."""
        signal.alarm(CASE_SECONDS)
        faulthandler.dump_traceback_later(2 * CASE_SECONDS, exit=True)  # hangs in native code
        stage = "load"
        try:
            try:
                obj = load()
            except (ValueError, TypeError) as exc:
                _raise_if_out_of_memory(exc)
                outcome = "rejected"
            else:
                stage = "check"
                check(obj)
                outcome = "loaded"
        except (Exception, CaseTimeout) as exc:
            outcome = "failed"
            self.failures.append({
                "model": model, "kind": kind, "detail": detail, "file": str(kept),
                "stage": stage, "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-3000:]})
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()
        self.outcomes[(model, kind, outcome)] += 1
        return outcome

    def summary(self, **extra):
        by_kind = collections.defaultdict(collections.Counter)
        by_model = collections.defaultdict(collections.Counter)
        for (model, kind, outcome), count in self.outcomes.items():
            by_kind[kind][outcome] += count
            by_model[model][outcome] += count
        totals = collections.Counter()
        for counts in by_kind.values():
            totals.update(counts)
        return {"cases": sum(totals.values()), "rejected": totals["rejected"],
                "loaded": totals["loaded"], "failed": totals["failed"], **extra,
                "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
                "by_model": {k: dict(sorted(v.items())) for k, v in sorted(by_model.items())},
                "failures": self.failures[:50]}


def agree(got, expected, what):
    """Raise AssertionError unless ``got`` is ``expected`` (same shape) within 1e-4 of the
    largest |expected|. An example whose expected output holds NaN or Inf (its weights
    overflow float32) has no defined value: it must overflow in ``got`` too."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: shape {got.shape}, the oracle {expected.shape}")
    overflows = ~np.isfinite(expected.reshape(len(expected), -1)).all(axis=1)
    if not np.array_equal(overflows, ~np.isfinite(got.reshape(len(got), -1)).all(axis=1)):
        raise AssertionError(f"{what}: the examples with NaN / Inf outputs differ from the "
                             "oracle's")
    got, expected = got[~overflows], expected[~overflows]
    error = float(np.max(np.abs(got - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    if not error <= 1e-4 * max(scale, 1e-30):
        raise AssertionError(f"{what} differs from the oracle by {error:.3g} (outputs up to "
                             f"{scale:.3g})")


# -- the models --------------------------------------------------------------------------------

def _relu(H):
    return np.maximum(H, 0)


def models():
    """Small Networks covering every op (each LUT layer fitted on the rows it multiplies):
    {name: Network}."""
    rng = np.random.default_rng(0)
    normal = rng.standard_normal
    out = {}

    X = normal((400, 12)).astype(np.float32)
    lut1 = le.LutMatmul(4, progress=False).fit(X, normal((12, 10)), bias=normal(10))
    H1 = _relu(lut1.predict(X))
    lut2 = le.LutMatmul(5, progress=False).fit(H1, normal((10, 8)))
    out["mlp"] = nn.Network(
        [nn.Linear(lut1), nn.ReLU(), nn.Linear(lut2), nn.ReLU(),
         nn.Linear(nn.Dense(normal((8, 3)), normal(3))), nn.Softmax()], (12,),
        classes=np.array(["cat", "dog", "eel"]))

    images = normal((200, 2, 6, 6)).astype(np.float32)
    W = normal((18, 4))
    conv = nn.Conv2d(nn.Dense(W, np.zeros(4)), 2, 3, 1, 1)
    lut = le.LutMatmul(3, progress=False).fit(conv.rows(images), W)
    out["cnn"] = nn.Network(
        [nn.Conv2d(lut, 2, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
         nn.Conv2d(nn.Dense(normal((36, 5)), normal(5)), 4, 3, 1, 1),
         nn.BatchNorm(rng.uniform(0.5, 2, 5), normal(5)), nn.GELU(), nn.AvgPool2d(3, 2, 1),
         nn.Flatten(), nn.Linear(nn.Dense(normal((20, 4)), normal(4))), nn.LogSoftmax()],
        (2, 6, 6), classes=np.array([10, 20, 30, 40]))

    table = normal((7, 4)).astype(np.float32)
    tokens = le.LutMatmul(2, progress=False).fit(table[rng.integers(0, 7, 300)],
                                                  normal((4, 5)))
    out["graph"] = nn.Network([
        ("emb", nn.Embedding(table), ["ids"]),
        ("tok", nn.Linear(tokens), ["emb"]),
        ("flat", nn.Flatten(), ["tok"]),
        ("cat", nn.Concat(0), ["x", "flat"]),
        ("h", nn.Linear(nn.Dense(normal((21, 8)) / 4, normal(8))), ["cat"]),
        ("g", nn.GELU("tanh"), ["h"]),
        ("res", nn.Add(), ["g", "h"]),
        ("gate", nn.Mul(), ["res", "g"]),
        ("scaled", nn.Mul(normal(8)), ["gate"]),
        ("shift", nn.Add(np.float32(0.5)), ["scaled"]),
        ("same", nn.Identity(), ["shift"]),
        ("both", nn.Concat(-1), ["same", "h"]),
        ("out", nn.Linear(nn.Dense(normal((16, 3)), normal(3))), ["both"]),
        ("prob", nn.Softmax(), ["out"]),
    ], {"x": (6,), "ids": nn.Input((3,), "int64")})

    small = normal((300, 2, 5, 5)).astype(np.float32)
    flat = np.concatenate([nn.MaxPool2d(3, 1, 1)(small), small], axis=1).reshape(300, -1)
    pq = le.PQMatmul(4, random_state=0, progress=False).fit(flat, normal((100, 6)) / 10)
    exact_tables = le.LutMatmul(3, quantize=False, progress=False).fit(
        _relu(pq.predict(flat)), normal((6, 4)))
    out["branches"] = nn.Network([
        ("mp", nn.MaxPool2d(3, 1, 1), ["x"]),
        ("ap", nn.AvgPool2d(3, 1, 1), ["x"]),
        ("cat", nn.Concat(0), ["mp", "x"]),
        ("flat", nn.Flatten(), ["cat"]),
        ("pq", nn.Linear(pq), ["flat"]),
        ("relu", nn.ReLU(), ["pq"]),
        ("lin", nn.Linear(exact_tables), ["relu"]),
        ("apr", nn.ReLU(), ["ap"]),
        ("bn", nn.BatchNorm(rng.uniform(0.5, 2, 2), normal(2)), ["apr"]),
        ("sm", nn.LogSoftmax(), ["bn"]),
    ], (2, 5, 5), output="lin")

    out["head"] = nn.Network(
        [nn.MaxPool2d(2), nn.GELU(), nn.AvgPool2d(3, 1, 1), nn.BatchNorm(normal(3), normal(3)),
         nn.ReLU(), nn.Softmax()], (3, 8, 8))
    return out


def saved(net):
    """(file bytes, {member: array}) of a saved Network."""
    buffer = io.BytesIO()
    net.save(buffer)
    raw = buffer.getvalue()
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        return raw, {key: f[key] for key in f.files}


def random_inputs(net, rng, batch=None):
    """Valid random inputs {name: array} of ``batch`` examples (default: a few, one for
    large values), as the import check draws them: floats N(0, 1), ids in [0, the smallest
    table that reads them)."""
    if batch is None:
        largest = max(int(np.prod(shape)) for shape in net.shapes.values())
        batch = int(rng.integers(1, 5)) if largest <= 1 << 16 else 1
    return _random_inputs(net, batch, rng)


#: how the loaded networks were found to agree with the oracle
CHECKED = collections.Counter()


def check_network(net, rng):
    """forward on random valid inputs against the oracle (end to end, else node by node);
    predict where there are classes."""
    if not isinstance(net, nn.Network):
        raise AssertionError(f"loaded a {type(net).__name__}, not a Network")
    X = random_inputs(net, rng)
    try:
        agree(net.forward(X), ref.network_forward(net, X), "forward")
        CHECKED["end to end"] += 1
    except AssertionError:
        check_nodes(net, X)
        CHECKED["node by node"] += 1
    if net.classes is not None:
        labels = net.predict(X)
        if labels.shape != (len(next(iter(X.values()))),):
            raise AssertionError(f"predict gives shape {labels.shape}")


def check_nodes(net, X):
    """Every node against its oracle (``reference.ref_op``) on the values the Network itself
    gives its inputs. Where the output differs from the oracle's end to end, this tells a
    float32 rounding amplified along the graph (say, large weights before a softmax) from a
    node that computes something else: raises AssertionError for such a node."""
    for name, op, sources in net.nodes:
        values = [X[s] if s in net.inputs else net.forward(X, output=s) for s in sources]
        expected = ref.ref_op(op, values).astype(np.float32)
        agree(net.forward(X, output=name), expected, f"node {name!r} ({op.name})")


# -- writing files -----------------------------------------------------------------------------

def npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(header, data):
    """An npy file (format 1.0 or 2.0) whose header dict is the text ``header``, then
    ``data``."""
    text = header.encode("latin1")
    pad = -(len(text) + 1 + 10) % 64
    text += b" " * pad + b"\n"
    if len(text) < 1 << 16:
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data
    pad = -(len(header) + 1 + 12) % 64
    text = header.encode("latin1") + b" " * pad + b"\n"
    return b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text + data


def zip_bytes(members, compression=zipfile.ZIP_STORED):
    """An archive of the (member name with its suffix, bytes) pairs ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a duplicate name, on purpose
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def members_of(arrays):
    return [(f"{name}.npy", npy_bytes(array)) for name, array in arrays.items()]


# -- mutations ---------------------------------------------------------------------------------

HUGE = (2**31, 2**40, 2**62, 2**63, 2**64 + 3, 10**30, -1, -2**63, 0)
BAD = (None, True, 1.5, float("nan"), float("inf"), "x", "", [], [1], [1, 2, 3],
       [[1, 2], [3, 4]], {"a": 1}, [2**70, 1], ["3", "3"], [1.0, 1.0])
DTYPES = ("float64", "float16", "int64", "int32", "uint8", "int8", "bool", "<U3", ">f4",
          "complex64", "uint64")
DESCRS = ("'<f8'", "'<f2'", "'|u1'", "'>f4'", "'<i8'", "'|O'", "'<c8'", "'|V4'",
          "'<M8[s]'", "'<U1'", "'|b1'", "[('a', '<f4')]", "('<f4', (2,))", "'x'", "5")


def _pick(rng, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _header(arrays):
    return json.loads(str(arrays["__header__"]))


def mutate(kind, raw, arrays, rng):
    """(detail, file bytes) of one damaged file."""
    names = [k for k in arrays if k != "__header__"]
    header = _header(arrays)
    params = header["params"]
    nodes = params["nodes"]
    i = int(rng.integers(len(nodes)))
    node = nodes[i]
    if kind == "truncate":
        cut = int(rng.integers(0, len(raw))) if rng.random() < 0.7 \
            else len(raw) - int(rng.integers(1, min(len(raw), 300)))
        return f"{cut} of {len(raw)} bytes", raw[:cut]
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        return "bytes flipped", bytes(data)
    if kind in ("op_config", "window", "input_shape", "node_inputs", "op_name",
                "layer_params", "header_fields"):
        detail = _edit_header(kind, header, params, nodes, i, node, rng)
        text = json.dumps(header).replace(f'"{DEEP}"', "[" * 100_000 + "]" * 100_000)
        return detail, file_of({**arrays, "__header__": np.array(text)})
    if kind in ("npy_shape", "npy_header"):
        name = _pick(rng, names + ["__header__"] * (kind == "npy_header"))
        array = arrays[name]
        shape, descr, fortran = array.shape, repr(array.dtype.str), False
        if kind == "npy_shape":
            shape = _pick(rng, [(2**62,), (2**31, 2**31), (2**40, *array.shape[1:]),
                                (10**30,), (2**28,), (2**33, 2), (len(array.reshape(-1)) + 1,),
                                (*array.shape, 2**20), (-1,), (-2, -3), (0,), ("a",), (1.5,)])
        else:
            descr, fortran = _pick(rng, DESCRS), rng.random() < 0.2
        text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
        if kind == "npy_header" and rng.random() < 0.4:  # garbled text
            garbled = list(text)
            for _ in range(int(rng.integers(1, 6))):
                garbled[int(rng.integers(len(garbled)))] = _pick(rng, "{}()[]'\":,\n\t L#\\0")
            text = "".join(garbled)
        data = npy_bytes(array)
        body = data[10 + int.from_bytes(data[8:10], "little"):]
        members = [(n, npy_with_header(text, body) if n == f"{name}.npy" else b)
                   for n, b in members_of(arrays)]
        return f"{name}: {text}", zip_bytes(members)
    if kind == "member_add":
        name = _pick(rng, ["extra", "0.scale", "99.layer.W", "classes", "0.layer.W",
                           "__header__", "x/../y", "0.constant"])
        value = _pick(rng, [np.zeros(3), np.array("x"), np.zeros((2, 2), np.float32)])
        suffix = _pick(rng, [".npy", ".npy", ".txt", ""])
        return f"{name}{suffix}", zip_bytes(members_of(arrays) + [(f"{name}{suffix}",
                                                                    npy_bytes(value))])
    if kind == "member_drop":
        name = _pick(rng, names + ["__header__"])
        return name, file_of({k: v for k, v in arrays.items() if k != name})
    if kind == "member_rename":
        name = _pick(rng, names + ["__header__"])
        new = _pick(rng, names + ["renamed", "__header__", f"{name}.npy", name.upper()])
        members = [(f"{new}.npy" if n == f"{name}.npy" else n, b)
                   for n, b in members_of(arrays)]
        return f"{name} -> {new}", zip_bytes(members)
    if kind == "compressed":
        if rng.random() < 0.5:
            return "every member deflated", zip_bytes(members_of(arrays), zipfile.ZIP_DEFLATED)
        name = _pick(rng, names)
        count = MAX_DECLARED_BYTES // 4 - 32
        return f"{name}: {count} float32 zeros deflated", bombed(arrays, name, count)
    name = _pick(rng, names)
    value = arrays[name]
    if kind == "dtype":
        new = _pick(rng, DTYPES)
        try:
            with np.errstate(all="ignore"):
                value = value.astype(new)
        except (ValueError, TypeError):
            new += " (not castable: unchanged)"
        return f"{name} as {new}", file_of({**arrays, name: value})
    if kind == "array_shape":
        change = _pick(rng, ["ravel", "cut", "grow", "transpose", "scalar", "empty", "axis"])
        if change == "ravel":
            value = value.ravel()
        elif change == "cut" and value.ndim and value.shape[0]:
            value = value[:-1]
        elif change == "grow" and value.ndim:
            value = np.concatenate([value, value[:1]])
        elif change == "transpose":
            value = np.asfortranarray(value.T)
        elif change == "empty":
            value = value[:0] if value.ndim else value.reshape(1)[:0]
        elif change == "axis":
            value = value[None]
        else:
            value = value.reshape(-1)[:1].reshape(()) if value.size else value
        return f"{name} {change}", file_of({**arrays, name: value})
    if kind in ("nonfinite", "value") and value.size and value.dtype.kind in "iufb":
        flat = value.copy().reshape(-1)
        at = slice(None) if rng.random() < 0.2 else int(rng.integers(flat.size))
        if kind == "nonfinite":
            new = _pick(rng, [np.nan, np.inf, -np.inf])
        else:
            past = flat.max() + 1 if value.dtype.kind in "iub" else 2 * flat.max()
            new = _pick(rng, [-1, 0, 1, 15, 16, 255, 256, 2**31, -2**40, flat.size, past, 1e30,
                              -1e30, 1e-45, -0.0, float(rng.integers(-300, 301))])
        try:
            with np.errstate(all="ignore"):
                flat[at] = new
        except (OverflowError, ValueError):
            return f"{name}: {new!r} does not fit {value.dtype} (unchanged)", raw
        return f"{name}[{at}] = {new!r}", file_of({**arrays, name: flat.reshape(value.shape)})
    if kind in ("nonfinite", "value") and value.dtype.kind == "U":
        new = _pick(rng, ["", "x" * 100, "\x00"])
        return f"{name} = {new!r}", file_of({**arrays, name: np.full_like(value, new)})
    return f"{name}: {kind} does not apply (unchanged)", raw


def file_of(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


#: the bytes a compressed member declares: the most one array may have
MAX_DECLARED_BYTES = le.config.MAX_ARRAY_BYTES


_ZEROS = {}


def _deflated_zeros(count):
    """(raw deflate stream, CRC-32, size) of an npy file of ``count`` float32 zeros: a few
    MB that inflate to ``4 * count`` bytes (each 16 MiB block compressed once)."""
    if count not in _ZEROS:
        header = npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, "
                                 f"'shape': ({count},), }}", b"")
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
        block = bytes(1 << 24)
        blocks, rest = divmod(4 * count, len(block))
        body = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        tail = compressor.compress(block[:rest]) + compressor.flush()
        crc = zlib.crc32(header)
        for _ in range(blocks):
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(block[:rest], crc)
        _ZEROS[count] = head + body * blocks + tail, crc, len(header) + 4 * count
    return _ZEROS[count]


def bombed(arrays, name, count):
    """The archive with member ``name`` replaced by ``count`` float32 zeros, deflated: a
    few MB declaring ``4 * count`` bytes (the deflate stream is stored, then the member's
    entries are marked deflated, with the CRC and size of what it inflates to)."""
    data, crc, size = _deflated_zeros(count)
    members = [(m, b) for m, b in members_of(arrays) if m != f"{name}.npy"]
    raw = bytearray(zip_bytes(members + [(f"{name}.npy", data)]))
    local = zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist()[-1].header_offset
    central = raw.rfind(b"PK\x01\x02")
    for at, (method, crc_at, size_at) in ((local, (8, 14, 22)), (central, (10, 16, 24))):
        struct.pack_into("<H", raw, at + method, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", raw, at + crc_at, crc)
        struct.pack_into("<I", raw, at + size_at, size)
    return bytes(raw)


def _edit_header(kind, header, params, nodes, i, node, rng):
    """Edit the parsed header in place; a description of the edit."""
    if kind == "op_config":
        keys = list(node["config"]) + ["unknown", "layer", "constant", "table"]
        key = _pick(rng, keys)
        if key in node["config"] and rng.random() < 0.15:
            del node["config"][key]
            return f"nodes[{i}] ({node['op']}) config without {key}"
        node["config"][key] = _pick(rng, HUGE + BAD)
        return f"nodes[{i}] ({node['op']}) config {key} = {node['config'][key]!r}"
    if kind == "window":
        windowed = [j for j, n in enumerate(nodes) if "kernel_size" in n["config"]]
        if not windowed:
            node["config"]["kernel_size"] = [1024, 1024]
            return f"nodes[{i}] ({node['op']}) given a kernel_size"
        i = _pick(rng, windowed)
        config = nodes[i]["config"]
        size = _pick(rng, [7, 64, 512, 1023, 1024, 1025, 2**31, 2**62, -1, 0])
        change = _pick(rng, ["kernel_size", "stride", "padding", "all"])
        if change == "all":
            config.update(kernel_size=[size, size], padding=[size // 2, size // 2],
                          stride=[_pick(rng, [1, 2, size])] * 2)
        else:
            config[change] = _pick(rng, [[size, size], [size, 1], [1, size], size])
        return f"nodes[{i}] ({nodes[i]['op']}) {change} {size}: {config}"
    if kind == "input_shape":
        spec = _pick(rng, params["inputs"])
        change = _pick(rng, ["blow_up", "dims", "dtype", "name", "spec"])
        if change == "blow_up":
            factor = _pick(rng, [10, 100, 1000, 2**20, 2**40])
            spec[1] = [spec[1][0]] + [d * factor for d in spec[1][1:]] if len(spec[1]) > 1 \
                else [spec[1][0] * factor]
        elif change == "dims":
            spec[1] = _pick(rng, [[], [0], [-1], [2**62], [2**31, 2**31], spec[1] + [1],
                                  spec[1][:-1], ["a"], [1.5], [True], None, "x", {"a": 1}])
        elif change == "dtype":
            spec[2] = _pick(rng, ["int64", "float32", "float16", "int32", 3, None, ["x"]])
        elif change == "name":
            spec[0] = _pick(rng, ["", 3, None, "other", params["inputs"][0][0]])
        else:
            params["inputs"][params["inputs"].index(spec)] = _pick(
                rng, [None, "x", [spec[0], spec[1]], spec + [1], {"a": 1}])
        return f"input {change}: {params['inputs']}"
    if kind == "node_inputs":
        later = [n["name"] for n in nodes[i + 1:]]
        node["inputs"] = _pick(rng, [[_pick(rng, later)] if later else ["later"], ["nowhere"],
                                     [node["name"]], [], [params["inputs"][0][0]] * 3, [1],
                                     params["inputs"][0][0], None, [[params["inputs"][0][0]]],
                                     [nodes[-1]["name"]], [n["name"] for n in nodes[:i]][-2:]])
        return f"nodes[{i}] ({node['op']}) inputs {node['inputs']!r}"
    if kind == "op_name":
        if rng.random() < 0.5 and len(nodes) > 1:
            j = int(rng.integers(len(nodes)))
            node["op"], nodes[j]["op"] = nodes[j]["op"], node["op"]
            return f"nodes[{i}] and nodes[{j}] ops swapped"
        node["op"] = _pick(rng, list(ops.BY_NAME) + ["Conv3d", "", 1, None, "Op",
                                                         "_Binary", "__init__"])
        return f"nodes[{i}] op = {node['op']!r}"
    if kind == "layer_params":
        layered = [j for j, n in enumerate(nodes) if n["layer"] is not None]
        i = _pick(rng, layered) if layered else i
        layer = nodes[i]["layer"]
        change = _pick(rng, ["class", "param", "drop", "add", "layer"])
        if layer is None or change == "layer":
            nodes[i]["layer"] = _pick(rng, [None, [], "x", {"class": "Dense"},
                                            {"class": "Dense", "params": {}}])
        elif change == "class":
            layer["class"] = _pick(rng, ["LutMatmul", "PQMatmul", "Dense", "MipsIndex",
                                         "Network", "TopKLinear", "x", None])
        elif change == "param" and layer["params"]:
            key = _pick(rng, layer["params"])
            layer["params"][key] = _pick(rng, HUGE + BAD + ("opq", "r2", "kl", "softmax"))
        elif change == "drop" and layer["params"]:
            del layer["params"][_pick(rng, layer["params"])]
        else:
            layer["params"]["extra"] = 1 if isinstance(layer.get("params"), dict) else None
        return f"nodes[{i}] layer {change}: {nodes[i]['layer']!r}"[:300]
    change = _pick(rng, ["output", "classes", "duplicate", "drop_node", "no_nodes", "name",
                         "arrays", "params", "class", "version", "deep", "huge"])
    if change == "output":
        params["output"] = _pick(rng, [params["inputs"][0][0], "nowhere", 3, None,
                                       nodes[0]["name"]])
    elif change == "classes":
        params["classes"] = _pick(rng, [not params["classes"], "yes", 1, None])
    elif change == "duplicate":
        nodes.insert(int(rng.integers(len(nodes) + 1)), dict(node))
    elif change == "drop_node":
        del nodes[i]
    elif change == "no_nodes":
        params["nodes"] = _pick(rng, [[], None, {}, "x"])
    elif change == "name":
        node["name"] = _pick(rng, ["", 3, None, params["inputs"][0][0], nodes[0]["name"]])
    elif change == "arrays":
        node["arrays"] = _pick(rng, [["constant"], ["scale"], ["table", "table"], "scale",
                                     None, [1]])
    elif change == "params":
        header["params"] = _pick(rng, [None, [], "x"])
    elif change == "class":
        header["class"] = _pick(rng, ["LutMatmul", "MipsIndex", "Dense", "x"])
    elif change == "version":
        header["format_version"] = _pick(rng, [1, 3, "2", None])
    elif change == "deep":
        node["config"] = DEEP
    else:
        params["padding"] = "x" * (le.config.MAX_HEADER_BYTES // 4 + 1)
    return f"header {change}"


#: a placeholder for 100 000 nested lists (json.dumps cannot write them)
DEEP = "@@deep@@"

KINDS = ("truncate", "flip", "op_config", "window", "input_shape", "node_inputs", "op_name",
         "layer_params", "header_fields", "npy_shape", "npy_header", "member_add",
         "member_drop", "member_rename", "compressed", "dtype", "array_shape", "nonfinite",
         "value")


def run(examples, seed):
    fuzz = Fuzz()
    nets = models()
    files = {name: saved(net) for name, net in nets.items()}
    warm = np.random.default_rng(seed)
    root = Path(tempfile.mkdtemp(prefix="fuzz_network_"))
    path = root / "case.npz"
    for raw, _ in files.values():  # compile the kernels before the limit and the clock
        path.write_bytes(raw)
        check_network(le.load(path), warm)
    CHECKED.clear()
    baseline, limit = limit_address_space()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for case in range(examples):
        model = list(files)[case % len(files)]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        raw, arrays = files[model]
        detail, content = mutate(kind, raw, arrays, rng)
        path.write_bytes(content)
        check_rng = np.random.default_rng([seed, case])
        kept = path.with_name(f"failed-{case}.npz")
        if fuzz.case(model, kind, detail, lambda: le.load(path),
                     lambda net: check_network(net, check_rng), kept) == "failed":
            path.rename(kept)
    if not fuzz.failures:
        shutil.rmtree(root)
    return fuzz.summary(seed=seed, seconds=round(time.perf_counter() - start, 1),
                        address_space_baseline=baseline, address_space_limit=limit,
                        checked=dict(CHECKED))


def main(run, doc, cases, argv=None):
    """The command line of a fuzzer: ``run(examples, seed)``'s JSON summary on stdout, exit
    status 1 on any failure."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help=f"{cases} in all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # onnxruntime prints its errors
        summary = run(args.examples, args.seed)
    print(json.dumps(summary, indent=1))
    sys.exit(1 if summary["failed"] else 0)


if __name__ == "__main__":
    main(run, __doc__, "mutated files")
