"""Speed tables from a pytest-benchmark JSON file: speed-up over single-thread BLAS.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_bench_matmul.py \\
        --benchmark-enable --benchmark-min-rounds=9 --benchmark-json=docs/results/speed_matmul.json
    python bench/report.py docs/results/speed_matmul.json

writes ``speed_matmul.md`` (one table per output count M: the speed-up of every
implementation over 1-thread BLAS, min time over min time, per codebook count C) and
``speed_matmul.png`` beside the JSON file, and rewrites the JSON without the per-round
timings (``stats.data``; the summary statistics stay). Nothing is typed by hand: machine,
BLAS build, commit and load come from the JSON.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: column order and headings of the table (implementations of bench/test_bench_matmul.py)
COLUMNS = {
    "lutengine-simd-1t-F": "SIMD, F-order A",
    "lutengine-simd-1t": "SIMD, C-order A",
    "lutengine-simd-2t-F": "SIMD, F-order, 2 threads",
    "lutengine-1t-F": "plain, F-order",
    "lutengine-1t": "plain, C-order",
    "lutengine-2t": "plain, F-order, 2 threads",
    "blas-2t": "BLAS 2 threads",
    "pq-1t": "PQ",
}


def speedups(report):
    """{M: {C: {impl: BLAS min time / impl min time}}} and {M: {C: BLAS min ms}}."""
    mins = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        mins.setdefault((info["M"], info["C"]), {})[info["impl"]] = bench["stats"]["min"]
    ratios, blas_ms = {}, {}
    for (M, C), times in sorted(mins.items()):
        ratios.setdefault(M, {})[C] = {impl: times["blas"] / t for impl, t in times.items()}
        blas_ms.setdefault(M, {})[C] = times["blas"] * 1e3
    return ratios, blas_ms


def _blas_build(report):
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if info.get("impl") == "blas":
            return (f"{info['blas_internal_api'][0]} ({info['blas_architecture'][0]}), "
                    f"numba {info['numba_version']}")
    return "unknown"


def markdown(report, ratios, blas_ms):
    machine, commit = report["machine_info"], report.get("commit_info", {})
    dirty = " (uncommitted changes)" if commit.get("dirty") else ""
    lines = [
        "# LutMatmul.predict against BLAS",
        "",
        "Written by `python bench/report.py` from `speed_matmul.json` (pytest-benchmark). "
        "N = 10 000 rows, D = 512, float32; speed-up = min time of 1-thread BLAS / min time of "
        "the implementation, all measured in the same run, threads pinned (BLAS via "
        "threadpoolctl, Numba via `numba.set_num_threads`).",
        "",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} logical cores, "
        f"Python {machine.get('python_version', '?')}; BLAS {_blas_build(report)}; commit "
        f"{commit.get('id', '?')[:7]}{dirty}; run at {report.get('datetime', '?')}, load "
        f"average (1, 5, 15 min) at its end {machine.get('loadavg', '?')}.",
        "",
        "![speed](speed_matmul.png)",
    ]
    for M, by_c in ratios.items():
        lines += ["", f"## M = {M} outputs", "",
                  "| C | " + " | ".join(COLUMNS.values()) + " | BLAS 1 thread (ms) |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        for C, row in by_c.items():
            cells = [f"{row[impl]:.1f}×" if impl in row else "–" for impl in COLUMNS]
            lines.append(f"| {C} | " + " | ".join(cells) + f" | {blas_ms[M][C]:.2f} |")
    return "\n".join(lines) + "\n"


def plot(ratios, path):
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(ratios), 4), squeeze=False)
    for ax, (M, by_c) in zip(axes[0], ratios.items()):
        Cs = list(by_c)
        for impl, label in COLUMNS.items():
            measured = [C for C in Cs if impl in by_c[C]]
            if measured:
                ax.plot(measured, [by_c[C][impl] for C in measured], marker="o", label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="codebooks C", title=f"M = {M} outputs",
               ylabel="speed-up over 1-thread BLAS")
        ax.set_xticks(Cs, [str(C) for C in Cs])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest --benchmark-json output")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    for bench in report["benchmarks"]:
        bench["stats"].pop("data", None)
    args.json.write_text(json.dumps(report, indent=1))
    ratios, blas_ms = speedups(report)
    out = args.json.with_suffix(".md")
    out.write_text(markdown(report, ratios, blas_ms))
    plot(ratios, args.json.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
