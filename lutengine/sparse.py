"""Top-k sparse activation of a linear layer (the MIPS paper, §3).

``TopKLinear(W, b, k)`` approximates ``y = W x + b`` by computing exactly only the outputs
of the k rows with the largest ``⟨w_i, x⟩ + b_i`` (and, with ``bottom=True``, the k
smallest: large negative pre-activations matter too before a nonlinearity); every other
output is set to its bias ``b_i``. The rows are found by a :class:`~lutengine.MipsIndex`.
"""

import numpy as np

from . import _cuda, _dispatch
from ._validation import as_float_matrix, as_float_vector, as_queries, check_bool, check_k
from .mips import MipsIndex


class TopKLinear:
    """y ≈ W x + b from the top-k (∪ bottom-k) rows of W (N, d), as in ``torch.nn.Linear``.

    Parameters
    ----------
    W : array (N, d)
    b : array (N,)
        The bias (``W`` and ``b`` are positional only, so that H2-ALSH's ring ratio ``b``
        can be passed as an option).
    k : int, 1 ≤ k ≤ N
    method : {"auto", "brute", "normscan", "h2alsh", "fastscan"}
        How the rows are found (see :class:`~lutengine.MipsIndex`).
    bottom : bool
        Also compute the k rows with the smallest ⟨w_i, x⟩ + b_i.
    random_state, **options
        Passed to the index, which checks them (:func:`lutengine.mips.check_params`).

    Calling one layer from several threads at once is safe (see :mod:`lutengine.mips`).
    """

    def __init__(self, W, b, /, k=40, method="h2alsh", bottom=True, random_state=None, **options):
        self.W = as_float_matrix(W, "W")
        self.b = as_float_vector(b, "b", self.W.shape[0])
        self.k = check_k(k, self.W.shape[0])
        self.bottom = check_bool(bottom, "bottom")
        self.index = MipsIndex(self.W, method=method, bias=self.b, random_state=random_state,
                               **options)

    def select(self, X):
        """Row ids computed for each input row: int64 (n, k) or (n, 2k) with ``bottom``
        (an id may appear twice when 2k > N)."""
        return self._select(as_queries(X, "X", self.W.shape[1]))

    def _select(self, X):
        ids = self.index.search(X, self.k)[0]
        if self.bottom:
            ids = np.hstack([ids, self.index.search(X, self.k, largest=False)[0]])
        return ids

    def active(self, X):
        """Boolean mask (n, N) of the outputs computed exactly."""
        return self._mask(self.select(X))

    def _mask(self, ids):
        mask = np.zeros((ids.shape[0], self.W.shape[0]), dtype=bool)
        np.put_along_axis(mask, ids, True, axis=1)
        return mask

    def __call__(self, X, return_active=False, device="cpu"):
        """Approximate outputs (n, N) float32 for the inputs X (n, d) or (d,); with
        ``return_active`` also the mask of :meth:`active`, from the same search.
        ``device``: "cpu", "cuda" (method "h2alsh"; NumPy or device-array X, the results
        where X was) or "auto" (see :mod:`lutengine._cuda`)."""
        if _cuda.resolve(device, X) == "cuda":
            return _cuda.topk_linear(self, X, return_active)
        X = as_queries(X, "X", self.W.shape[1])
        ids = self._select(X)
        values = _dispatch.search.rows_dot(self.W, ids, X)
        Y = np.broadcast_to(self.b, (X.shape[0], self.W.shape[0])).copy()
        np.put_along_axis(Y, ids, values + self.b[ids], axis=1)
        return (Y, self._mask(ids)) if return_active else Y
