"""The dispatch layer: the only code outside ``kernels/`` that calls the CPU kernels.

For each call it chooses the kernel variant (serial or parallel, SIMD or plain) and the
block sizes, and allocates the outputs; the variant never changes the result
(tests/test_kernels.py checks 1 against 2 threads, tests/test_simd.py SIMD against plain).
The choices common to every family are in :mod:`.choice`; one module per kernel family:

- :mod:`.lut`: lookup-table matmul (MADDNESS / PQ encoders, scans, tables, fit-time
  one-hot products and split search);
- :mod:`.search`: maximum inner product search (top-k merges, H2-ALSH queries, fast scan);
- :mod:`.conv`: Conv2d patches (tree encoding read straight from the image, im2col);
- :mod:`.fused`: the fused forward of a chain of quantised MADDNESS layers with ReLU
  between them (``lutengine.runtime.FusedChain``).

Each family has ``warmup(parallel)``, which compiles its serial (``parallel=False``) or
parallel variants on tiny inputs (:mod:`lutengine._warmup`).
"""

from . import conv, fused, lut, search
from .choice import use_simd

__all__ = ["conv", "fused", "lut", "search", "use_simd"]
