"""Sparse outputs of ``TopKLinear`` on the GPU: the twin of ``kernels.topk.rows_dot_*``
followed by the scatter into the bias (the MIPS paper, §3)."""

from numba import cuda, float32


@cuda.jit
def sparse_linear(W, b, ids, X, Y, active):
    """``Y[i] = b`` except ``Y[i, ids[i, j]] = <W[ids[i, j]], X[i]> + b[ids[i, j]]`` (float32
    accumulation); ``active[i]`` marks those outputs. One thread per input row."""
    for i in range(cuda.grid(1), X.shape[0], cuda.gridsize(1)):
        for o in range(W.shape[0]):
            Y[i, o] = b[o]
            active[i, o] = False
        for j in range(ids.shape[1]):
            row = ids[i, j]
            acc = float32(0.0)
            for t in range(X.shape[1]):
                acc += W[row, t] * X[i, t]
            Y[i, row] = acc + b[row]
            active[i, row] = True
