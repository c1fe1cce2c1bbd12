"""Docs hold no hand-typed figures: README.md's headline block and docs/results.md are what
docs/build_results.py writes from docs/results/, and every result file is stamped."""

import importlib.util
import json
import subprocess
from pathlib import Path

from lutengine.experiments import _common

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("build_results", ROOT / "docs" / "build_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_and_results_page_are_the_generators_output():
    for path, text in _generator().build().items():
        assert path.read_text() == text, \
            f"{path.relative_to(ROOT)} differs from `python docs/build_results.py`'s output"


def test_every_result_file_is_in_the_results_page():
    page = (ROOT / "docs" / "results.md").read_text()
    for path in (ROOT / "docs" / "results").glob("*.json"):
        assert f"(results/{path.name})" in page, f"{path.name} is not linked from docs/results.md"


def test_readme_has_the_headline_block_and_the_links():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("<!-- headline:begin -->"):readme.index("<!-- headline:end -->")]
    assert block.count("\n- **") == 4 and block.count("(docs/results.md#") == 4
    for doc in ("docs/results.md", "docs/algorithms.md", "docs/architecture.md",
                "docs/scale-out.md"):
        assert f"]({doc})" in readme and (ROOT / doc).exists()


def test_write_results_stamps_the_command_and_the_commit(tmp_path):
    result = {"dataset": "digits", "rows": [{"method": "m", "ncodebooks": 2,
                                             "relative_accuracy": 0.5, "speedup_vs_blas": 2.0}]}
    paths = _common.write_results(result, tmp_path, "demo", command="lutengine reproduce demo")
    assert [p.name for p in paths] == ["demo_digits.json", "demo_digits.md",
                                       "demo_digits_accuracy.png", "demo_digits_speed.png"]
    written = json.loads(paths[0].read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True, check=True).stdout.strip()
    assert written["command"] == "lutengine reproduce demo"
    assert written["commit"] in (head, head + "-dirty")
    assert {k: v for k, v in written.items() if k not in ("command", "commit")} == result
    assert f"Written by `lutengine reproduce demo` at commit {written['commit']}." in \
        paths[1].read_text()


def test_commit_is_none_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert _common.code_commit() is None


def test_command_line_names_the_program():
    assert _common.command_line(["/env/bin/lutengine", "reproduce", "mips-mnist", "--out", "a b"]) \
        == "lutengine reproduce mips-mnist --out 'a b'"
    assert _common.command_line(["/src/lutengine/__main__.py", "warmup"]) == \
        "python -m lutengine warmup"
