"""Peak memory of ``LutMatmul.fit`` above its input, measured in a fresh process.

    python bench/fit_memory.py [--rows 1000000] [--features 512] [--codebooks 64]
                               [--outputs 100] [--json PATH]

The child process imports lutengine, runs a small fit first (Numba's compiled kernels are
loaded, or compiled, before measuring), draws A (rows × features, float32, standard
normal, drawn in chunks so no float64 copy exists) and B, reads its resident set size
(VmRSS) as the baseline, fits ``LutMatmul(codebooks)`` with the defaults (contiguous
partition, ridge tables), and reads the peak resident set size (``ru_maxrss``). The
number to read is ``fit_peak_above_baseline_gb`` against ``input_gb``, the size of A.
Not a CI test: at the default size the whole run took 35 minutes on 2 shared, busy cores
(the fit alone 34; ``--rows 100000 --codebooks 256`` takes about 3 minutes).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

GB = 1 << 30


def _rss_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def _random_float32(rng, shape, chunk_rows=1 << 16):
    X = np.empty(shape, dtype=np.float32)
    for start in range(0, shape[0], chunk_rows):
        X[start:start + chunk_rows] = rng.standard_normal((min(chunk_rows, shape[0] - start),
                                                           shape[1]), dtype=np.float32)
    return X


def measure(rows, features, codebooks, outputs):
    """Run in the child: the fit's peak RSS above the RSS with A and B allocated."""
    import lutengine as le

    rng = np.random.default_rng(0)
    le.LutMatmul(codebooks, progress=False).fit(_random_float32(rng, (4096, features)),
                                                _random_float32(rng, (features, outputs)))
    A = _random_float32(rng, (rows, features))
    B = _random_float32(rng, (features, outputs))
    baseline = _rss_bytes()
    start = time.perf_counter()
    le.LutMatmul(codebooks, progress=False).fit(A, B)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(rows=rows, features=features, codebooks=codebooks, outputs=outputs,
                input_gb=A.nbytes / GB, baseline_rss_gb=baseline / GB, peak_rss_gb=peak / GB,
                fit_peak_above_baseline_gb=(peak - baseline) / GB, fit_seconds=seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--codebooks", type=int, default=64)
    parser.add_argument("--outputs", type=int, default=100)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rows, args.features, args.codebooks, args.outputs)))
        return
    child = subprocess.run([sys.executable, __file__, "--child", "--rows", str(args.rows),
                            "--features", str(args.features), "--codebooks", str(args.codebooks),
                            "--outputs", str(args.outputs)],
                           check=True, capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    for key, value in result.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
