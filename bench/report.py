"""Speed tables from a pytest-benchmark JSON file, nothing typed by hand.

    python bench/report.py docs/results/speed_matmul.json   (bench/test_bench_matmul.py)
    python bench/report.py docs/results/speed_mips.json     (bench/test_bench_mips.py)
    python bench/report.py docs/results/speed_dask.json     (bench/test_bench_dask.py)
    python bench/report.py docs/results/speed_network.json  (bench/test_bench_network.py)

(the benchmark commands are :data:`COMMANDS`) writes ``{stem}.md`` and ``{stem}.png`` beside
the JSON file and rewrites the JSON without the per-round timings (``stats.data``; the
summary statistics stay). The kind of table follows the benchmark groups (:func:`kind`):
``matmul``, one table per output count M, the speed-up of every implementation over 1-thread
BLAS (min time over min time) per codebook count C; ``mips``, per row count, dimension, norm
distribution and batch, the speed-up of each search method over brute force (BLAS product +
argpartition) and its recall@10; ``dask``, rows per second of ``predict`` locally and through
Dask against 1-thread BLAS; ``network``, per model and batch size, the time, rows per second
and speed-up over onnxruntime (``ort``) of each whole-network runtime. Machine, BLAS build,
commit and load average come from the JSON.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_UNSET_BLAS_OVERRIDES = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
#: stem -> the commands that write ``docs/results/{stem}.json`` and its tables
COMMANDS = {
    "speed_matmul": (f"{_UNSET_BLAS_OVERRIDES} python -m pytest bench/test_bench_matmul.py "
                     "--benchmark-enable --benchmark-min-rounds=9 "
                     "--benchmark-json=docs/results/speed_matmul.json",
                     "python bench/report.py docs/results/speed_matmul.json"),
    "speed_mips": (f"{_UNSET_BLAS_OVERRIDES} python -m pytest bench/test_bench_mips.py "
                   "--benchmark-enable --benchmark-min-rounds=5 "
                   "--benchmark-json=docs/results/speed_mips.json",
                   "python bench/report.py docs/results/speed_mips.json"),
    "speed_dask": (f"{_UNSET_BLAS_OVERRIDES} python -m pytest bench/test_bench_dask.py "
                   "--benchmark-enable --benchmark-json=docs/results/speed_dask.json",
                   "python bench/report.py docs/results/speed_dask.json"),
    "speed_network": (f"{_UNSET_BLAS_OVERRIDES} python -m pytest bench/test_bench_network.py "
                      "--benchmark-enable --benchmark-json=docs/results/speed_network.json",
                      "python bench/report.py docs/results/speed_network.json"),
}

#: column order and headings of the matmul tables (implementations of test_bench_matmul.py)
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
#: the search methods of test_bench_mips.py compared with brute force, in column order
MIPS_METHODS = {"normscan": "normscan (exact)", "h2alsh": "h2alsh (defaults)",
                "fastscan": "fastscan (defaults)"}


def kind(report):
    """"mips" (groups ``mips|...``, bench/test_bench_mips.py), "dask" (``predict-dask|...``,
    bench/test_bench_dask.py), "network" (``network|...``, bench/test_bench_network.py) or
    "matmul" (bench/test_bench_matmul.py)."""
    groups = {(bench.get("group") or "").split("|")[0] for bench in report["benchmarks"]}
    return {frozenset({"mips"}): "mips", frozenset({"predict-dask"}): "dask",
            frozenset({"network"}): "network"}.get(frozenset(groups), "matmul")


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


def mips_speedups(report):
    """{(N, d, norms, batch): {method: (brute min time / method min time, recall@10)}} and
    {(N, d, norms, batch): brute-force min ms}."""
    mins = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        key = (info["N"], info["d"], info["norms"], info["batch"])
        mins.setdefault(key, {})[info["method"]] = (bench["stats"]["min"], info["recall_at_10"])
    ratios, brute_ms = {}, {}
    for key, times in sorted(mins.items()):
        brute = times["brute"][0]
        ratios[key] = {method: (brute / t, recall) for method, (t, recall) in times.items()}
        brute_ms[key] = brute * 1e3
    return ratios, brute_ms


def _blas_build(report):
    for bench in sorted(report["benchmarks"], key=lambda b: b["extra_info"].get("impl") != "blas"):
        info = bench["extra_info"]
        if info.get("blas_internal_api"):
            return (f"{info['blas_internal_api'][0]} ({info['blas_architecture'][0]}), "
                    f"numba {info['numba_version']}")
    return "unknown"


def provenance(report):
    """The machine, BLAS build, commit, date and load average of a benchmark run."""
    machine = report["machine_info"]
    commit = machine.get("code_commit") or report.get("commit_info", {}).get("id", "?")[:7]
    return (f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
            f"{machine.get('cpu', {}).get('count', '?')} logical cores, "
            f"Python {machine.get('python_version', '?')}; BLAS {_blas_build(report)}; commit "
            f"{commit}; run at {report.get('datetime', '?')}, load "
            f"average (1, 5, 15 min) at its end {machine.get('loadavg', '?')}.")


def matmul_tables(report):
    """Markdown lines: one table per output count M."""
    ratios, blas_ms = speedups(report)
    lines = []
    for M, by_c in ratios.items():
        lines += ["", f"**M = {M} outputs**", "",
                  "| C | " + " | ".join(COLUMNS.values()) + " | BLAS 1 thread (ms) |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        for C, row in by_c.items():
            cells = [f"{row[impl]:.1f}×" if impl in row else "–" for impl in COLUMNS]
            lines.append(f"| {C} | " + " | ".join(cells) + f" | {blas_ms[M][C]:.2f} |")
    return lines


def mips_table(report):
    """Markdown lines: one row per (N, d, norms, batch), speed-up (recall@10) per method."""
    ratios, brute_ms = mips_speedups(report)
    lines = ["", "| N × d | norms | batch | brute force (ms) | "
             + " | ".join(MIPS_METHODS.values()) + " |", "|---" * (4 + len(MIPS_METHODS)) + "|"]
    for (N, d, norms, batch), row in ratios.items():
        cells = [f"{row[m][0]:.2f}× ({row[m][1]:.3f})" if m in row else "–" for m in MIPS_METHODS]
        lines.append(f"| {N} × {d} | {norms} | {batch} | {brute_ms[(N, d, norms, batch)]:.3g} | "
                     + " | ".join(cells) + " |")
    return lines


def dask_table(report):
    """Markdown lines: one row per implementation, best and median time, rows per second
    and the speed-up over 1-thread BLAS."""
    stats = {bench["extra_info"]["impl"]: (bench["stats"], bench["extra_info"])
             for bench in report["benchmarks"]}
    blas = stats["blas"][0]["min"]
    return ["", *markdown_table(["impl", "best (ms)", "median (ms)", "rows/s (best)",
                              "speed-up over 1-thread BLAS"],
                             [[f"`{impl}`", f"{s['min'] * 1e3:.0f}", f"{s['median'] * 1e3:.0f}",
                               f"{info['rows'] / s['min'] / 1e6:.2f} M", f"{blas / s['min']:.1f}×"]
                              for impl, (s, info) in stats.items()])]


def network_speedups(report):
    """{model: {rows: {impl: (min seconds, ORT min time / impl min time)}}}: impls in the
    order they ran, batch sizes largest first."""
    mins = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        mins.setdefault(info["model"], {}).setdefault(info["rows"], {})[info["impl"]] = \
            bench["stats"]["min"]
    return {model: {rows: {impl: (t, times["ort"] / t if "ort" in times else float("nan"))
                           for impl, t in times.items()}
                    for rows, times in sorted(by_rows.items(), reverse=True)}
            for model, by_rows in mins.items()}


def _duration(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def network_table(report):
    """Markdown lines: per model, one row per runtime; per batch size its best time, rows
    per second and speed-up over onnxruntime (ORT min time / its min time)."""
    lines = []
    for model, by_rows in network_speedups(report).items():
        impls = list(dict.fromkeys(impl for times in by_rows.values() for impl in times))
        header = ["runtime"] + [f"{label} ({rows} row{'s' * (rows > 1)})" for rows in by_rows
                                for label in ("best", "rows/s", "× ORT")]
        cells = []
        for impl in impls:
            row = [f"`{impl}`"]
            for rows, times in by_rows.items():
                t, ratio = times.get(impl, (None, None))
                row += ["–"] * 3 if t is None else [_duration(t), f"{rows / t:,.0f}",
                                                    f"{ratio:.2f}×"]
            cells.append(row)
        lines += ["", f"**{model}**", "", *markdown_table(header, cells)]
    return lines


def markdown_table(header, rows):
    """Markdown lines of a table: the header, then one line per row (cells as strings)."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def description(report):
    """What was measured, in one paragraph."""
    if kind(report) == "mips":
        return ("Top-10 maximum inner product search, one thread; rows Gaussian or with "
                "log-normal norms (σ = 1). Each cell: min time of brute force (BLAS product + "
                "argpartition) / min time of the method, all measured in the same run, and in "
                "brackets the recall@10 against the exact top-10.")
    if kind(report) == "dask":
        info = report["benchmarks"][0]["extra_info"]
        return (f"`LutMatmul(ncodebooks={info['C']}).predict` with M = {info['M']} outputs on "
                f"{info['rows']} rows × 512 columns (the matmul benchmark's activations repeated), "
                "on one machine: `local-1t` / `local-2t` with 1 / 2 Numba threads; `dask-2x1t-*` "
                "through `predict_dask` on a LocalCluster of 2 worker processes × 1 thread "
                "(1 Numba and 1 BLAS thread each), the input already on the workers in 8 chunks, "
                "the results kept on the workers (`persist`) or gathered into the client "
                "(`gather`).")
    if kind(report) == "network":
        return ("Whole networks on one thread (BLAS and Numba pinned, onnxruntime with one "
                "intra-op and one inter-op thread, `torch.set_num_threads(1)`), on a batch and "
                "on one row; × ORT = min time of onnxruntime (`ort`) / min time of the runtime, "
                "all measured in the same run (> 1 is faster than onnxruntime). "
                "`lutengine-lut-C*`: every weight layer on lookup tables (`replace_layers`, no "
                "fine-tuning: speed only); see bench/test_bench_network.py.")
    return ("N = 10 000 rows, D = 512, float32; speed-up = min time of 1-thread BLAS / min time "
            "of the implementation, all measured in the same run, threads pinned (BLAS via "
            "threadpoolctl, Numba via `numba.set_num_threads`).")


def tables(report):
    """The Markdown lines of the report's tables."""
    return {"mips": mips_table, "dask": dask_table, "matmul": matmul_tables,
            "network": network_table}[kind(report)](report)


#: page title of each kind of benchmark
TITLES = {"matmul": "LutMatmul.predict against BLAS",
          "mips": "MipsIndex.search against brute force",
          "dask": "predict through Dask against the local call",
          "network": "Whole networks against onnxruntime"}


def markdown(report, stem):
    """The page ``{stem}.md``: what was measured, the provenance, the plot, the tables."""
    lines = [f"# {TITLES[kind(report)]}", "",
             f"Written by `python bench/report.py` from `{stem}.json` (pytest-benchmark). "
             f"{description(report)}", "", provenance(report), "", f"![speed]({stem}.png)",
             *tables(report)]
    return "\n".join(lines) + "\n"


def plot_matmul(report, path):
    ratios, _ = speedups(report)
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


def plot_mips(report, path):
    """One panel per norm distribution: the speed-up of each method per setting, as bars."""
    ratios, _ = mips_speedups(report)
    norms_seen = sorted({key[2] for key in ratios})
    fig, axes = plt.subplots(1, len(norms_seen), figsize=(6 * len(norms_seen), 4), squeeze=False)
    width = 0.8 / len(MIPS_METHODS)
    for ax, norms in zip(axes[0], norms_seen):
        keys = [key for key in ratios if key[2] == norms]
        for i, (method, label) in enumerate(MIPS_METHODS.items()):
            speedups = [ratios[key].get(method, (float("nan"),))[0] for key in keys]
            ax.bar([x + i * width for x in range(len(keys))], speedups, width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width for x in range(len(keys))],
                      [f"{N}×{d}\nbatch {batch}" for N, d, _, batch in keys], fontsize=7)
        ax.set(yscale="log", ylabel="speed-up over brute force (1 thread)",
               title=f"top-10 MIPS, {norms} rows")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dask(report, path):
    blas = next(b["stats"]["min"] for b in report["benchmarks"] if b["extra_info"]["impl"] == "blas")
    impls = [b["extra_info"]["impl"] for b in report["benchmarks"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.barh(impls, [blas / b["stats"]["min"] for b in report["benchmarks"]])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set(xlabel="speed-up over 1-thread BLAS", title="LutMatmul.predict, local and through Dask")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_network(report, path):
    """One panel per model: each runtime's speed-up over onnxruntime per batch size, as bars."""
    from matplotlib import ticker

    ratios = network_speedups(report)
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4), squeeze=False)
    for ax, (model, by_rows) in zip(axes[0], ratios.items()):
        impls = list(dict.fromkeys(impl for times in by_rows.values() for impl in times))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            ax.bar([x + i * width for x in range(len(by_rows))],
                   [times.get(impl, (0, float("nan")))[1] for times in by_rows.values()],
                   width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(by_rows))],
                      [f"{rows} row{'s' * (rows > 1)}" for rows in by_rows])
        ax.set(yscale="log", ylabel="speed-up over onnxruntime (1 thread)", title=model)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: the plot of each kind of benchmark
PLOTS = {"matmul": plot_matmul, "mips": plot_mips, "dask": plot_dask, "network": plot_network}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest --benchmark-json output")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    for bench in report["benchmarks"]:
        bench["stats"].pop("data", None)
    args.json.write_text(json.dumps(report, indent=1))
    out = args.json.with_suffix(".md")
    out.write_text(markdown(report, args.json.stem))
    PLOTS[kind(report)](report, args.json.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
