"""The ``lutengine`` command: ``demo``, ``reproduce NAME --out DIR``, ``warmup``."""

import argparse
import inspect
import sys
import time
from pathlib import Path

from . import datasets, nn
from ._warmup import warmup, worker_processes
from .experiments import REGISTRY, write_results
from .experiments import _common
from .matmul import LutMatmul

#: command-line options forwarded to an experiment's run() when given
_EXPERIMENT_OPTIONS = ("dataset", "ncodebooks", "ks", "networks", "l1", "epochs", "methods", "hidden",
                       "hidden_sizes", "seeds", "n_rows", "d", "candidates", "max_train",
                       "random_state", "data_home")

#: the demo's network 784-HIDDEN-10 and its training (nn.MLP.train), the rows it trains on,
#: the rows LutMatmul fits its trees and prototypes on, and the timed calls per side
DEMO = {"hidden": 512, "epochs": 5, "batch_size": 256, "train_rows": 10_000, "fit_rows": 3_000,
        "timing_repeats": 15}

#: accuracy kept (approximate / exact) that a row must reach to be marked the winner
DEMO_KEPT_TARGET = 0.95


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _demo(args):
    """Train a 784-512-10 MLP, replace its hidden layer's product by MADDNESS (Blalock &
    Guttag 2021) at a few C, print accuracy kept and speed against BLAS. Everything runs on
    one thread (Numba and BLAS), so only the serial kernels compile."""
    with _common.single_thread():
        Xtr, ytr, Xte, yte, name = datasets.load_default(args.data_home, args.download)
        D = Xtr.shape[1]
        too_many = [C for C in args.ncodebooks if C > D]
        if too_many:
            raise ValueError(f"--ncodebooks must be at most the {D} input features, got {too_many}")
        Xtr, ytr = Xtr[:DEMO["train_rows"]], ytr[:DEMO["train_rows"]]
        print(f"dataset: {name} ({len(Xtr)} train / {len(Xte)} test rows, {D} features)")
        if name == "fashion-subset":
            print("(the Fashion-MNIST subset shipped with lutengine; MNIST was not found: "
                  "`lutengine demo --download` fetches it,\n or put its IDX files in DIR/mnist/ "
                  f"and set {datasets.ENV_VAR}=DIR or pass --data-home DIR)")
        start = time.perf_counter()
        net = nn.MLP.train(Xtr, ytr, [DEMO["hidden"]], epochs=DEMO["epochs"],
                           batch_size=DEMO["batch_size"], progress=False)
        exact = net.score(Xte, yte)
        hidden = net.layers[0]
        print(f"MLP {D}-{DEMO['hidden']}-{len(net.classes)} trained in "
              f"{time.perf_counter() - start:.1f} s; exact test accuracy {exact:.4f}\n")
        print(f"The hidden layer's product ({len(Xte)} test rows x {D} inputs -> {DEMO['hidden']} "
              f"units) by MADDNESS (LutMatmul,\nC codebooks, fitted on {DEMO['fit_rows']} rows) "
              f"against BLAS; 1 thread each, best of {DEMO['timing_repeats']}.\n")
        header = (f"{'C':>4}  {'accuracy':>8}  {'kept':>6}  {'predict ms':>10}  {'BLAS ms':>8}  "
                  f"{'speed-up':>8}")
        print(header + "\n" + "-" * len(header))
        rows = []
        for C in args.ncodebooks:
            est = LutMatmul(C, progress=False).fit(Xtr[:DEMO["fit_rows"]], hidden.W, bias=hidden.b)
            accuracy = nn.MLP([est, net.layers[1]]).score(Xte, yte)
            times = _common.time_vs_blas(est, Xte, hidden.W, DEMO["timing_repeats"])
            rows.append((C, accuracy / exact, times["speedup_vs_blas"]))
            print(f"{C:>4}  {accuracy:>8.4f}  {accuracy / exact:>6.3f}  "
                  f"{times['predict_ms']:>10.3f}  {times['blas_ms']:>8.3f}  "
                  f"{times['speedup_vs_blas']:>7.1f}x", flush=True)
        winners = [row for row in rows if row[1] >= DEMO_KEPT_TARGET]
        if winners:
            C, kept, speedup = max(winners, key=lambda row: row[2])
            print(f"\n=> C={C}: {kept:.1%} of the exact network's accuracy at {speedup:.1f}x "
                  "BLAS's speed (1 thread)")
        else:
            print(f"\n=> no C kept {DEMO_KEPT_TARGET:.0%} of the exact accuracy; try more "
                  "codebooks (--ncodebooks)")
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
    """Compile every kernel (in parallel processes); print, and with --out write, the times."""
    start = time.perf_counter()
    compiled = warmup(args.processes)
    seconds = time.perf_counter() - start
    rows = [{"kernel": kernel, "compilations": count, "compile_seconds": round(total, 2)}
            for kernel, (count, total) in sorted(compiled.items(), key=lambda kv: -kv[1][1])]
    for row in rows:
        print(f"{row['compile_seconds']:7.2f} s  {row['kernel']} ({row['compilations']}x)")
    print(f"compiled {sum(r['compilations'] for r in rows)} kernel variants in {seconds:.1f} s "
          "(cached on disk for later runs)")
    if args.out:
        result = {"wall_seconds": round(seconds, 1), "processes": worker_processes(args.processes),
                  "machine": _common.machine_info(), "rows": rows}
        paths = write_results(result, args.out, "compile_times", plots={})
        print("wrote:\n" + "\n".join(f"  {p}" for p in paths))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lutengine",
        description="Approximate neural-network inference with lookup tables (MADDNESS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="approximate the hidden layer of a 784-512-10 MLP and "
                                       "compare accuracy and speed with the exact network")
    demo.add_argument("--ncodebooks", type=_positive_int, nargs="+", default=[16, 32, 48, 64],
                      metavar="C", help="numbers of codebooks to try (default: 16 32 48 64)")
    demo.add_argument("--data-home", type=Path, metavar="PATH",
                      help=f"folder searched for mnist/ before ${datasets.ENV_VAR}")
    demo.add_argument("--download", action="store_true",
                      help="download MNIST (into the first writable data folder) when not found")
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
    rep.add_argument("--networks", nargs="+", metavar="NET",
                     help="mips-mnist: networks to train (plain, sparse: L1 on hidden "
                          "activations); learned-mnist: 784x30x30x30x10, 784x256x256x10")
    rep.add_argument("--l1", type=float, help="mips-mnist: L1 strength of the sparse network")
    rep.add_argument("--epochs", type=_positive_int,
                     help="mips-mnist, itlumm-mnist, cifar10-cnn: training epochs of the "
                          "network; learned-mnist, mlp-runtime: epochs of learn_luts")
    rep.add_argument("--methods", nargs="+", metavar="METHOD")
    rep.add_argument("--hidden", type=_positive_int, metavar="UNITS",
                     help="classifier-layer, mips-mnist: hidden units")
    rep.add_argument("--hidden-sizes", type=_positive_int, nargs="+", metavar="UNITS",
                     help="itlumm-mnist: hidden layer widths (default: 30 30 30)")
    rep.add_argument("--seeds", type=_positive_int,
                     help="itlumm-mnist: replacement seeds averaged at 1 codebook; "
                          "learned-mnist: seeds of the learned rows")
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
    wu.add_argument("--processes", type=_positive_int, metavar="N",
                    help="worker processes (default: one per core, at most 4)")
    wu.add_argument("--out", type=Path, metavar="DIR",
                    help="also write the compile times (compile_times.{json,md}) to DIR")
    wu.set_defaults(func=_warmup)
    return parser


def main(argv=None):
    """Entry point of the ``lutengine`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:  # missing data, failed download, invalid options
        print(f"lutengine: error: {exc}", file=sys.stderr)
        return 1
