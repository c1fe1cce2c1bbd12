"""The ``lutengine`` command: ``demo``, ``reproduce NAME --out DIR``, ``warmup``."""

import argparse
import inspect
import sys
import time
from pathlib import Path

from . import datasets
from ._warmup import warmup
from .experiments import REGISTRY, write_results
from .experiments import _common
from .matmul import LutMatmul

#: command-line options forwarded to an experiment's run() when given
_EXPERIMENT_OPTIONS = ("dataset", "ncodebooks", "ks", "networks", "l1", "epochs", "methods", "hidden",
                       "hidden_sizes", "seeds", "n_rows", "d", "candidates", "max_train",
                       "random_state", "data_home")

#: the demo's network per default dataset: hidden units and MLPClassifier settings
DEMO_MLP = {"mnist": (256, {"max_iter": 10}), "digits": (64, {"batch_size": 64, "max_iter": 100})}


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _demo(args):
    """Train a small MLP, approximate each layer's product in turn, print a table."""
    Xtr, ytr, Xte, yte, name = datasets.load_default(args.data_home)
    hidden, settings = DEMO_MLP[name]
    print(f"dataset: {name} ({len(Xtr)} train / {len(Xte)} test rows, {Xtr.shape[1]} features)")
    if name == "digits":
        print(f"(MNIST was not found; set {datasets.ENV_VAR}=DIR with the IDX files in "
              "DIR/mnist/, or pass --data-home DIR, to run this demo on MNIST)")
    mlp, seconds = _common.train_mlp(Xtr, ytr, hidden, random_state=0, **settings)
    W1, b1, W2, b2 = _common.mlp_layers(mlp)
    H_train = _common.relu(Xtr @ W1 + b1)
    H_test = _common.relu(Xte @ W1 + b1)
    exact = _common.accuracy(H_test @ W2 + b2, yte)
    D = Xtr.shape[1]
    print(f"MLP {D}-{hidden}-10 trained in {seconds:.1f} s; exact test accuracy {exact:.4f}")
    print("Each row approximates one layer's product with MADDNESS (LutMatmul, C codebooks);\n"
          f"the other layer stays exact. Times: best of {_common.TIMING_REPEATS} on the test rows, "
          "1 thread each.\n")

    def hidden_layer(C):
        est = LutMatmul(C, progress=False).fit(Xtr, W1, bias=b1)
        scores = _common.relu(est.predict(Xte)) @ W2 + b2
        return est, scores, Xte, W1

    def output_layer(C):
        est = LutMatmul(C, progress=False).fit(H_train, W2, bias=b2)
        return est, est.predict(H_test), H_test, W2

    layers = [(f"hidden {D}x{hidden}", hidden_layer, D), (f"output {hidden}x10", output_layer, hidden)]
    width = max(len(label) for label, _, _ in layers)
    header = (f"{'layer':<{width}}  {'C':>3}  {'accuracy':>8}  {'kept':>6}  "
              f"{'predict ms':>10}  {'BLAS ms':>8}  {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for label, approximate, depth in layers:
        for C in (C for C in args.ncodebooks if C <= depth):
            est, scores, A, B = approximate(C)
            acc = _common.accuracy(scores, yte)
            t = _common.time_vs_blas(est, A, B)
            print(f"{label:<{width}}  {C:>3}  {acc:>8.4f}  {acc / exact:>6.3f}  "
                  f"{t['predict_ms']:>10.3f}  {t['blas_ms']:>8.3f}  {t['speedup_vs_blas']:>7.2f}x")
    if name == "digits":
        print("\n(digits layers are tiny, so BLAS has almost no work to beat; the speed-ups "
              "show on MNIST-sized layers and wide outputs, see README.md)")
    return 0


def _reproduce(args):
    """Run a registered experiment, write its results, print the Markdown table."""
    module = REGISTRY[args.name]
    accepted = inspect.signature(module.run).parameters
    given = {key: value for key, value in vars(args).items()
             if key in _EXPERIMENT_OPTIONS and value is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"{args.name} does not take the options "
                         + ", ".join("--" + key.replace("_", "-") for key in unknown))
    result = module.run(progress=not args.no_progress, **given)
    paths = write_results(result, args.out, module.NAME, plots=getattr(module, "PLOTS", _common.PLOTS))
    print(next(p for p in paths if p.suffix == ".md").read_text())
    print("wrote:\n" + "\n".join(f"  {p}" for p in paths))
    return 0


def _warmup(args):
    start = time.perf_counter()
    count = warmup()
    print(f"compiled {count} kernels in {time.perf_counter() - start:.1f} s "
          "(cached on disk for later runs)")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lutengine",
        description="Approximate neural-network inference with lookup tables (MADDNESS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="approximate the layers of a small MLP and compare "
                                       "accuracy and speed with the exact network")
    demo.add_argument("--ncodebooks", type=_positive_int, nargs="+", default=[4, 8, 16],
                      metavar="C", help="numbers of codebooks to try (default: 4 8 16)")
    demo.add_argument("--data-home", type=Path, metavar="PATH",
                      help=f"folder searched for mnist/ before ${datasets.ENV_VAR}")
    demo.set_defaults(func=_demo)

    rep = sub.add_parser("reproduce", help="run a paper experiment and write JSON, Markdown "
                                           "and PNG results")
    rep.add_argument("name", choices=sorted(REGISTRY), metavar="NAME",
                     help="experiment: " + ", ".join(sorted(REGISTRY)))
    rep.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="folder for the results (created if missing)")
    rep.add_argument("--dataset", choices=_common.DATASETS,
                     help="mnist or fashion (digits: tiny built-in set for quick runs)")
    rep.add_argument("--ncodebooks", type=_positive_int, nargs="+", metavar="C",
                     help="classifier-layer, itlumm-mnist: numbers of codebooks")
    rep.add_argument("--ks", type=_positive_int, nargs="+", metavar="K",
                     help="mips-mnist: numbers of top (and bottom) rows computed")
    rep.add_argument("--networks", nargs="+", choices=("plain", "sparse"),
                     help="mips-mnist: networks to train (sparse: L1 on hidden activations)")
    rep.add_argument("--l1", type=float, help="mips-mnist: L1 strength of the sparse network")
    rep.add_argument("--epochs", type=_positive_int,
                     help="mips-mnist, itlumm-mnist: training epochs")
    rep.add_argument("--methods", nargs="+", metavar="METHOD")
    rep.add_argument("--hidden", type=_positive_int, metavar="UNITS",
                     help="classifier-layer, mips-mnist: hidden units")
    rep.add_argument("--hidden-sizes", type=_positive_int, nargs="+", metavar="UNITS",
                     help="itlumm-mnist: hidden layer widths (default: 30 30 30)")
    rep.add_argument("--seeds", type=_positive_int,
                     help="itlumm-mnist: replacement seeds averaged at 1 codebook")
    rep.add_argument("--n-rows", type=_positive_int, metavar="N",
                     help="mips-speed: rows of the synthetic item sets")
    rep.add_argument("--dim", dest="d", type=_positive_int, metavar="D",
                     help="mips-speed: dimension of the items")
    rep.add_argument("--candidates", type=_positive_int, nargs="+", metavar="BUDGET",
                     help="mips-speed: H2-ALSH candidate budgets per ring")
    rep.add_argument("--max-train", type=_positive_int, metavar="ROWS")
    rep.add_argument("--random-state", type=int, metavar="SEED")
    rep.add_argument("--data-home", type=Path, metavar="PATH")
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    rep.set_defaults(func=_reproduce)

    wu = sub.add_parser("warmup", help="compile every kernel once (fills Numba's cache)")
    wu.set_defaults(func=_warmup)
    return parser


def main(argv=None):
    """Entry point of the ``lutengine`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:  # missing data, invalid options
        print(f"lutengine: error: {exc}", file=sys.stderr)
        return 1
