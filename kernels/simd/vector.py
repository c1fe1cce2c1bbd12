"""Register vector types for Numba, the LLVM helpers the intrinsics are built from, and CPU
feature detection.

Vector values live in registers, as Numba types: ``u8x32`` (32 unsigned bytes, one ymm
register), ``u16x16`` (16 unsigned 16-bit integers), ``f32x8`` (8 float32) and ``i32x8``
(8 int32). Element order is always memory order (no lane interleaving).

CPU features: :func:`cpu_features` (the names LLVM reports for the compile target),
:func:`has_avx2`, :func:`has_avx512bw`. A kernel using the intrinsics must only be called
where :func:`has_avx2` is true: the dispatcher (``lutengine._dispatch``) decides, once.
Numba's on-disk cache is keyed by the CPU's features, so cached AVX2 code is never loaded
on a CPU without them. No 64-byte (AVX-512BW) variant is provided: this machine cannot test
one.
"""

import functools

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import models, register_model


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
    """Whether the AVX2 intrinsics of this package can run here."""
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


def llvm_vector(vector):
    """The LLVM type of a :class:`VectorType`."""
    element = ir.FloatType() if vector.kind == "f" else ir.IntType(vector.bits)
    return ir.VectorType(element, vector.lanes)


@register_model(VectorType)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, llvm_vector(fe_type))


I8 = ir.IntType(8)
I32 = ir.IntType(32)
V8, V16, VI32, VF32 = (llvm_vector(v) for v in (u8x32, u16x16, i32x8, f32x8))


# -- LLVM helpers ------------------------------------------------------------------------

def splat(vector_type, value):
    """The constant vector with ``value`` in every element."""
    return ir.Constant(vector_type, [ir.Constant(vector_type.element, value)] * vector_type.count)


def lanes(indices):
    """A constant int32 index vector (a ``shufflevector`` mask)."""
    return ir.Constant(ir.VectorType(I32, len(indices)), [ir.Constant(I32, i) for i in indices])


def broadcast(builder, scalar, vector_type):
    """``scalar`` (of the vector's element type) in every element."""
    lane = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                  ir.Constant(I32, 0))
    return builder.shuffle_vector(lane, lane, lanes([0] * vector_type.count))


def element_pointer(context, builder, array_type, array, start, vector_type):
    """A ``vector_type`` pointer to flat element ``start`` of a C-contiguous array."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [start]), ir.PointerType(vector_type))


def is_array_of(arr, dtype):
    """Whether the Numba type ``arr`` is a C-contiguous array of ``dtype``."""
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.layout == "C"


def x86_call(builder, name, vector_type, args):
    """A call of the LLVM intrinsic ``name`` taking and returning ``vector_type`` values."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector_type, [vector_type] * len(args)), name)
    return builder.call(fn, args)


def vector_load(name, dtype, vector):
    """The typer of intrinsic ``name(arr, start) -> vector``: ``vector.lanes`` elements of a
    C-contiguous ``dtype`` array from flat element ``start`` (unaligned)."""
    def typer(typingctx, arr, start):
        if not (is_array_of(arr, dtype) and isinstance(start, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(element_pointer(context, builder, arr, args[0], args[1],
                                                llvm_vector(vector)), align=1)
        return vector(arr, types.intp), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


def vector_store(name, dtype, vector):
    """The typer of intrinsic ``name(arr, start, v)``: writes ``v`` to ``vector.lanes`` elements
    of a C-contiguous ``dtype`` array from flat element ``start`` (unaligned)."""
    def typer(typingctx, arr, start, v):
        if not (is_array_of(arr, dtype) and isinstance(start, types.Integer) and v == vector):
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], element_pointer(context, builder, arr, args[0], args[1],
                                                   llvm_vector(vector)), align=1)
            return context.get_dummy_value()
        return types.void(arr, types.intp, vector), codegen
    typer.__name__ = typer.__qualname__ = name
    return typer


def binary_u8(emit):
    """The typer of an intrinsic (u8x32, u8x32) -> u8x32 whose IR ``emit(builder, a, b)``
    builds."""
    @functools.wraps(emit)
    def typer(typingctx, a, b):
        if a == u8x32 and b == u8x32:
            return u8x32(u8x32, u8x32), lambda context, builder, sig, args: emit(builder, *args)
        return None
    return typer
