"""lutengine: approximate neural-network inference with lookup tables, as Numba kernels.

>>> import lutengine as le
>>> est = le.LutMatmul(ncodebooks=16).fit(A_train, B)      # doctest: +SKIP
>>> Y = est.predict(A)                                     # doctest: +SKIP
"""

from . import config, datasets, nn
from ._validation import NotFittedError
from ._warmup import warmup
from ._persist import load
from .matmul import LutMatmul, PQMatmul, QuantizationWarning
from .mips import MipsIndex
from .sparse import TopKLinear

__version__ = "0.1.0"

__all__ = ["LutMatmul", "PQMatmul", "MipsIndex", "TopKLinear", "load", "warmup",
           "NotFittedError", "QuantizationWarning", "config", "datasets", "nn", "__version__"]
