"""bench/gpu_check.py: its CPU-side parts, and a --smoke run (on the simulator in CI)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.runs_without_cuda
def test_arguments_table_and_json(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path), "--smoke"])
    assert args.out == tmp_path and args.smoke
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])  # --out is required
    rows = [dict(op="scan", rows=9, M=3, C=2, dtype="float32", ms=1.23456),
            dict(op="matmul", rows=9, M=3, C=None, dtype="float16", baseline="torch",
                 baseline_ms=0.5)]
    table = gpu_check.format_table("Fake GPU", rows).splitlines()
    assert table[0] == "GPU: Fake GPU"
    assert table[2] == "| " + " | ".join(gpu_check.COLUMNS) + " |"
    assert table[4] == "| scan | 9 | 3 | 2 | float32 | 1.235 | – | – |"
    assert table[5] == "| matmul | 9 | 3 | – | float16 | – | torch | 0.500 |"
    path = gpu_check.write_json(tmp_path / "new", {"gpu": "Fake GPU", "rows": rows})
    assert json.loads(path.read_text())["rows"][0]["ms"] == 1.23456


def test_smoke_run(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--smoke"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {row["op"] for row in report["rows"]} >= {"encode", "scan", "predict",
                                                     "h2alsh search"}
    assert all(row.get("ms") is None or row["ms"] > 0 for row in report["rows"])
    assert report["gpu"] in capsys.readouterr().out


@pytest.mark.runs_without_cuda
@pytest.mark.parametrize("returncode", [0, 1, 2])
def test_exit_status_is_the_cuda_tests_return_code(gpu_check, tmp_path, monkeypatch, capsys,
                                                   returncode):
    """A failing GPU test run makes the whole check fail (the timings are still written)."""
    monkeypatch.setattr(gpu_check, "run_tests", lambda: (returncode, "the tests' output"))
    monkeypatch.setattr(gpu_check, "measure", lambda sizes: [])
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: "Fake GPU")
    assert gpu_check.main(["--out", str(tmp_path)]) == returncode
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["tests_returncode"] == returncode
    assert ("the tests' output" in capsys.readouterr().out) == (returncode != 0)
