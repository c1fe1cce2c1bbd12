"""Byte-shuffle intrinsics on ``u8x32`` / ``u16x16``: table lookups, nibbles, exact uint16
byte sums and the dequantising float32 store.

The fast-scan instruction of MADDNESS (Blalock & Guttag 2021, §4.4) and of 4-bit PQ fast
scan (André et al. 2015; FAISS) is ``vpshufb``: 32 lookups into a 16-byte table per 128-bit
lane. Arithmetic wraps modulo 2**8 / 2**16 unless said otherwise.

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
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._flags import FASTMATH
from .vector import (I8, V8, V16, binary_u8, broadcast, element_pointer, is_array_of, lanes,
                     splat, u8x32, u16x16, vector_load, vector_store, x86_call)

load_u8x32 = intrinsic(vector_load("load_u8x32", types.uint8, u8x32))
store_u8x32 = intrinsic(vector_store("store_u8x32", types.uint8, u8x32))
store_u16x16 = intrinsic(vector_store("store_u16x16", types.uint16, u16x16))


@intrinsic
def load_table16(typingctx, arr, start):
    if not (is_array_of(arr, types.uint8) and isinstance(start, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        half = builder.load(element_pointer(context, builder, arr, args[0], args[1],
                                            ir.VectorType(I8, 16)), align=1)
        return builder.shuffle_vector(half, half, lanes(list(range(16)) * 2))
    return u8x32(arr, types.intp), codegen


@intrinsic
def zeros_u8x32(typingctx):
    return u8x32(), lambda context, builder, sig, args: splat(V8, 0)


@intrinsic
def zeros_u16x16(typingctx):
    return u16x16(), lambda context, builder, sig, args: splat(V16, 0)


@intrinsic
@binary_u8
def lookup_u8x32(builder, table, idx):
    return x86_call(builder, "llvm.x86.avx2.pshuf.b", V8, [table, idx])


@intrinsic
@binary_u8
def add_u8x32(builder, a, b):
    return builder.add(a, b)


@intrinsic
def low_nibbles(typingctx, v):
    if v != u8x32:
        return None
    return u8x32(u8x32), lambda context, builder, sig, args: builder.and_(args[0], splat(V8, 15))


@intrinsic
def high_nibbles(typingctx, v):
    if v != u8x32:
        return None
    return u8x32(u8x32), lambda context, builder, sig, args: builder.lshr(args[0], splat(V8, 4))


def _word_sum(name, high_bytes):
    """The typer of intrinsic ``name(acc, v) -> u16x16``: acc plus the 16 little-endian
    words of v (``high_bytes``: their high bytes only), wrapping."""
    def typer(typingctx, acc, v):
        if not (acc == u16x16 and v == u8x32):
            return None

        def codegen(context, builder, sig, args):
            words = builder.bitcast(args[1], V16)
            if high_bytes:
                words = builder.lshr(words, splat(V16, 8))
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
            even = builder.sub(words, builder.shl(odd, splat(V16, 8)))
            return builder.shuffle_vector(even, odd, lanes([first // 2 + i // 2 + 16 * (i % 2)
                                                            for i in range(16)]))
        return u16x16(u16x16, u16x16), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


row_sums_low = intrinsic(_row_sums("row_sums_low", 0))
row_sums_high = intrinsic(_row_sums("row_sums_high", 16))


@intrinsic
def store_dequantized(typingctx, arr, start, v, inv_scale, shift):
    if not (is_array_of(arr, types.float32) and isinstance(start, types.Integer)
            and v == u16x16 and inv_scale == shift == types.float32):
        return None

    def codegen(context, builder, sig, args):
        vector = ir.VectorType(ir.FloatType(), 16)
        inv_scale, shift = (broadcast(builder, x, vector) for x in args[3:])
        flags = tuple(FASTMATH)
        y = builder.fadd(builder.fmul(builder.uitofp(args[2], vector), inv_scale, flags=flags),
                         shift, flags=flags)
        builder.store(y, element_pointer(context, builder, arr, args[0], args[1], vector),
                      align=1)
        return context.get_dummy_value()
    f32 = types.float32
    return types.void(arr, types.intp, v, f32, f32), codegen
