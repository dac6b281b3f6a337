"""The layers stand on each other one way: training and the report never import the sweep (nor Ray or
Optuna), and the tracking layer is MLflow only (checked in a fresh interpreter, where nothing else has
imported them first); and no module of the package imports itself back through others."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rdt_core


# What each lower layer must not bring in with it: the sweep's Ray and Optuna, and for the report torch too
# (it reads tracked runs and exports: a report of a sweep starts in a second).
FORBIDDEN = {
    "rdt_core.report": ("ray", "optuna", "torch"),
    "rdt_core.train": ("ray", "optuna"),
    "rdt_core.train.__main__": ("ray", "optuna"),
    "rdt_core.tracking": ("ray", "optuna", "torch"),
    "rdt_core.evaluate": ("ray", "optuna", "mlflow"),
}


@pytest.mark.parametrize("module", FORBIDDEN)
def test_lower_layers_import_no_sweep_ray_or_optuna(module):
    check = (
        f"import sys, {module}; "
        f"found = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN[module]!r} or m.startswith('rdt_core.sweep')); "
        "print(found); sys.exit(1 if found else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def module_imports(root: Path) -> dict[str, set[str]]:
    """For every module of the package under ``root``, the package's modules it imports (at the top or
    inside a function: a lazy import is a dependency all the same), read from the source."""
    package = root.name
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in imported if target in modules and target.startswith(package) and target != name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        if name in done:
            return None
        visiting.append(name)
        for target in sorted(graph[name]):
            if (cycle := visit(target)) is not None:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    return next((cycle for name in sorted(graph) if (cycle := visit(name)) is not None), None)


def test_no_module_of_rdt_core_imports_itself_back():
    """A package importing itself back (a imports b, b imports a, maybe lazily) is the sign of two modules
    that are one: a package's ``__init__`` re-exporting its own modules is not counted as a cycle."""
    graph = module_imports(Path(rdt_core.__file__).parent)
    without_reexports = {
        name: {target for target in targets if not name.startswith(target + ".")} for name, targets in graph.items()
    }
    assert import_cycle(without_reexports) is None, " -> ".join(import_cycle(without_reexports))


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}
    assert import_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert import_cycle({"p.a": {"p.b"}, "p.b": set()}) is None
