"""The one set of Numba compile flags used by every kernel.

``fastmath`` is a set of LLVM flags without ``nnan``/``ninf`` so NaN and Inf checks
stay valid. Serial and parallel variants are separate Python functions (numba#6845).
"""

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))
PJIT = dict(JIT, parallel=True)
INLINE = dict(JIT, inline="always")

#: for fit-time kernels whose comparisons decide discrete choices (tree splits): no
#: fastmath at all, so reciprocal division and FMA contraction cannot reorder exact ties
#: differently on different CPUs
JIT_EXACT = dict(JIT, fastmath=False)
