"""Tunables passed to the kernels as arguments (never read as globals inside them).

Values were chosen by measurement on a 2-core AVX2 machine (see docs/results/speed_matmul.md).
Tests may monkeypatch them.
"""

import os

#: the AVX2 packed MADDNESS path (kernels/packed.py): "auto" (where the CPU has AVX2), "on"
#: (an error without AVX2) or "off" (the plain kernels); the environment variable
#: LUTENGINE_SIMD sets it at import
SIMD = os.environ.get("LUTENGINE_SIMD", "auto")
#: rows per block when encoding C-ordered input (the block's rows stay in cache while
#: every tree reads its 4 columns)
ENCODE_BLOCK_ROWS_C = 32
#: rows per block when encoding F-ordered input (split columns are read contiguously)
ENCODE_BLOCK_ROWS_F = 1024
#: rows per block in the lookup-accumulate scan
SCAN_BLOCK_ROWS = 256
#: rows per chunk of the SIMD scan (kernels/packed.py): each output's column is written
#: this many rows at a time, while the chunk's packed codes stay in L2
PACKED_SCAN_CHUNK_ROWS = 8192
#: rows per block of the fused chain (kernels/fused.py): the block's gathered inputs, codes
#: and two hidden activation buffers stay in L1/L2 while it goes through every layer
FUSED_BLOCK_ROWS = 32
#: bytes of the conv encoder's per-worker scratch of gathered split values (16·C bytes per
#: output position; kernels/conv.py): a work unit is as many whole output rows as fit (at
#: least one). Measured on a 2-core AMD EPYC (512 KiB L2), 32x32 outputs: C=16 best at
#: 512–1024 positions, C=64 at 256; smaller units pay per-unit overhead, larger ones leave L2
CONV_SCRATCH_BYTES = 1 << 18
#: below this many rows the serial kernels are used even when threads are available
PARALLEL_MIN_ROWS = 2048
#: normscan: rows in its first block (later blocks double, up to NORMSCAN_MAX_BLOCK)
NORMSCAN_FIRST_BLOCK = 256
NORMSCAN_MAX_BLOCK = 16384
#: brute: at most this many scores held at once (queries are chunked to fit)
MIPS_SCORE_BUDGET = 1 << 24
#: CUDA (device="cuda", lutengine._cuda): threads per block of every kernel
CUDA_THREADS_PER_BLOCK = 128
#: CUDA: at most this many blocks per grid dimension (the kernels loop grid-stride)
CUDA_MAX_BLOCKS = 1024
#: CUDA scan: rows per row tile (one thread block stages their codes at once)
CUDA_ROWS_PER_BLOCK = 64
#: CUDA scan: shared-memory budget (bytes) for a block's table columns and codes
CUDA_SCAN_SHARED_BYTES = 32768
#: CUDA H2-ALSH: at most this many query threads (each holds scratch sized to a ring)
CUDA_MAX_QUERY_THREADS = 4096

# -- limits on what a file or a model may declare, checked before anything is allocated ------
# (lutengine.load, Network construction, nn.from_onnx, nn.from_torch). A file that exceeds
# one is rejected with a ValueError naming the limit; raise it here for a file you trust,
# e.g. ``lutengine.config.MAX_ARRAY_BYTES = 8 << 30``.

#: bytes of any one array a file declares: an .npz member, an ONNX initializer or
#: external-data tensor
MAX_ARRAY_BYTES = 1 << 30
#: bytes of all the arrays of one file together (and of an ONNX file itself)
MAX_FILE_BYTES = 1 << 32
#: arrays (members) of one .npz model file
MAX_FILE_MEMBERS = 10_000
#: bytes of a model file's JSON header
MAX_HEADER_BYTES = 1 << 20
#: nodes of one Network (or ONNX graph)
MAX_NODES = 10_000
#: elements of any value a Network holds for one example (each input, each node's output,
#: a convolution's patches), and of one value over the whole batch of an import check
MAX_VALUE_ELEMENTS = 1 << 24
#: kernel size, stride, padding and dilation of a convolution or pooling window, per axis
MAX_WINDOW = 1 << 10

#: elements a Network's forward holds per chunk of examples (for the largest value of one
#: example: the batch goes through in chunks of FORWARD_CHUNK_ELEMENTS // that many rows)
FORWARD_CHUNK_ELEMENTS = 1 << 23
