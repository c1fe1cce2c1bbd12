"""The dispatch layer: the only code outside ``kernels/`` that calls the CPU kernels.

For each call it chooses the kernel variant (serial or parallel, SIMD or plain) and the
block sizes, and allocates the outputs; the variant never changes the result
(tests/test_kernels.py checks 1 against 2 threads, tests/test_simd.py SIMD against plain).
The choices common to every family are in :mod:`.choice`; one module per kernel family:

- :mod:`.lut`: lookup-table matmul (MADDNESS / PQ encoders, scans, tables, fit-time
  one-hot products and split search);
- :mod:`.search`: maximum inner product search (top-k merges, H2-ALSH queries, fast scan).

Each family has ``warmup(parallel)``, which compiles its serial (``parallel=False``) or
parallel variants on tiny inputs (:mod:`lutengine._warmup`).
"""

from . import lut, search
from .choice import use_simd

__all__ = ["lut", "search", "use_simd"]
