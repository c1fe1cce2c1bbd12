"""Tree-encoding intrinsics (MADDNESS §4.1), 8 rows per vector (``f32x8``: 8 float32;
``i32x8``: 8 int32); the codes leave as ``u8x32`` (see :mod:`kernels.simd.shuffle` for its
loads and stores).

``load_f32x8(arr, start) -> f32x8``          float32 ``arr.flat[start:start+8]`` (C-contiguous
                                             array, flat offset, not bounds-checked)
``zeros_f32x8()``, ``zeros_i32x8()``
``tree_step(node, x, level_thresholds)``     ``2 * node + (x > level_thresholds[node])``, per
                                             element (``vpermps`` picks the threshold; node
                                             in 0..7; NaN compares false)
``add_times_zero(acc, x) -> f32x8``          ``acc + 0 * x``: NaN wherever x is NaN or ±Inf
``sum_f32x8(v) -> float32``                  the sum of the 8 elements, in order
``narrow_u8x32(a, b, c, d) -> u8x32``        four i32x8 truncated to bytes, in order a..d
``pack_nibbles(low, high) -> u8x32``         ``low | (high << 4)`` (wrapping)
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .vector import (I32, V8, VF32, VI32, binary_u8, f32x8, i32x8, lanes, splat, u8x32,
                     vector_load)

load_f32x8 = intrinsic(vector_load("load_f32x8", types.float32, f32x8))


@intrinsic
def zeros_f32x8(typingctx):
    return f32x8(), lambda context, builder, sig, args: ir.Constant(VF32, [0.0] * 8)


@intrinsic
def zeros_i32x8(typingctx):
    return i32x8(), lambda context, builder, sig, args: splat(VI32, 0)


@intrinsic
def tree_step(typingctx, node, x, level_thresholds):
    if not (node == i32x8 and x == f32x8 and level_thresholds == f32x8):
        return None

    def codegen(context, builder, sig, args):
        node, x, table = args
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(VF32, [VF32, VI32]), "llvm.x86.avx2.permps")
        threshold = builder.call(fn, [table, node])  # vpermps: table[node], per lane
        right = builder.zext(builder.fcmp_ordered(">", x, threshold), VI32)
        return builder.add(builder.shl(node, splat(VI32, 1)), right)
    return i32x8(i32x8, f32x8, f32x8), codegen


@intrinsic
def add_times_zero(typingctx, acc, x):
    if not (acc == f32x8 and x == f32x8):
        return None

    def codegen(context, builder, sig, args):  # no fast-math flags: 0 · x must stay NaN for
        zero = ir.Constant(VF32, [0.0] * 8)  # x = NaN or ±Inf
        return builder.fadd(args[0], builder.fmul(args[1], zero))
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def sum_f32x8(typingctx, v):
    if v != f32x8:
        return None

    def codegen(context, builder, sig, args):
        total = builder.extract_element(args[0], ir.Constant(I32, 0))
        for i in range(1, 8):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(I32, i)))
        return total
    return types.float32(f32x8), codegen


@intrinsic
def narrow_u8x32(typingctx, a, b, c, d):
    if not a == b == c == d == i32x8:
        return None

    def codegen(context, builder, sig, args):
        ab = builder.shuffle_vector(args[0], args[1], lanes(range(16)))
        cd = builder.shuffle_vector(args[2], args[3], lanes(range(16)))
        return builder.trunc(builder.shuffle_vector(ab, cd, lanes(range(32))), V8)
    return u8x32(i32x8, i32x8, i32x8, i32x8), codegen


@intrinsic
@binary_u8
def pack_nibbles(builder, low, high):
    return builder.or_(low, builder.shl(high, splat(V8, 4)))
