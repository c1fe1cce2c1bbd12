"""The layering and kernel conventions of docs/architecture.md, checked on the code itself."""

import ast
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numba
import pytest

import kernels
import lutengine
from lutengine import _dispatch
from kernels._flags import FASTMATH

import reference

KERNEL_MODULES = [importlib.import_module(f"kernels.{m.name}")
                  for m in pkgutil.iter_modules(kernels.__path__)
                  if not m.name.startswith("_") and not m.ispkg]  # kernels.cuda: see below
CUDA_KERNEL_FILES = sorted((Path(kernels.__file__).parent / "cuda").glob("[!_]*.py"))


def _public_kernels():
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and not name.startswith("_") \
                    and obj.__module__ == module.__name__:
                yield module, name, obj


def _imported_modules(path):
    """Every module an ``import`` or ``from … import`` in the file names (absolute only)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_kernels_never_import_lutengine():
    for path in Path(kernels.__file__).parent.rglob("*.py"):
        assert not any(name.startswith("lutengine") for name in _imported_modules(path)), path


#: the only modules of lutengine that import ``kernels``: the dispatch layer (CPU kernels)
#: and the CUDA driver (kernels.cuda)
KERNEL_IMPORTERS = {"_dispatch", "_cuda.py"}


def test_only_the_dispatch_layer_and_the_cuda_driver_import_kernels():
    package = Path(lutengine.__file__).parent
    importers = {path.relative_to(package).parts[0] for path in package.rglob("*.py")
                 if any(name == "kernels" or name.startswith("kernels.")
                        for name in _imported_modules(path))}
    assert importers == KERNEL_IMPORTERS
    cuda_imports = set(_imported_modules(package / "_cuda.py"))
    assert all(name.startswith("kernels.cuda") for name in cuda_imports
               if name.startswith("kernels")), cuda_imports


@pytest.mark.parametrize("module, name, kernel", list(_public_kernels()), ids=lambda x: getattr(x, "__name__", x))
def test_kernel_flags(module, name, kernel):
    opts = kernel.targetoptions
    assert type(kernel._cache).__name__ != "NullCache"  # compiled with cache=True
    assert opts.get("nogil") is True
    assert opts.get("error_model") == "numpy"
    # a flag set, never fastmath=True; or none at all for exact fit-time decisions
    assert opts.get("fastmath") in (FASTMATH, set(FASTMATH), False, None) and opts.get("fastmath") is not True
    # parallel: a "_parallel" kernel (with a "_serial" twin), or one that splits its work
    # over an ``nworkers`` argument (1 worker: the serial path) and has no twin
    takes_workers = "nworkers" in inspect.signature(kernel.py_func).parameters
    serial_twin = hasattr(module, name.removesuffix("_parallel") + "_serial")
    assert bool(opts.get("parallel", False)) == (
        name.endswith("_parallel") or (takes_workers and not serial_twin and not name.endswith("_serial")))


def test_every_parallel_kernel_has_a_serial_twin_and_a_reference():
    names = {name for _, name, _ in _public_kernels()}
    for name in names:
        # a fast-scan kernel's plain variant shares the AVX2 one's oracle
        base = name.removesuffix("_parallel").removesuffix("_serial").removesuffix("_plain")
        if name.endswith("_parallel"):
            assert base + "_serial" in names, name
        assert hasattr(reference, "ref_" + base), f"tests/reference.py lacks ref_{base}"


def _allocations(tree):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr in {"empty", "zeros", "ones", "full"}]


def test_prange_bodies_never_raise_and_allocate_only_once_per_worker():
    """Scratch may be allocated at the top of a per-worker ``prange`` body (once per thread),
    never inside the loops over blocks or rows."""
    for module in KERNEL_MODULES:
        tree = ast.parse(Path(module.__file__).read_text())
        for loop in ast.walk(tree):
            if isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call) \
                    and getattr(loop.iter.func, "id", "") == "prange":
                for node in ast.walk(loop):
                    assert not isinstance(node, (ast.Raise, ast.Assert)), module.__name__
                for stmt in loop.body:
                    for inner in ast.walk(stmt):
                        if isinstance(inner, (ast.For, ast.While)):
                            assert not _allocations(inner), f"allocation in a loop in {module.__name__}"


def _cuda_launched_kernels(tree):
    """Functions decorated with a bare ``@cuda.jit`` (kernels, not device functions)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Attribute) and d.attr == "jit" for d in node.decorator_list):
            yield node


@pytest.mark.parametrize("path", CUDA_KERNEL_FILES, ids=lambda p: p.name)
def test_cuda_kernels_loop_grid_stride(path):
    """Every CUDA kernel strides by the grid (``cuda.gridsize`` or ``cuda.gridDim``) so any
    launch configuration is correct; block sizes arrive from lutengine.config."""
    tree = ast.parse(path.read_text())
    kernels_found = list(_cuda_launched_kernels(tree))
    assert kernels_found, path
    for kernel in kernels_found:
        steps = [ast.unparse(loop.iter.args[2]) for loop in ast.walk(kernel)
                 if isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)
                 and getattr(loop.iter.func, "id", "") == "range" and len(loop.iter.args) == 3]
        assert any("gridsize" in step or "gridDim" in step for step in steps), kernel.name
        assert "lutengine" not in ast.unparse(kernel)


_WARMUP_CHECK = """
import importlib, json, pkgutil, numba, kernels, lutengine
lutengine.warmup(processes=1)
modules = [importlib.import_module(f"kernels.{m.name}") for m in pkgutil.iter_modules(kernels.__path__)
           if not m.name.startswith("_") and not m.ispkg]
print(json.dumps({f"{module.__name__}.{name}": len(obj.signatures) for module in modules
                  for name, obj in vars(module).items()
                  if isinstance(obj, numba.core.registry.CPUDispatcher)}))
"""


def test_warmup_compiles_every_kernel_the_dispatch_layer_can_pick():
    """In a fresh process, after ``warmup`` every kernel the dispatch layer calls has a
    compiled (or cached) variant: a kernel added without a warm-up fails here. Only the
    variants of the current SIMD mode count, the parallel ones where Numba has 2 threads
    or more."""
    done = subprocess.run([sys.executable, "-c", _WARMUP_CHECK], capture_output=True,
                          text=True, timeout=600, check=True)
    compiled = json.loads(done.stdout.strip().splitlines()[-1])
    dispatch_source = "".join(path.read_text() for path in
                              (Path(lutengine.__file__).parent / "_dispatch").glob("*.py"))
    expected = {f"{module.__name__}.{name}" for module, name, _ in _public_kernels()
                if f"{module.__name__.removeprefix('kernels.')}.{name}" in dispatch_source}
    if _dispatch.use_simd():  # the plain fast scan is never picked
        expected = {name for name in expected if not name.endswith("_plain")}
    else:  # the AVX2 kernels are never picked
        expected = {name for name in expected if not name.startswith("kernels.packed.")
                    and name != "kernels.fastscan.fastscan_search"}
    if numba.config.NUMBA_NUM_THREADS < 2:  # the dispatch layer never picks a parallel one
        expected = {name for name in expected if not name.endswith("_parallel")}
    assert expected <= set(compiled)
    assert [name for name in sorted(expected) if compiled[name] == 0] == []


_INFERENCE_WITHOUT_TORCH = """
import sys
import tempfile
import numpy as np
import lutengine as le
from lutengine import cli, datasets, nn
from lutengine.experiments import REGISTRY
X, y = datasets.load_digits()[:2]
net = nn.MLP.train(X, y, [16], epochs=1, progress=False)
replaced = nn.replace_layers(net, X, y, 4, finetune=False, progress=False)
replaced.predict(X)
le.LutMatmul(4, progress=False).fit(X, net.layers[0].W).predict(X)
images = X.reshape(-1, 1, 8, 8)
conv = nn.Conv2d(nn.Dense(np.ones((9, 3)), np.zeros(3)), 1, 3, padding=1)
cnn = nn.Network([conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(nn.Dense(np.ones((48, 10)), np.zeros(10)))], (1, 8, 8))
cnn = nn.replace_layers(cnn, images, y, 4, finetune=False, progress=False)
with tempfile.TemporaryDirectory() as folder:
    cnn.save(folder + "/cnn.npz")
    le.load(folder + "/cnn.npz").predict(images)
print(sorted(name for name in sys.modules if name.split(".")[0] == "torch"))
"""

#: the modules that may import torch, inside functions only (the op table's torch forms,
#: importers, experiments that train or time a PyTorch model, and their shared
#: torch_threads); learned.py is the one that imports it at the top and is itself imported
#: only by nn.learn_luts and nn.replace_layers' fine-tuning
TORCH_IMPORTERS = {"ops.py", "importers.py", "learned.py", "cifar10_cnn.py", "mlp_runtime.py",
                   "_common.py"}


def test_inference_never_imports_torch():
    """Fitting, replacing (without fine-tuning), saving, loading and predicting MLPs and CNNs
    (and the command line's imports) run without torch: only the modules of :data:`TORCH_IMPORTERS` use it, and only when
    called."""
    done = subprocess.run([sys.executable, "-c", _INFERENCE_WITHOUT_TORCH], capture_output=True,
                          text=True, timeout=600, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    sources = {path.name: path.read_text() for path in Path(lutengine.__file__).parent.rglob("*.py")}
    anywhere = {name for name, text in sources.items()
                if re.search(r"^\s*(import|from) torch", text, re.MULTILINE)}
    top_level = {name for name, text in sources.items()
                 if re.search(r"^(import|from) torch", text, re.MULTILINE)}
    assert anywhere <= TORCH_IMPORTERS and top_level == {"learned.py"}
