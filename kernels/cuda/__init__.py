"""numba.cuda twins of the hot kernels: tree encoding, the quantised uint8 scan and
the H2-ALSH query, plus the small device helpers their callers need.

Importing this package imports ``numba.cuda`` (the ``cuda`` extra, or the simulator with
``NUMBA_ENABLE_CUDASIM=1``); ``lutengine._cuda`` imports it lazily. Conventions of the CPU
kernels carry over: arrays and scalars in, arrays out, no validation. Every kernel loops
grid-stride, so any launch configuration is correct; block sizes come from the caller.
"""
