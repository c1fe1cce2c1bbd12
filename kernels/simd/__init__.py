"""AVX2 intrinsics for Numba kernels, emitted as LLVM IR.

The fast-scan instruction of MADDNESS (Blalock & Guttag 2021, §4.4) and of 4-bit PQ fast
scan (André et al. 2015; FAISS) is ``vpshufb``; Numba cannot emit it from Python, so the
primitives are ``numba.extending.intrinsic`` functions emitting LLVM IR, called from
``@njit`` code only, on CPUs where :func:`has_avx2` is true.

- :mod:`.vector`: the register types (``u8x32``, ``u16x16``, ``f32x8``, ``i32x8``), the LLVM
  helpers, CPU feature detection;
- :mod:`.shuffle`: table lookups, nibbles, exact uint16 byte sums, the dequantising store;
- :mod:`.tree`: the tree-encoding step (``vpermps``), NaN poisoning, narrowing and nibble
  packing.

Each module's docstring is the API of its primitives; all are re-exported here.
"""

from .shuffle import (add_high_bytes, add_u8x32, add_words, high_nibbles, load_table16,
                      load_u8x32, lookup_u8x32, low_nibbles, row_sums_high, row_sums_low,
                      store_dequantized, store_u8x32, store_u16x16, zeros_u8x32, zeros_u16x16)
from .tree import (add_times_zero, load_f32x8, narrow_u8x32, pack_nibbles, sum_f32x8,
                   tree_step, zeros_f32x8, zeros_i32x8)
from .vector import cpu_features, f32x8, has_avx2, has_avx512bw, i32x8, u8x32, u16x16

__all__ = ["add_high_bytes", "add_times_zero", "add_u8x32", "add_words", "cpu_features",
           "f32x8", "has_avx2", "has_avx512bw", "high_nibbles", "i32x8", "load_f32x8",
           "load_table16", "load_u8x32", "lookup_u8x32", "low_nibbles", "narrow_u8x32",
           "pack_nibbles", "row_sums_high", "row_sums_low", "store_dequantized", "store_u8x32",
           "store_u16x16", "sum_f32x8", "tree_step", "u8x32", "u16x16", "zeros_f32x8",
           "zeros_i32x8", "zeros_u8x32", "zeros_u16x16"]
