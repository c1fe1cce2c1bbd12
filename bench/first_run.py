"""A newcomer's first minutes, measured: ``lutengine demo`` with an empty Numba cache (cold,
as on a fresh machine), the same again (warm), and ``lutengine warmup`` with an empty cache,
which also writes the per-kernel compile times (Numba's event API).

    python bench/first_run.py --out docs/results

writes ``first_run.{json,md}`` (wall times and the demo's output) and
``compile_times.{json,md}``. Every command runs in its own process, on the embedded data
(no MNIST: ``LUTENGINE_DATA`` points to an empty folder). Run it on an otherwise idle
machine: compile times scale with the load.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lutengine.experiments import _common


def _timed(command, env):
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    command = " ".join(["python bench/first_run.py", *(sys.argv[1:] if argv is None else argv)])
    lutengine = [sys.executable, "-m", "lutengine"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, LUTENGINE_DATA=str(Path(scratch) / "no-data"),
                   NUMBA_CACHE_DIR=str(Path(scratch) / "demo-cache"))
        seconds, output = _timed(lutengine + ["demo"], env)
        rows.append({"run": "lutengine demo, empty Numba cache (cold)", "seconds": round(seconds, 1)})
        seconds, _ = _timed(lutengine + ["demo"], env)
        rows.append({"run": "lutengine demo, cache filled (warm)", "seconds": round(seconds, 1)})
        env["NUMBA_CACHE_DIR"] = str(Path(scratch) / "warmup-cache")
        seconds, _ = _timed(lutengine + ["warmup", "--out", str(args.out)], env)
        rows.append({"run": "lutengine warmup, empty Numba cache", "seconds": round(seconds, 1)})
    result = {"machine": _common.machine_info(), "rows": rows,
              "demo_output": output.rstrip("\n").split("\n")}
    json_path, md_path = _common.write_results(result, args.out, "first_run", plots={},
                                               command=command)
    page = [line for line in md_path.read_text().split("\n")
            if not line.startswith("- demo_output:")]  # the output as a block instead
    md_path.write_text("\n".join(page) + "\n## the cold demo's output\n\n```\n" + output
                       + "```\n")
    print(md_path.read_text())


if __name__ == "__main__":
    main()
