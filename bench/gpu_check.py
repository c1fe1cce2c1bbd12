"""One prepared GPU check: the CUDA tests without the simulator, then timings of the CUDA
path against torch.matmul / CuPy and a brute GEMM + topk.

    python bench/gpu_check.py --out DIR      # on a GPU machine (numba-cuda, CuPy, PyTorch)
    python bench/gpu_check.py --out DIR --smoke   # tiny sizes; runs on the simulator too

Writes DIR/gpu_check.json and prints a table headed by the GPU's name; exits non-zero when
the CUDA tests fail (the timings are still written). Not collected by pytest (its name does
not start with test_); tests/cuda/test_gpu_check.py tests it.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FULL = dict(rows=(10_000, 1_000_000), width=512, outputs=(10, 100), ncodebooks=(2, 16),
            train_rows=2048, mips_items=(10_000, 100_000), queries=1000, k=10, repeats=5)
SMOKE = dict(rows=(9,), width=16, outputs=(3,), ncodebooks=(2,), train_rows=64,
             mips_items=(40,), queries=3, k=2, repeats=1)
COLUMNS = ("op", "rows", "M", "C", "dtype", "ms", "baseline", "baseline_ms")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no test run")
    return parser.parse_args(argv)


def format_table(gpu_name, rows):
    """The timings as a Markdown table under the GPU's name (missing values as '–')."""
    cell = lambda v: "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [f"GPU: {gpu_name}", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_json(out_dir, report):
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def run_tests():
    """tests/cuda on the real GPU (no simulator): (return code, last lines of output)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/cuda", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True)
    return proc.returncode, proc.stdout[-2000:]


def _timed_ms(fn, repeats, sync):
    fn()  # compile / warm up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats * 1e3


def _baselines():
    """(name, module) of torch or CuPy when importable with a GPU, else (None, None)."""
    try:
        import torch
        if torch.cuda.is_available():
            return "torch", torch
    except ImportError:
        pass
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return "cupy", cupy
    except Exception:  # no CuPy, or no device for it
        return None, None


def measure(sizes):
    from numba import cuda

    from lutengine import LutMatmul, MipsIndex, _cuda, _dispatch

    rng = np.random.default_rng(0)
    sync = cuda.synchronize
    name, lib = _baselines()
    rows_out = []
    D = sizes["width"]
    train = rng.standard_normal((sizes["train_rows"], D)).astype(np.float32)
    for M in sizes["outputs"]:
        B = rng.standard_normal((D, M)).astype(np.float32)
        for C in sizes["ncodebooks"]:
            est = LutMatmul(ncodebooks=C, progress=False).fit(train, B)
            for N in sizes["rows"]:
                A = cuda.to_device(rng.standard_normal((N, D)).astype(np.float32))
                codes = est.transform(A, device="cuda")
                _, _, luts_q = _cuda._device_state(est, _cuda._LUT_STATE)
                dequantization = _dispatch.lut.dequantization(
                    est.lut_scale_, est.lut_offsets_.sum(axis=0, dtype=np.float64), est.bias_)
                timings = {
                    "encode": lambda: est.transform(A, device="cuda"),
                    "scan": lambda: _cuda.scan_quantized(codes, luts_q, dequantization),
                    "predict": lambda: est.predict(A, device="cuda"),
                }
                for op, fn in timings.items():
                    rows_out.append(dict(op=op, rows=N, M=M, C=C, dtype="float32",
                                         ms=_timed_ms(fn, sizes["repeats"], sync)))
                for dtype in ("float32", "float16"):
                    rows_out.append(dict(op="matmul", rows=N, M=M, C=None, dtype=dtype,
                                         baseline=name, baseline_ms=_baseline_matmul(
                                             lib, name, A, B, dtype, sizes["repeats"])))
    for items in sizes["mips_items"]:
        W = rng.standard_normal((items, D)).astype(np.float32)
        Q = cuda.to_device(rng.standard_normal((sizes["queries"], D)).astype(np.float32))
        index = MipsIndex(W, method="h2alsh", random_state=0)
        ms = _timed_ms(lambda: index.search(Q, sizes["k"], device="cuda"), sizes["repeats"], sync)
        rows_out.append(dict(op="h2alsh search", rows=items, M=sizes["queries"], C=None,
                             dtype="float32", ms=ms, baseline=name and f"{name} GEMM+topk",
                             baseline_ms=_baseline_topk(lib, name, W, Q, sizes["k"],
                                                        sizes["repeats"])))
    return rows_out


def _baseline_matmul(lib, name, A, B, dtype, repeats):
    if lib is None:
        return None
    if name == "torch":
        A_t = lib.as_tensor(A, device="cuda").to(getattr(lib, dtype))
        B_t = lib.as_tensor(B, device="cuda").to(getattr(lib, dtype))
        return _timed_ms(lambda: lib.matmul(A_t, B_t), repeats, lib.cuda.synchronize)
    A_c, B_c = lib.asarray(A).astype(dtype), lib.asarray(B).astype(dtype)
    return _timed_ms(lambda: A_c @ B_c, repeats, lib.cuda.Device().synchronize)


def _baseline_topk(lib, name, W, Q, k, repeats):
    if lib is None:
        return None
    if name == "torch":
        W_t, Q_t = lib.as_tensor(W, device="cuda"), lib.as_tensor(Q, device="cuda")
        return _timed_ms(lambda: lib.topk(Q_t @ W_t.T, k, dim=1), repeats, lib.cuda.synchronize)
    W_c, Q_c = lib.asarray(W), lib.asarray(Q)
    return _timed_ms(lambda: lib.argpartition(-(Q_c @ W_c.T), k - 1, axis=1)[:, :k], repeats,
                     lib.cuda.Device().synchronize)


def gpu_name():
    import numba
    from numba import cuda
    if numba.config.ENABLE_CUDASIM:
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv=None):
    """Returns the exit status: the CUDA tests' return code (0 with --smoke, which skips
    them)."""
    args = parse_args(argv)
    report = {"gpu": gpu_name(), "smoke": args.smoke}
    if not args.smoke:
        report["tests_returncode"], report["tests_output"] = run_tests()
    report["rows"] = measure(SMOKE if args.smoke else FULL)
    path = write_json(args.out, report)
    print(format_table(report["gpu"], report["rows"]))
    if "tests_returncode" in report:
        print(f"\ntests/cuda on the GPU: return code {report['tests_returncode']}")
        if report["tests_returncode"] != 0:
            print(report["tests_output"])
    print(f"written: {path}")
    return report.get("tests_returncode", 0)


if __name__ == "__main__":
    sys.exit(main())
