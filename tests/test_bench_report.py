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
