"""The layering rules (docs/architecture.md), checked on every import in the package's source,
function-level ones included: an import hidden inside a function is still a breach.

- the core (everything in qcompiler/ except the driver modules) imports neither passes nor
  backends nor the driver;
- backends build on the core only (not on passes or the driver);
- tvm only in backends/; jax only in qcompiler/sim/ and the passes that need gradients;
  onnx_graphsurgeon only in qcompiler/ir/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"qcompiler": ROOT / "qcompiler", "qcompiler.passes": ROOT / "passes", "qcompiler.backends": ROOT / "backends"}

#: The package's face: the Python API, the CLI, the report, the demo and the runtime re-export.
DRIVER = {"qcompiler", "qcompiler.__main__", "qcompiler.driver", "qcompiler.compiler", "qcompiler.cli", "qcompiler.cli_options", "qcompiler.demo",
          "qcompiler.report", "qcompiler.runtime", "qcompiler.cli_train", "qcompiler.cli_tune", "qcompiler.report_training",
          "qcompiler.cli_analyze", "qcompiler.mixed_precision", "qcompiler.report_layers"}
#: Passes that compute gradients (through the simulator) and may import jax themselves.
GRADIENT_PASSES = {"qcompiler.passes.reconstruct_blocks", "qcompiler.passes.train_quant"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement anywhere in the file; relative ones resolved by name only."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def breaches(module: str, imported: str) -> str | None:
    """Why `module` must not import `imported` (None: it may)."""
    layer = ("passes" if _under(module, "qcompiler.passes") else "backends" if _under(module, "qcompiler.backends")
             else "driver" if module in DRIVER else "core")
    driver = _under(imported, *DRIVER - {"qcompiler"})
    if layer == "core" and (_under(imported, "qcompiler.passes", "qcompiler.backends") or driver):
        return "the core imports neither passes, backends nor the driver"
    if layer == "backends" and (_under(imported, "qcompiler.passes") or driver):
        return "backends build on the core only"
    if layer == "passes" and driver:
        return "passes do not import the driver"
    if _under(imported, "tvm") and layer != "backends":
        return "only backends/ imports tvm"
    if _under(imported, "jax") and not (_under(module, "qcompiler.sim") or module in GRADIENT_PASSES):
        return "only qcompiler/sim and the gradient passes import jax"
    if _under(imported, "onnx_graphsurgeon") and not _under(module, "qcompiler.ir"):
        return "only qcompiler/ir imports onnx_graphsurgeon"
    return None


def test_every_import_respects_the_layers():
    found = []
    for module, path in sorted(modules().items()):
        for line, imported in imports(path):
            why = breaches(module, imported)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {imported}: {why}")
    assert not found, "layering breaches:\n" + "\n".join(sorted(set(found)))


@pytest.mark.parametrize("module, imported", [
    ("qcompiler.quant.observers", "qcompiler.passes.annotate_quant"),
    ("qcompiler.data", "qcompiler.backends.tvm.build"),
    ("qcompiler.evaluation", "qcompiler.driver"),
    ("qcompiler.backends.tvm.build", "qcompiler.passes"),
    ("qcompiler.passes.fold_shapes", "onnx_graphsurgeon"),
    ("qcompiler.executor", "tvm.runtime"),
    ("qcompiler.passes.canonicalize", "jax.numpy"),
    ("qcompiler.passes.fold_pad", "qcompiler.cli"),
])
def test_the_rules_catch_a_breach(module, imported):
    assert breaches(module, imported)


@pytest.mark.parametrize("module, imported", [
    ("qcompiler.driver", "qcompiler.passes"), ("qcompiler.compiler", "qcompiler.backends.tvm.build"),
    ("qcompiler.passes.fold_shapes", "qcompiler.ir.fold"), ("qcompiler.backends.tvm.build", "tvm"),
    ("qcompiler.sim.ops_nn", "jax"), ("qcompiler.ir.model", "onnx_graphsurgeon"),
])
def test_the_rules_allow_the_layers(module, imported):
    assert breaches(module, imported) is None


def test_the_scan_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from qcompiler.backends.tvm import build\n    import tvm\n")
    assert (2, "qcompiler.backends.tvm.build") in imports(source) and (3, "tvm") in imports(source)
