"""Write docs/results.md, README.md's headline and first-run blocks, the QALSH parameter
table of docs/algorithms.md, the compile-time table of docs/architecture.md and the op list
docs/ops.md (from the op table, lutengine/ops.py).

    python docs/build_results.py

Every measured figure is read from a JSON file that a command wrote: ``lutengine reproduce``
(stamped with its command line and commit) or ``pytest --benchmark-json`` followed by
``bench/report.py``; the QALSH table is computed by ``lutengine.h2alsh``. :func:`build`
returns the new texts without writing them; tests/test_docs.py checks that the committed
files equal them.
"""

import importlib.util
import json
import re
from pathlib import Path

from lutengine import h2alsh, ops
from lutengine.experiments._common import provenance_line

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
README_MARKERS = ("<!-- headline:begin -->", "<!-- headline:end -->")
QALSH_MARKERS = ("<!-- qalsh-table:begin -->", "<!-- qalsh-table:end -->")
FIRST_RUN_MARKERS = ("<!-- first-run:begin -->", "<!-- first-run:end -->")
COMPILE_MARKERS = ("<!-- compile-times:begin -->", "<!-- compile-times:end -->")
#: the first-run files, written by bench/first_run.py
FIRST_RUN = ("first_run", "compile_times")
#: ring sizes of the QALSH table (those tests/test_h2alsh.py checks)
QALSH_RING_ROWS = (401, 1000, 5000, 10**5, 10**6)


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT, GPU_CHECK = _bench_module("report"), _bench_module("gpu_check")
#: the command that writes docs/results/gpu_check.json (on a machine with an NVIDIA GPU)
GPU_CHECK_COMMAND = "python bench/gpu_check.py --out docs/results"


# -- reading ---------------------------------------------------------------------------------

def load_results():
    """{file stem: parsed JSON} of every ``*.json`` in docs/results/."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}


def reproduce_command(experiment, result):
    """The ``lutengine reproduce`` call that writes ``result`` of ``experiment`` (its NAME)."""
    options = [f"--dataset {result['dataset']}"]
    if experiment == "mips_speed":
        n_rows, d = result["dataset"].split("x")
        options = [f"--n-rows {n_rows}", f"--dim {d}"]
    return f"lutengine reproduce {experiment.replace('_', '-')} {' '.join(options)} --out docs/results"


def _provenance(experiment, result):
    if "command" in result:
        return provenance_line(result)
    return (f"Command and commit not recorded (written before results were stamped); "
            f"`{reproduce_command(experiment, result)}` rewrites it.")


def _links(stem):
    files = sorted(p.name for p in RESULTS.glob(f"{stem}*") if p.stem == stem
                   or p.stem.startswith(stem + "_") and p.suffix == ".png")
    return "Files: " + ", ".join(f"[{name}](results/{name})" for name in files) + "."


# -- tables ----------------------------------------------------------------------------------

def pivot(rows, row_fields, column_field, cell):
    """Markdown lines: one line per distinct ``row_fields`` (in first-seen order), one
    column per value of ``column_field`` (ascending), ``cell(row)`` where measured."""
    columns = sorted({r[column_field] for r in rows})
    lines = {}
    for r in rows:
        key = tuple(r[f] for f in row_fields)
        lines.setdefault(key, {})[r[column_field]] = cell(r)
    return REPORT.markdown_table([*row_fields, *(f"{column_field} = {c}" for c in columns)],
                  [[*map(_label, key), *(cells.get(c, "–") for c in columns)]
                   for key, cells in lines.items()])


def _label(value):
    return "–" if value is None else str(value)


def classifier_layer(result):
    return [f"Exact test accuracy {result['exact_accuracy']:.4f}. Each cell: accuracy kept "
            "(accuracy / exact accuracy) and speed-up over 1-thread BLAS.", "",
            *pivot(result["rows"], ("method",), "ncodebooks",
                   lambda r: f"{r['relative_accuracy']:.3f}, {r['speedup_vs_blas']:.1f}×")]


def itlumm_mnist(result):
    paper = result["paper_all_layers_percent"]
    rows = result["all_layers"] + [{"method": "paper (Table 1)", "finetune": None,
                                    "ncodebooks": int(C), "accuracy": p / 100}
                                   for C, p in paper.items()]
    return [f"Network {result['network']}, exact test accuracy {result['exact_accuracy']:.4f}. "
            "Test accuracy with every layer replaced:", "",
            *pivot(rows, ("method", "finetune"), "ncodebooks", lambda r: f"{r['accuracy']:.3f}"),
            "", "Speed-up over 1-thread BLAS of each layer alone (batch of the test set):", "",
            *pivot(result["breakeven"], ("layer", "shape"), "ncodebooks",
                   lambda r: f"{r['speedup_vs_blas']:.2f}×")]


def learned_mnist(result):
    lines = []
    for net in result["nets"]:
        rows = [r for r in result["rows"] if r["network"] == net["network"] and r["ncodebooks"]]
        lines += [f"Network {net['network']}, exact test accuracy {net['exact_accuracy']:.4f}, "
                  f"exact forward {net['exact_forward_ms']:.1f} ms. Each cell: test accuracy "
                  f"(mean ± std over seeds for learned), accuracy kept, speed-up of the whole "
                  f"forward over the exact one (1 thread, {result['timing']}), training "
                  "seconds.", "",
                  *pivot(rows, ("method",), "ncodebooks",
                         lambda r: f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}, "
                                   f"{r['relative_accuracy']:.3f}, {r['speedup_vs_exact']:.1f}×, "
                                   f"{r['train_seconds']:.0f} s"), ""]
    if result["ablation"]:
        lines += ["Ablation (one seed; each row switches one part off):", "",
                  *REPORT.markdown_table(
                      ["network", "C", "variant", "accuracy", "kept", "training s"],
                      [[r["network"], str(r["ncodebooks"]), r["method"], f"{r['accuracy']:.4f}",
                        f"{r['relative_accuracy']:.3f}", f"{r['train_seconds']:.0f}"]
                       for r in result["ablation"]])]
    return lines


def quantization(result):
    return ["NMSE of the int8 tables over the NMSE of the float tables: one scale per output "
            "(what `LutMatmul` does), and one scale for all outputs (summed exactly; averaged as "
            "in MADDNESS):", "",
            *pivot(result["rows"], ("layer",), "ncodebooks",
                   lambda r: f"{r['per_output_over_float']:.3f}, "
                             f"{r['single_scale_over_float']:.3f}, "
                             f"{r['averaged_single_scale_over_float']:.2f}")]


def mips_mnist(result):
    full = ", ".join(f"{net} {acc:.4f}" for net, acc in result["full_accuracy"].items())
    return [f"Test accuracy with the first layer computed on the k rows found (full network: "
            f"{full}); `oracle` is the exact top-k ∪ bottom-k.", "",
            *pivot(result["rows"], ("network", "method"), "k", lambda r: f"{r['accuracy']:.4f}")]


def mips_speed(result):
    header = ["norms", "method", "candidates", "codebooks", "rerank", "recall@10",
              "speed-up over brute force", "ms per query"]
    return [f"k = {result['k']}, batch {result['batch']}, {result['n_queries']} queries, "
            f"{result['threads']} thread; {result['timing']}.", "",
            *REPORT.markdown_table(header, [[r["norms"], r["method"], _label(r["candidates"]),
                              _label(r["ncodebooks"]), _label(r["rerank"]),
                              f"{r['recall_at_k']:.3f}", f"{r['speedup_vs_brute']:.1f}×",
                              f"{r['ms_per_query']:.3g}"] for r in result["rows"]])]


def mlp_runtime(result):
    check = result["onnx_check"]
    return [f"Network {result['network']} (exact accuracy {result['exact_accuracy']:.4f}), "
            f"imported from ONNX: largest difference from onnxruntime "
            f"{check['max_relative_error']:.2g} of the output's scale over "
            f"{check['rows']} test rows ({check['predictions_differing']} predictions differ). "
            f"Speed: {result['timing']}.", "",
            *REPORT.markdown_table(
                ["method", "C", "accuracy", "kept", "throughput vs ORT", "batch-1 µs",
                 "latency / ORT"],
                [[r["method"], _label(r["ncodebooks"]), f"{r['accuracy']:.4f}",
                  f"{r['relative_accuracy']:.3f}", f"{r['speedup_vs_ort']:.2f}×",
                  f"{r['batch1_us']:.0f}", f"{r['latency_vs_ort']:.2f}"]
                 for r in result["rows"]]),
            "", f"Targets: kept ≥ {result['targets']['relative_accuracy']}, throughput ≥ "
                f"{result['targets']['speedup_vs_ort']}× ORT's, batch-1 latency ≤ "
                f"{result['targets']['latency_vs_ort']}× ORT's."]


def cifar10_cnn(result):
    ort = next(r for r in result["rows"] if r["method"] == "onnxruntime")
    check = result["import_check"]
    return [f"CNN {result['architecture']['name']} "
            f"(channels {result['architecture']['channels']}, hidden "
            f"{result['architecture']['hidden']}), trained {result['training']['epochs']} "
            f"epochs: torch test accuracy {result['torch_accuracy']:.4f}; imported "
            f"(BatchNorm folded) {result['exact_accuracy']:.4f}, largest difference from the "
            f"module's outputs {check['max_abs_diff_vs_torch']:.2g} "
            f"({check['predictions_differing']} predictions differ). Codebooks per layer: "
            f"min(C, the layer's input features). Speed: {result['timing']}.", "",
            *REPORT.markdown_table(
                ["method", "C", "accuracy", "kept", "images/s", "throughput vs ORT",
                 "batch-1 ms", "latency / ORT"],
                [[r["method"], _label(r["ncodebooks"]), f"{r['accuracy']:.4f}",
                  f"{r['relative_accuracy']:.3f}", f"{r['images_per_second']:.0f}",
                  f"{r['speedup_vs_ort']:.2f}×", f"{r['batch1_ms']:.3f}",
                  f"{r['batch1_ms'] / ort['batch1_ms']:.2f}"] for r in result["rows"]]),
            *(["", "Each weight layer replaced alone (replace_layers, the others exact):", "",
               *REPORT.markdown_table(
                   ["layer", "input features", "C", "accuracy", "kept"],
                   [[str(r["layer"]), str(r["layer_inputs"]), str(r["ncodebooks"]),
                     f"{r['accuracy']:.4f}", f"{r['relative_accuracy']:.3f}"]
                    for r in result["ablation"]])] if result.get("ablation") else [])]


#: experiment NAME -> (section title, renderer), in page order
EXPERIMENTS = {
    "classifier_layer": ("Classifier layer (MADDNESS's softmax experiment)", classifier_layer),
    "itlumm_mnist": ("Every layer replaced (ITLUMM's MNIST table)", itlumm_mnist),
    "learned_mnist": ("Learned lookup-table networks", learned_mnist),
    "mlp_runtime": ("A whole MLP against ONNX Runtime", mlp_runtime),
    "cifar10_cnn": ("A CIFAR-10 CNN on lookup tables", cifar10_cnn),
    "quantization": ("int8 tables on heavy-tailed outputs", quantization),
    "mips_mnist": ("Top-k sparse activation (the MIPS paper's Table 1)", mips_mnist),
    "mips_speed": ("MIPS recall against speed", mips_speed),
}
#: benchmark JSON stem -> section title
BENCHMARKS = {"speed_matmul": "Speed against BLAS", "speed_mips": "MIPS search speed",
              "speed_dask": "predict through Dask",
              "speed_network": "Whole networks against ONNX Runtime and PyTorch"}
FIRST_RUN_TITLE = "First run"


def _experiment_of(stem):
    return next((name for name in EXPERIMENTS if stem.startswith(name + "_")), None)


def _benchmark_section(stem, report):
    """The section of one benchmark JSON; ``report`` None when it is not there yet."""
    lines = [f"## {BENCHMARKS[stem]}", "", "Written by", "", "```bash", *REPORT.COMMANDS[stem],
             "```", ""]
    if report is None:
        return lines + [f"No `docs/results/{stem}.json` yet: the commands above write it."]
    return lines + [REPORT.description(report), "", REPORT.provenance(report), _links(stem), "",
                    f"![{stem}](results/{stem}.png)", *REPORT.tables(report)]


def results_page(results):
    """The text of docs/results.md."""
    unknown = sorted(stem for stem in results if stem not in (*BENCHMARKS, *FIRST_RUN)
                     and stem != "gpu_check" and _experiment_of(stem) is None)
    if unknown:
        raise ValueError(f"no section for the result files {unknown} in docs/results/")
    lines = ["# Results", "",
             "Generated by `python docs/build_results.py` from the files in `docs/results/`, "
             "each written by the command given with it; do not edit by hand. Speed-ups are "
             "min time over min time, measured side by side in one run.", ""]
    for stem in BENCHMARKS:
        lines += [*_benchmark_section(stem, results.get(stem)), ""]
    for experiment, (title, render) in EXPERIMENTS.items():
        stems = [stem for stem in results if _experiment_of(stem) == experiment]
        if stems:
            lines += [f"## {title}", ""]
        for stem in stems:
            result = results[stem]
            images = sorted(p.name for p in RESULTS.glob(f"{stem}_*.png"))
            lines += [f"### {stem}", "", _provenance(experiment, result), _links(stem), "",
                      *(f"![{name}](results/{name})" for name in images[:1]), "",
                      *render(result), ""]
    if "first_run" in results:
        lines += [*_first_run_section(results), ""]
    if "gpu_check" in results:
        lines += _gpu_section(results["gpu_check"])
    return "\n".join(lines).rstrip() + "\n"


def _first_run_section(results):
    first_run = results["first_run"]
    return ["## " + FIRST_RUN_TITLE, "", provenance_line(first_run), _links("first_run"), "",
            *first_run_lines(first_run), "", "The cold demo's output:", "", "```",
            *first_run["demo_output"], "```", "", "### Compile times", "",
            provenance_line(results["compile_times"]), _links("compile_times"), "",
            *compile_table(results["compile_times"])]


def first_run_lines(first_run):
    """The wall times of bench/first_run.py, one bullet per run."""
    machine = first_run["machine"]
    return [f"Measured on {machine['cpu']} ({machine['cpu_count']} cores), numba "
            f"{machine['numba']}:", "",
            *(f"- {row['run']}: {row['seconds']:.0f} s" for row in first_run["rows"])]


def compile_table(compile_times):
    """Per-kernel compile times of ``lutengine warmup --out``, slowest first."""
    return [f"`lutengine warmup`: {compile_times['wall_seconds']:.0f} s wall with "
            f"{compile_times['processes']} worker processes.", "",
            *REPORT.markdown_table(
                ["kernel", "variants compiled", "compile s"],
                [[f"`{row['kernel']}`", str(row["compilations"]), f"{row['compile_seconds']:.1f}"]
                 for row in compile_times["rows"]])]


def first_run_block(results):
    """README's first-run paragraph (empty until bench/first_run.py has run)."""
    if "first_run" not in results:
        return []
    demo = results["first_run"]["demo_output"]
    return [*first_run_lines(results["first_run"]), "", "The demo's verdict on the embedded "
            f"data: `{demo[-1].lstrip('=> ')}` ([{FIRST_RUN_TITLE}]"
            f"(docs/results.md#{_anchor(FIRST_RUN_TITLE)}))."]


def _gpu_section(report):
    lines = ["## GPU check", "", f"Written by `{GPU_CHECK_COMMAND}` on a machine with an NVIDIA "
             "GPU (commit not recorded). " + _links("gpu_check"), "",
             GPU_CHECK.format_table(report["gpu"], report["rows"])]
    if "tests_returncode" in report:
        lines += ["", f"tests/cuda on the GPU: return code {report['tests_returncode']}."]
    return lines


# -- README headline -------------------------------------------------------------------------

def _anchor(title):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def headline(results):
    """The README lines between the headline markers: four figures, each linked to its
    section of docs/results.md; a figure whose file is missing is left out."""
    lines = []
    if "speed_matmul" in results:
        ratios, _ = REPORT.speedups(results["speed_matmul"])
        M, C, impl = max(ratios), 16, "lutengine-simd-1t-F"
        lines.append(f"- **{ratios[M][C][impl]:.0f}× faster than BLAS**: `LutMatmul.predict` "
                     f"with {C} codebooks on 10 000 × 512 float32 inputs (F-ordered), {M} outputs, "
                     f"both on one thread ([{BENCHMARKS['speed_matmul']}]"
                     f"(docs/results.md#{_anchor(BENCHMARKS['speed_matmul'])})).")
    if "classifier_layer_mnist" in results:
        result = results["classifier_layer_mnist"]
        row = next(r for r in result["rows"] if r["method"] == "maddness" and r["ncodebooks"] == 32)
        title = EXPERIMENTS["classifier_layer"][0]
        lines.append(f"- **{row['relative_accuracy']:.1%} of MNIST accuracy kept** "
                     f"({row['accuracy']:.4f} against {result['exact_accuracy']:.4f}) with the "
                     f"512→10 output layer replaced by MADDNESS at {row['ncodebooks']} codebooks, "
                     f"{row['speedup_vs_blas']:.1f}× faster than BLAS on that layer "
                     f"([{title}](docs/results.md#{_anchor(title)})).")
    if "mlp_runtime_mnist" in results:
        result = results["mlp_runtime_mnist"]
        targets = result["targets"]
        rows = [r for r in result["rows"] if r["method"] == "learn_luts"
                and r["relative_accuracy"] >= targets["relative_accuracy"]]
        if rows:
            row = max(rows, key=lambda r: r["speedup_vs_ort"])
            title = EXPERIMENTS["mlp_runtime"][0]
            lines.append(f"- **A whole {result['network'].replace('x', '-')} MNIST network on "
                         f"lookups, {row['speedup_vs_ort']:.1f}× ONNX Runtime's throughput** "
                         f"at {row['relative_accuracy']:.1%} of its accuracy ("
                         f"{row['accuracy']:.4f} against {result['exact_accuracy']:.4f}), every "
                         f"layer learned end to end at {row['ncodebooks']} codebooks and run as "
                         f"one fused kernel; batch-1 latency {row['batch1_us']:.0f} µs against "
                         f"ORT's {row['ort_batch1_us']:.0f} µs, all on one thread "
                         f"([{title}](docs/results.md#{_anchor(title)})).")
    if "mips_speed_1000000x128" in results:
        rows = [r for r in results["mips_speed_1000000x128"]["rows"] if r["method"] == "fastscan"
                and r["ncodebooks"] == 48 and r["rerank"] == 1000]
        title = EXPERIMENTS["mips_speed"][0]
        figures = "; ".join(f"recall@10 {r['recall_at_k']:.3f} at {r['speedup_vs_brute']:.1f}× "
                            f"the speed of brute force on {r['norms']} rows" for r in rows)
        lines.append(f"- **Top-10 MIPS over 10⁶ × 128 rows** by the 4-bit fast scan (48 codebooks, "
                     f"1 000 rows re-ranked, one thread): {figures} "
                     f"([{title}](docs/results.md#{_anchor(title)})).")
    return lines


def qalsh_table(c0=2.0, c=0.5, candidates=100):
    """The lines of docs/algorithms.md's table of QALSH parameters per ring size."""
    w, p1, p2, *_ = h2alsh.qalsh_params(QALSH_RING_ROWS[0], c0, candidates)
    rows = [[str(n), f"{min(candidates / n, 1.0):.4g}",
             *map(str, h2alsh.qalsh_params(n, c0, candidates)[3:])] for n in QALSH_RING_ROWS]
    return [f"b = {h2alsh.ring_ratio(c0, c):.5f}, w = {h2alsh.bucket_width(c0):.4f}, "
            f"p1 = {p1:.4f}, p2 = {p2:.4f}.", "",
            *REPORT.markdown_table(["ring rows n", f"β = {candidates}/n", "tables m", "threshold l"],
                                   rows)]


def between_markers(text, markers, lines):
    """``text`` with the lines between the two ``markers`` replaced by ``lines``."""
    begin, end = text.index(markers[0]), text.index(markers[1])
    return "\n".join([text[:begin] + markers[0], *lines, text[end:]])


def ops_page():
    """docs/ops.md: the op table, as lutengine.ops declares it."""
    return "\n".join([
        "# Ops",
        "",
        "Written by `python docs/build_results.py` from the op table (`lutengine/ops.py`), the "
        "one list the network, the importers and the training modules read.",
        "",
        "A network (`lutengine.nn.Network`) is a graph of these ops. `nn.from_torch` maps the "
        "PyTorch modules and functions of each row (traced by `torch.fx`), `nn.from_onnx` the "
        "ONNX ops; anything else is refused by name and node. Identity / Dropout are removed "
        "at import, and a BatchNorm or a constant Add right after an exact Linear / Conv2d "
        "that feeds only it is folded into that layer. Axis 0 of every value is the batch; "
        "shapes below are per example.",
        "",
        ops.table_markdown(),
        "\"Lookup-table form\": a product with fixed weights that `nn.replace_layers` and "
        "`nn.learn_luts` turn into MADDNESS tables (hash-tree codes and int8 tables; a Conv2d "
        "encodes its patches straight from the image). Every other op runs exactly, in NumPy. "
        "Limits today: Conv2d with groups 1 and dilation 1 (grouped and depthwise "
        "convolutions are refused), pools in floor mode with padding counted in averages, "
        "symmetric padding, Softmax over the last axis, Add / Mul of two values of one rank "
        "or of a value and a constant, Embedding of a table by int64 ids.",
        ""])


def build():
    """{path: new text} of docs/results.md, README.md, docs/algorithms.md,
    docs/architecture.md and docs/ops.md."""
    results = load_results()
    readme, algorithms = ROOT / "README.md", ROOT / "docs" / "algorithms.md"
    architecture = ROOT / "docs" / "architecture.md"
    readme_text = between_markers(readme.read_text(), README_MARKERS, headline(results))
    compile_lines = [provenance_line(results["compile_times"]), "",
                     *compile_table(results["compile_times"])] if "compile_times" in results else []
    return {ROOT / "docs" / "results.md": results_page(results),
            readme: between_markers(readme_text, FIRST_RUN_MARKERS, first_run_block(results)),
            algorithms: between_markers(algorithms.read_text(), QALSH_MARKERS, qalsh_table()),
            architecture: between_markers(architecture.read_text(), COMPILE_MARKERS,
                                          compile_lines),
            ROOT / "docs" / "ops.md": ops_page()}


def main():
    for path, text in build().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
