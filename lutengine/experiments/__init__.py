"""Reproductions of the papers' experiments: pure functions returning JSON-ready dicts.

``REGISTRY`` maps the command-line name (``lutengine reproduce NAME``) to the module; each
module has ``NAME`` (the file stem of its results) and ``run(**options) -> dict``.
"""

from . import (cifar10_cnn, classifier_layer, itlumm_mnist, learned_mnist, mips_mnist,
               mips_speed, mlp_runtime, quantization)
from ._common import write_results

REGISTRY = {"cifar10-cnn": cifar10_cnn, "classifier-layer": classifier_layer,
            "itlumm-mnist": itlumm_mnist, "learned-mnist": learned_mnist,
            "mips-mnist": mips_mnist, "mips-speed": mips_speed, "mlp-runtime": mlp_runtime,
            "quantization": quantization}

__all__ = ["REGISTRY", "write_results", "cifar10_cnn", "classifier_layer", "itlumm_mnist",
           "learned_mnist", "mips_mnist", "mips_speed", "mlp_runtime", "quantization"]
