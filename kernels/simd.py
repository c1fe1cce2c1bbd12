"""AVX2 table-shuffle primitives for Numba kernels, and their plain-Numba twins.

The fast-scan instruction of MADDNESS (Blalock & Guttag 2021, §4.2) and of 4-bit PQ fast
scan (André et al. 2015; FAISS) is ``vpshufb``: 32 lookups into a 16-byte table per 128-bit
lane. Numba cannot emit it from Python, so the primitives below are
``numba.extending.intrinsic`` functions that emit LLVM IR (``llvm.x86.avx2.pshuf.b``) and are
called from ``@njit`` code only.

Vector values live in registers, as two Numba types:

- ``u8x32``: 32 unsigned bytes (one ymm register), element i = byte i;
- ``u16x16``: 16 unsigned 16-bit integers.

Element order is always memory order (no lane interleaving), so results are the same as
the plain loops. Arithmetic wraps modulo 2**8 / 2**16 unless said otherwise.

API (``arr`` is a C-contiguous NumPy array of the stated dtype, any number of dimensions,
and ``start`` an element offset into its flattened data; nothing is bounds-checked):

``load_u8x32(arr, start) -> u8x32``          uint8 ``arr.flat[start:start+32]``
``store_u8x32(arr, start, v)``               writes v to uint8 ``arr.flat[start:start+32]``
``load_table16(arr, start) -> u8x32``        the 16-entry table ``arr.flat[start:start+16]``
                                             duplicated into both halves (both lanes)
``zeros_u8x32() -> u8x32``, ``zeros_u16x16() -> u16x16``
``lookup_u8x32(table, idx) -> u8x32``        ``vpshufb``: element i is
                                             ``table[16 * (i // 16) + idx[i] % 16]``, or 0 if
                                             ``idx[i] >= 128``; with a ``load_table16`` table
                                             and indices < 16 that is ``table16[idx[i]]``
``low_nibbles(v) -> u8x32``                  ``v & 15``
``high_nibbles(v) -> u8x32``                 ``v >> 4``
``add_u8x32(a, b) -> u8x32``                 byte accumulation, wrapping
``add_words(acc, v) -> u16x16``              ``acc + word[i]`` with ``word[i] = v[2i] + 256 ·
                                             v[2i+1]`` (v read as 16 little-endian uint16)
``add_high_bytes(acc, v) -> u16x16``         ``acc + v[2i+1]``
``row_sums_low(words, odd) -> u16x16``       from the sums of ``add_words`` (words) and
``row_sums_high(words, odd) -> u16x16``      ``add_high_bytes`` (odd): the sums of bytes 0..15
                                             (low) or 16..31 (high) of the vectors added, in
                                             memory order: byte 2i is ``words[i] - 256 ·
                                             odd[i]``, byte 2i+1 is ``odd[i]``
``store_u16x16(arr, start, v)``              writes v to uint16 ``arr.flat[start:start+16]``
``store_dequantized(arr, start, v, inv_scale, shift)``
                                             writes ``float32(v) * inv_scale + shift`` for the
                                             16 elements of the u16x16 v to float32
                                             ``arr.flat[start:]`` (float32 scalars; the
                                             kernels' fast-math flags, so it rounds as the same
                                             expression in ordinary Numba code: one FMA)

Exact byte sums (FAISS's fast-scan accumulation): ``add_words`` and ``add_high_bytes`` of the
same vectors cost 2 additions and 1 shift per vector instead of zero-extending both halves;
the odd bytes' sums are the high-byte sums, and the even bytes' are the word sums minus 256
times them, exact modulo 2**16, so exact while every byte sum stays below 2**16 (at most
257 vectors of bytes ≤ 255).

Tree encoding, 8 rows per vector (``f32x8``: 8 float32; ``i32x8``: 8 int32):

``load_f32x8(arr, start) -> f32x8``          float32 ``arr.flat[start:start+8]``
``zeros_f32x8()``, ``zeros_i32x8()``
``tree_step(node, x, level_thresholds)``     ``2 * node + (x > level_thresholds[node])``, per
                                             element (``vpermps`` picks the threshold; node
                                             in 0..7; NaN compares false)
``add_times_zero(acc, x) -> f32x8``          ``acc + 0 * x``: NaN wherever x is NaN or ±Inf
``sum_f32x8(v) -> float32``                  the sum of the 8 elements
``narrow_u8x32(a, b, c, d) -> u8x32``        four i32x8 truncated to bytes, in order a..d
``pack_nibbles(low, high) -> u8x32``         ``low | (high << 4)`` (wrapping)

Plain twins: each primitive ``name`` has ``name_plain`` with the same arguments and result,
written as ordinary Numba loops over 1-D arrays (a ``u8x32`` is a uint8 array of 32, a
``u16x16`` a uint16 array of 16, an ``f32x8`` float32 and an ``i32x8`` int32 arrays of 8;
vector results are new arrays). They are the oracle of the
intrinsics and need no AVX2, but they allocate: use them for tests, not in hot loops.

CPU features: :func:`cpu_features` (the names LLVM reports for the compile target),
:func:`has_avx2`, :func:`has_avx512bw`. A kernel using the intrinsics must only be called
where :func:`has_avx2` is true: the dispatcher (``lutengine._dispatch``) decides, once.
Numba's on-disk cache is keyed by the CPU's features, so cached AVX2 code is never loaded
on a CPU without them. No 64-byte (AVX-512BW) variant is provided: this machine cannot test
one.
"""

import functools

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic, models, register_model

from ._flags import FASTMATH, INLINE


# -- CPU features ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def cpu_features():
    """The CPU features Numba compiles for (frozenset of LLVM names, e.g. ``"avx2"``):
    the host's, or ``NUMBA_CPU_FEATURES`` when set. A ``NUMBA_CPU_NAME`` other than
    ``host`` without explicit features counts as a baseline x86-64 (no AVX2)."""
    if numba_config.CPU_FEATURES:
        return frozenset(f[1:] for f in numba_config.CPU_FEATURES.split(",") if f.startswith("+"))
    if numba_config.CPU_NAME not in (None, "host"):
        return frozenset()
    return frozenset(name for name, on in llvm_binding.get_host_cpu_features().items() if on)


def has_avx2():
    """Whether the AVX2 intrinsics of this module can run here."""
    return "avx2" in cpu_features()


def has_avx512bw():
    """Whether AVX-512BW (64-byte ``vpshufb``) is there; nothing here uses it yet."""
    return "avx512bw" in cpu_features()


# -- vector types ------------------------------------------------------------------------

class VectorType(types.Type):
    """An LLVM vector of ``lanes`` ``bits``-bit elements of ``kind`` ("u": unsigned integers,
    "i": signed integers, "f": floats), held in a register."""

    def __init__(self, kind, bits, lanes):
        self.kind = kind
        self.bits = bits
        self.lanes = lanes
        super().__init__(name=f"{kind}{bits}x{lanes}")


u8x32 = VectorType("u", 8, 32)
u16x16 = VectorType("u", 16, 16)
i32x8 = VectorType("i", 32, 8)
f32x8 = VectorType("f", 32, 8)


def _llvm_vector(vector):
    """The LLVM type of a :class:`VectorType`."""
    element = ir.FloatType() if vector.kind == "f" else ir.IntType(vector.bits)
    return ir.VectorType(element, vector.lanes)


@register_model(VectorType)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _llvm_vector(fe_type))


_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_V8, _V16, _VI32, _VF32 = (_llvm_vector(v) for v in (u8x32, u16x16, i32x8, f32x8))


def _splat(vector_type, value):
    return ir.Constant(vector_type, [ir.Constant(vector_type.element, value)] * vector_type.count)


def _lanes(indices):
    return ir.Constant(ir.VectorType(_I32, len(indices)), [ir.Constant(_I32, i) for i in indices])


def _element_pointer(context, builder, array_type, array, start, vector_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [start]), ir.PointerType(vector_type))


def _is_array_of(arr, dtype):
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.layout == "C"


def _x86_call(builder, name, vector_type, args):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector_type, [vector_type] * len(args)), name)
    return builder.call(fn, args)


# -- intrinsics --------------------------------------------------------------------------

def _vector_load(name, dtype, vector):
    """The typer of intrinsic ``name(arr, start) -> vector``: ``vector.lanes`` elements of a
    C-contiguous ``dtype`` array from flat element ``start`` (unaligned)."""
    def typer(typingctx, arr, start):
        if not (_is_array_of(arr, dtype) and isinstance(start, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_element_pointer(context, builder, arr, args[0], args[1],
                                                 _llvm_vector(vector)), align=1)
        return vector(arr, types.intp), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


def _vector_store(name, dtype, vector):
    """The typer of intrinsic ``name(arr, start, v)``: writes ``v`` to ``vector.lanes`` elements of a
    C-contiguous ``dtype`` array from flat element ``start`` (unaligned)."""
    def typer(typingctx, arr, start, v):
        if not (_is_array_of(arr, dtype) and isinstance(start, types.Integer) and v == vector):
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], _element_pointer(context, builder, arr, args[0], args[1],
                                                    _llvm_vector(vector)), align=1)
            return context.get_dummy_value()
        return types.void(arr, types.intp, vector), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


load_u8x32 = intrinsic(_vector_load("load_u8x32", types.uint8, u8x32))
store_u8x32 = intrinsic(_vector_store("store_u8x32", types.uint8, u8x32))
store_u16x16 = intrinsic(_vector_store("store_u16x16", types.uint16, u16x16))
load_f32x8 = intrinsic(_vector_load("load_f32x8", types.float32, f32x8))


@intrinsic
def load_table16(typingctx, arr, start):
    if not (_is_array_of(arr, types.uint8) and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        half = builder.load(_element_pointer(context, builder, arr, args[0], args[1],
                                             ir.VectorType(_I8, 16)), align=1)
        return builder.shuffle_vector(half, half, _lanes(list(range(16)) * 2))
    return u8x32(arr, types.intp), codegen


@intrinsic
def zeros_u8x32(typingctx):
    return u8x32(), lambda context, builder, sig, args: _splat(_V8, 0)


@intrinsic
def zeros_u16x16(typingctx):
    return u16x16(), lambda context, builder, sig, args: _splat(_V16, 0)


def _binary_u8(emit):
    """An intrinsic (u8x32, u8x32) -> u8x32 whose IR ``emit(builder, a, b)`` builds."""
    @functools.wraps(emit)
    def typer(typingctx, a, b):
        if a == u8x32 and b == u8x32:
            return u8x32(u8x32, u8x32), lambda context, builder, sig, args: emit(builder, *args)
        return None
    return typer


@intrinsic
@_binary_u8
def lookup_u8x32(builder, table, idx):
    return _x86_call(builder, "llvm.x86.avx2.pshuf.b", _V8, [table, idx])


@intrinsic
@_binary_u8
def add_u8x32(builder, a, b):
    return builder.add(a, b)


@intrinsic
def low_nibbles(typingctx, v):
    if v != u8x32:
        return None
    return u8x32(u8x32), lambda context, builder, sig, args: builder.and_(args[0], _splat(_V8, 15))


@intrinsic
def high_nibbles(typingctx, v):
    if v != u8x32:
        return None
    return u8x32(u8x32), lambda context, builder, sig, args: builder.lshr(args[0], _splat(_V8, 4))


def _broadcast(builder, scalar, vector_type):
    """``scalar`` (of the vector's element type) in every element."""
    lane = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                  ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane, lane, _lanes([0] * vector_type.count))


def _word_sum(name, high_bytes):
    """The typer of intrinsic ``name(acc, v) -> u16x16``: acc plus the 16 little-endian
    words of v (``high_bytes``: their high bytes only), wrapping."""
    def typer(typingctx, acc, v):
        if not (acc == u16x16 and v == u8x32):
            return None

        def codegen(context, builder, sig, args):
            words = builder.bitcast(args[1], _V16)
            if high_bytes:
                words = builder.lshr(words, _splat(_V16, 8))
            return builder.add(args[0], words)
        return u16x16(u16x16, u8x32), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


add_words = intrinsic(_word_sum("add_words", False))
add_high_bytes = intrinsic(_word_sum("add_high_bytes", True))


def _row_sums(name, first):
    """The typer of intrinsic ``name(words, odd) -> u16x16``: the byte sums 2i (``words[i] -
    256 · odd[i]``) and 2i + 1 (``odd[i]``) for bytes first .. first + 15."""
    def typer(typingctx, words, odd):
        if not (words == u16x16 and odd == u16x16):
            return None

        def codegen(context, builder, sig, args):
            words, odd = args
            even = builder.sub(words, builder.shl(odd, _splat(_V16, 8)))
            return builder.shuffle_vector(even, odd, _lanes([first // 2 + i // 2 + 16 * (i % 2)
                                                             for i in range(16)]))
        return u16x16(u16x16, u16x16), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


row_sums_low = intrinsic(_row_sums("row_sums_low", 0))
row_sums_high = intrinsic(_row_sums("row_sums_high", 16))


@intrinsic
def store_dequantized(typingctx, arr, start, v, inv_scale, shift):
    if not (_is_array_of(arr, types.float32) and isinstance(start, types.Integer)
            and v == u16x16 and inv_scale == shift == types.float32):
        return None

    def codegen(context, builder, sig, args):
        vector = ir.VectorType(ir.FloatType(), 16)
        inv_scale, shift = (_broadcast(builder, x, vector) for x in args[3:])
        flags = tuple(FASTMATH)
        y = builder.fadd(builder.fmul(builder.uitofp(args[2], vector), inv_scale, flags=flags),
                         shift, flags=flags)
        builder.store(y, _element_pointer(context, builder, arr, args[0], args[1], vector),
                      align=1)
        return context.get_dummy_value()
    f32 = types.float32
    return types.void(arr, types.intp, v, f32, f32), codegen


# -- tree encoding (MADDNESS §4.1): 8 rows per f32x8 / i32x8 ---------------------------

@intrinsic
def zeros_f32x8(typingctx):
    return f32x8(), lambda context, builder, sig, args: ir.Constant(_VF32, [0.0] * 8)


@intrinsic
def zeros_i32x8(typingctx):
    return i32x8(), lambda context, builder, sig, args: _splat(_VI32, 0)


@intrinsic
def tree_step(typingctx, node, x, level_thresholds):
    if not (node == i32x8 and x == f32x8 and level_thresholds == f32x8):
        return None

    def codegen(context, builder, sig, args):
        node, x, table = args
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VF32, [_VF32, _VI32]), "llvm.x86.avx2.permps")
        threshold = builder.call(fn, [table, node])  # vpermps: table[node], per lane
        right = builder.zext(builder.fcmp_ordered(">", x, threshold), _VI32)
        return builder.add(builder.shl(node, _splat(_VI32, 1)), right)
    return i32x8(i32x8, f32x8, f32x8), codegen


@intrinsic
def add_times_zero(typingctx, acc, x):
    if not (acc == f32x8 and x == f32x8):
        return None

    def codegen(context, builder, sig, args):  # no fast-math flags: 0 · x must stay NaN for
        zero = ir.Constant(_VF32, [0.0] * 8)  # x = NaN or ±Inf
        return builder.fadd(args[0], builder.fmul(args[1], zero))
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def sum_f32x8(typingctx, v):
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        total = builder.extract_element(args[0], ir.Constant(_I32, 0))
        for i in range(1, 8):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(_I32, i)))
        return total
    return types.float32(f32x8), codegen


@intrinsic
def narrow_u8x32(typingctx, a, b, c, d):
    if not a == b == c == d == i32x8:
        return None

    def codegen(context, builder, sig, args):
        ab = builder.shuffle_vector(args[0], args[1], _lanes(range(16)))
        cd = builder.shuffle_vector(args[2], args[3], _lanes(range(16)))
        return builder.trunc(builder.shuffle_vector(ab, cd, _lanes(range(32))), _V8)
    return u8x32(i32x8, i32x8, i32x8, i32x8), codegen


@intrinsic
@_binary_u8
def pack_nibbles(builder, low, high):
    return builder.or_(low, builder.shl(high, _splat(_V8, 4)))


# -- plain twins (the oracle; no AVX2 needed) --------------------------------------------

@njit(**INLINE)
def load_u8x32_plain(arr, start):
    return arr.reshape(arr.size)[start:start + 32].copy()


@njit(**INLINE)
def store_u8x32_plain(arr, start, v):
    arr.reshape(arr.size)[start:start + 32] = v


@njit(**INLINE)
def load_table16_plain(arr, start):
    out = np.empty(32, np.uint8)
    flat = arr.reshape(arr.size)
    out[:16] = flat[start:start + 16]
    out[16:] = flat[start:start + 16]
    return out


@njit(**INLINE)
def zeros_u8x32_plain():
    return np.zeros(32, np.uint8)


@njit(**INLINE)
def zeros_u16x16_plain():
    return np.zeros(16, np.uint16)


@njit(**INLINE)
def lookup_u8x32_plain(table, idx):
    out = np.zeros(32, np.uint8)
    for i in range(32):
        if idx[i] < 128:
            out[i] = table[16 * (i // 16) + idx[i] % 16]
    return out


@njit(**INLINE)
def low_nibbles_plain(v):
    return v & np.uint8(15)


@njit(**INLINE)
def high_nibbles_plain(v):
    return v >> np.uint8(4)


@njit(**INLINE)
def add_u8x32_plain(a, b):
    return a + b


@njit(**INLINE)
def add_words_plain(acc, v):
    return acc + (v[0::2].astype(np.uint16) | (v[1::2].astype(np.uint16) << np.uint16(8)))


@njit(**INLINE)
def add_high_bytes_plain(acc, v):
    return acc + v[1::2].astype(np.uint16)


@njit(**INLINE)
def _row_sums_plain(words, odd, first):
    lanes = first // 2
    out = np.empty(16, np.uint16)
    out[0::2] = words[lanes:lanes + 8] - (odd[lanes:lanes + 8] << np.uint16(8))
    out[1::2] = odd[lanes:lanes + 8]
    return out


@njit(**INLINE)
def row_sums_low_plain(words, odd):
    return _row_sums_plain(words, odd, 0)


@njit(**INLINE)
def row_sums_high_plain(words, odd):
    return _row_sums_plain(words, odd, 16)


@njit(**INLINE)
def store_u16x16_plain(arr, start, v):
    arr.reshape(arr.size)[start:start + 16] = v


@njit(**INLINE)
def store_dequantized_plain(arr, start, v, inv_scale, shift):
    flat = arr.reshape(arr.size)
    for i in range(v.shape[0]):
        flat[start + i] = np.float32(v[i]) * inv_scale + shift


@njit(**INLINE)
def load_f32x8_plain(arr, start):
    return arr.reshape(arr.size)[start:start + 8].copy()


@njit(**INLINE)
def zeros_f32x8_plain():
    return np.zeros(8, np.float32)


@njit(**INLINE)
def zeros_i32x8_plain():
    return np.zeros(8, np.int32)


@njit(**INLINE)
def tree_step_plain(node, x, level_thresholds):
    out = np.empty(8, np.int32)
    for i in range(8):
        out[i] = 2 * node[i] + np.int32(x[i] > level_thresholds[node[i] & 7])
    return out


@njit(**INLINE)
def add_times_zero_plain(acc, x):
    return acc + np.float32(0.0) * x


@njit(**INLINE)
def sum_f32x8_plain(v):
    total = v[0]
    for i in range(1, 8):
        total += v[i]
    return total


@njit(**INLINE)
def narrow_u8x32_plain(a, b, c, d):
    out = np.empty(32, np.uint8)
    for k, part in enumerate((a, b, c, d)):
        for i in range(8):
            out[8 * k + i] = np.uint8(part[i] & 255)
    return out


@njit(**INLINE)
def pack_nibbles_plain(low, high):
    return low | (high << np.uint8(4))
