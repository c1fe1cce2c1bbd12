"""The quantised uint8 lookup-accumulate on the GPU: the twin of ``kernels.scan.scan_quantized_*``
(Blalock & Guttag 2021, §4.4, with exact sums).

Each thread block stages a tile of ``cols_per_tile`` table columns of every codebook in
shared memory, then, for each row tile of ``rows_per_block`` rows it owns, the tile's codes
(read coalesced: consecutive threads, consecutive bytes); every thread then computes whole
outputs ``out[n, m]``. Integer part: the exact sum of the uint8 entries, as on the CPU. Float
part: ``fma(float32(acc), inv_scale[m], out_shift[m])``, the single multiply-add the CPU
kernels compile to, so outputs are bit-identical to them.
"""

from numba import cuda, float32, int32, uint8


@cuda.jit
def scan_quantized(codes, luts, inv_scale, out_shift, out, rows_per_block, cols_per_tile):
    """``out[n, m]`` from uint8 ``luts[C, 16, M]`` and ``codes[N, C]`` (C-contiguous).

    Launch with a 2-D grid (row tiles, column tiles) and ``C * (16 * cols_per_tile +
    rows_per_block)`` bytes of dynamic shared memory.
    """
    nrows, ncodebooks = codes.shape
    width_all = out.shape[1]
    shared = cuda.shared.array(0, dtype=uint8)
    table_bytes = ncodebooks * 16 * cols_per_tile
    tables = shared[:table_bytes]
    tile_codes = shared[table_bytes:table_bytes + rows_per_block * ncodebooks]
    thread, nthreads = cuda.threadIdx.x, cuda.blockDim.x
    nrow_tiles = (nrows + rows_per_block - 1) // rows_per_block
    ncol_tiles = (width_all + cols_per_tile - 1) // cols_per_tile
    for col_tile in range(cuda.blockIdx.y, ncol_tiles, cuda.gridDim.y):
        m0 = col_tile * cols_per_tile
        width = min(cols_per_tile, width_all - m0)
        cuda.syncthreads()  # the previous column tile is no longer read
        for i in range(thread, ncodebooks * 16 * width, nthreads):
            row = i // width  # (codebook, code) pair
            col = i - row * width
            tables[row * cols_per_tile + col] = luts[row // 16, row % 16, m0 + col]
        for row_tile in range(cuda.blockIdx.x, nrow_tiles, cuda.gridDim.x):
            n0 = row_tile * rows_per_block
            tile_rows = min(rows_per_block, nrows - n0)
            cuda.syncthreads()  # tables staged; the previous row tile's codes consumed
            for i in range(thread, tile_rows * ncodebooks, nthreads):
                tile_codes[i] = codes[n0 + i // ncodebooks, i % ncodebooks]
            cuda.syncthreads()
            for i in range(thread, tile_rows * width, nthreads):
                r = i // width
                m = i - r * width
                acc = int32(0)
                for c in range(ncodebooks):
                    code = int32(tile_codes[r * ncodebooks + c])
                    acc += int32(tables[(c * 16 + code) * cols_per_tile + m])
                out[n0 + r, m0 + m] = cuda.fma(float32(acc), inv_scale[m0 + m],
                                               out_shift[m0 + m])
