"""A small NumPy trainer for the one-hidden-layer ReLU/softmax MLP of the MIPS experiment.

scikit-learn's ``MLPClassifier`` cannot put a penalty on the hidden activations, and the
top-k inference of the MIPS paper (Medan 2021, Table 1) is only as good as those activations
are concentrated; this trainer adds two ways to concentrate them: an L1 penalty on the
hidden activations, and k-winners-take-all training. Float32 throughout, so every product
is one BLAS SGEMM; Adam (Kingma & Ba 2015) with a fixed epoch budget.
"""

import numpy as np
from tqdm import tqdm

#: Adam's constants (the paper's defaults)
ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def init_params(n_in, hidden, n_out, rng, dtype=np.float32):
    """He-uniform weights (ReLU fan-in scaling) and zero biases: (W1, b1, W2, b2)."""
    W1 = rng.uniform(-1, 1, (n_in, hidden)) * np.sqrt(6 / n_in)
    W2 = rng.uniform(-1, 1, (hidden, n_out)) * np.sqrt(6 / (hidden + n_out))
    return [W1.astype(dtype), np.zeros(hidden, dtype), W2.astype(dtype), np.zeros(n_out, dtype)]


def kwta_mask(Z, k):
    """Boolean mask of the ``k`` largest entries of each row of ``Z``."""
    mask = np.zeros(Z.shape, dtype=bool)
    if k >= Z.shape[1]:
        mask[:] = True
        return mask
    top = np.argpartition(Z, Z.shape[1] - k, axis=1)[:, Z.shape[1] - k:]
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def loss_and_grads(params, X, y, l1=0.0, kwta=None):
    """Loss of a batch and its gradients with respect to ``params`` (W1, b1, W2, b2).

    loss = mean over rows of the softmax cross-entropy + ``l1`` · mean over rows of
    Σ_j |h_j|, with h = ReLU(X W1 + b1), restricted to the ``kwta`` largest
    pre-activations of each row when ``kwta`` is given (the others are set to 0).
    """
    W1, b1, W2, b2 = params
    n = X.shape[0]
    Z = X @ W1 + b1
    active = Z > 0
    if kwta is not None:
        active &= kwta_mask(Z, kwta)
    Hid = np.where(active, Z, 0).astype(Z.dtype, copy=False)
    logits = Hid @ W2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = -np.mean(np.log(P[rows, y])) + l1 * np.abs(Hid).sum() / n
    dlogits = P
    dlogits[rows, y] -= 1
    dlogits /= n
    dH = dlogits @ W2.T + l1 / n  # h ≥ 0, so d|h|/dh = 1 where h is active
    dZ = np.where(active, dH, 0).astype(Z.dtype, copy=False)
    return float(loss), [X.T @ dZ, dZ.sum(axis=0), Hid.T @ dlogits, dlogits.sum(axis=0)]


def train_mlp(X, y, hidden, epochs=15, batch_size=128, learning_rate=1e-3, l1=0.0, kwta=None,
              random_state=0, progress=True):
    """Train X → ReLU(hidden) → softmax(n_classes) with Adam on shuffled mini-batches.

    Parameters
    ----------
    X : (n, d) array, y : (n,) int labels in 0..n_classes-1
    hidden : int
        Hidden units H.
    epochs, batch_size, learning_rate
        The fixed budget (no early stop) and Adam's step size.
    l1 : float
        Weight of the L1 penalty on the hidden activations (mean over the batch of Σ|h|).
    kwta : int, optional
        k-winners-take-all training: only the ``kwta`` largest pre-activations of each
        row pass the ReLU.
    random_state : int
        Seed of the initialisation and of the batch order.
    progress : bool
        tqdm bar over epochs (shows the last epoch's mean loss).

    Returns
    -------
    W1 (d, H), b1 (H,), W2 (H, n_classes), b2 (n_classes,) : float32 arrays
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if kwta is not None and not 1 <= kwta <= hidden:
        raise ValueError(f"kwta must be in 1..{hidden}, got {kwta}")
    rng = np.random.default_rng(random_state)
    params = init_params(X.shape[1], hidden, int(y.max()) + 1, rng)
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
    step = 0
    bar = tqdm(range(epochs), desc="train MLP", disable=not progress)
    for _ in bar:
        order = rng.permutation(len(X))
        total = 0.0
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            loss, grads = loss_and_grads(params, X[batch], y[batch], l1, kwta)
            total += loss * len(batch)
            step += 1
            rate = float(learning_rate * np.sqrt(1 - b2 ** step) / (1 - b1 ** step))
            for p, g, m, v in zip(params, grads, first, second):
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * (g * g)
                p -= rate * m / (np.sqrt(v) + eps)
        bar.set_postfix(loss=f"{total / len(X):.4f}")
    return tuple(params)
