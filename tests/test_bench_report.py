"""bench/report.py: the speed tables are computed from the benchmark JSON, not typed."""

import importlib.util
import json
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"


def _load_report_module():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(impl, M, C, seconds):
    return {"extra_info": {"impl": impl, "M": M, "C": C, "blas_internal_api": ["openblas"],
                           "blas_architecture": ["Haswell"], "numba_version": "0"},
            "stats": {"min": seconds, "data": [seconds] * 3}}


def test_speedups_are_blas_min_over_impl_min(tmp_path):
    report = {"machine_info": {"cpu": {"brand_raw": "cpu", "count": 2}, "loadavg": [1, 1, 1]},
              "commit_info": {"id": "abcdef0123", "dirty": False}, "datetime": "now",
              "benchmarks": [_bench("blas", 10, 2, 4e-3), _bench("lutengine-simd-1t-F", 10, 2, 1e-4),
                             _bench("blas", 10, 16, 5e-3), _bench("pq-1t", 10, 16, 2e-2)]}
    path = tmp_path / "speed_matmul.json"
    path.write_text(json.dumps(report))
    _load_report_module().main([str(path)])
    text = (tmp_path / "speed_matmul.md").read_text()
    assert "| 2 | 40.0× |" in text and "| 4.00 |" in text      # 4 ms / 0.1 ms, BLAS 4 ms
    assert "| 16 | – |" in text and "| 0.2× | 5.00 |" in text  # PQ 5 ms / 20 ms
    assert "commit abcdef0" in text
    assert (tmp_path / "speed_matmul.png").read_bytes()[:4] == b"\x89PNG"
    assert "data" not in json.loads(path.read_text())["benchmarks"][0]["stats"]


def _mips_bench(method, N, norms, seconds, recall):
    return {"group": f"mips|{N}x128|{norms}|batch=1",
            "extra_info": {"method": method, "impl": "blas" if method == "brute" else method,
                           "N": N, "d": 128, "norms": norms, "batch": 1, "recall_at_10": recall,
                           "blas_internal_api": ["openblas"], "blas_architecture": ["Haswell"],
                           "numba_version": "0"},
            "stats": {"min": seconds, "data": [seconds] * 3}}


def test_mips_table_is_brute_min_over_method_min(tmp_path):
    report = {"machine_info": {"cpu": {"brand_raw": "cpu", "count": 2}, "loadavg": [1, 1, 1],
                               "code_commit": "abcdef0-dirty"},
              "commit_info": {"id": "abcdef0123", "dirty": True}, "datetime": "now",
              "benchmarks": [_mips_bench("brute", 1000, "lognormal", 8e-3, 1.0),
                             _mips_bench("normscan", 1000, "lognormal", 1e-3, 1.0),
                             _mips_bench("h2alsh", 1000, "lognormal", 2e-3, 0.875),
                             _mips_bench("brute", 1000, "gaussian", 4e-3, 1.0),
                             _mips_bench("fastscan", 1000, "gaussian", 5e-3, 0.5)]}
    path = tmp_path / "speed_mips.json"
    path.write_text(json.dumps(report))
    _load_report_module().main([str(path)])
    text = (tmp_path / "speed_mips.md").read_text()
    assert "| 1000 × 128 | gaussian | 1 | 4 | – | – | 0.80× (0.500) |" in text
    assert "| 1000 × 128 | lognormal | 1 | 8 | 8.00× (1.000) | 4.00× (0.875) | – |" in text
    assert "commit abcdef0-dirty;" in text  # lutengine's own stamp, not pytest-benchmark's
    assert (tmp_path / "speed_mips.png").read_bytes()[:4] == b"\x89PNG"


def test_dask_table_is_rows_per_second_and_speedup(tmp_path):
    def bench(impl, seconds):
        return {"group": "predict-dask|rows=1000|M=100|C=16",
                "extra_info": {"impl": impl, "rows": 1000, "M": 100, "C": 16,
                               "blas_internal_api": ["openblas"],
                               "blas_architecture": ["Haswell"], "numba_version": "0"},
                "stats": {"min": seconds, "median": 2 * seconds}}

    report = {"machine_info": {}, "benchmarks": [bench("blas", 0.5), bench("local-1t", 0.1)]}
    path = tmp_path / "speed_dask.json"
    path.write_text(json.dumps(report))
    _load_report_module().main([str(path)])
    text = (tmp_path / "speed_dask.md").read_text()
    assert "| `local-1t` | 100 | 200 | 0.01 M | 5.0× |" in text     # 1000 rows / 0.1 s
    assert "| `blas` | 500 | 1000 | 0.00 M | 1.0× |" in text
