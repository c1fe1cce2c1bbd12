"""The layering and kernel conventions of docs/architecture.md, checked on the code itself."""

import ast
import importlib
import pkgutil
from pathlib import Path

import numba
import pytest

import kernels
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


def test_kernels_never_import_lutengine():
    for path in Path(kernels.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("lutengine") for n in names), path


@pytest.mark.parametrize("module, name, kernel", list(_public_kernels()), ids=lambda x: getattr(x, "__name__", x))
def test_kernel_flags(module, name, kernel):
    opts = kernel.targetoptions
    assert type(kernel._cache).__name__ != "NullCache"  # compiled with cache=True
    assert opts.get("nogil") is True
    assert opts.get("error_model") == "numpy"
    # a flag set, never fastmath=True; or none at all for exact fit-time decisions
    assert opts.get("fastmath") in (FASTMATH, set(FASTMATH), False, None) and opts.get("fastmath") is not True
    assert bool(opts.get("parallel", False)) == name.endswith("_parallel")


def test_every_parallel_kernel_has_a_serial_twin_and_a_reference():
    names = {name for _, name, _ in _public_kernels()}
    for name in names:
        # a SIMD primitive's plain twin (kernels/simd.py) shares the primitive's oracle
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
