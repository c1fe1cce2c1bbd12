"""Private compute layer of lutengine.

Contract: arrays and scalars in, arrays out; inputs are already validated, typed and
shaped by ``lutengine``; nothing here raises on bad input or imports ``lutengine``.
Every kernel has a serial and a parallel variant (separate functions sharing an
inlined body) and a NumPy oracle in ``tests/reference.py``.
"""
