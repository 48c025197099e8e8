"""The package's structure: planning (sweet/plan/) imports no torch or transformers and nothing of the job side,
and no module of sweet/ takes part in an import cycle (deferred, function-level imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sweet"
HEAVY = ("torch", "transformers")
# What planning may import from sweet/ besides sweet.plan: the shared registries and errors, none of which imports
# torch or transformers at import time (backbones, exits: only inside functions the plan never calls), and
# sweet.tasks (the task sources: standard library only). Export requests are checked by sweet.plan.export_policy.
SHARED = ("sweet", "sweet.errors", "sweet.methods", "sweet.backbones", "sweet.exits", "sweet.tasks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sweet_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The sweet modules ``path`` imports, anywhere in it (top level, functions, TYPE_CHECKING blocks)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from sweet import methods` imports the module sweet.methods; `from sweet.x import name` imports sweet.x
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = sweet_modules()
    known = set(modules)
    # importing a.b.c runs a/__init__ and a/b/__init__ first; `sweet` itself loads its public classes lazily
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_deferred_and_relative_imports() -> None:
    graph = import_graph()
    assert "sweet.plan.layout" in graph["sweet.plan.status"]  # a top-level `from … import (…)`
    assert "sweet.methods" in graph["sweet.plan.settings"]  # `from sweet import methods`
    assert "sweet.plan.hub" in graph["sweet.plan.config"]  # an import inside a function


def test_no_import_cycle_in_sweet() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in sweet/: " + "; ".join(" ↔ ".join(c) for c in found)


def test_planning_imports_nothing_of_the_job_side() -> None:
    """Every sweet module a plan module imports (directly, deferred ones included) is a plan module or shared."""
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("sweet.plan"):
            outside = {m for m in imported if not m.startswith("sweet.plan") and m not in SHARED}
            assert not outside, f"{name} imports {sorted(outside)}, which are not planning modules"


def test_planning_imports_no_torch() -> None:
    """Importing every module under sweet/plan/ in a fresh interpreter loads neither torch nor transformers."""
    plan = sorted(name for name in sweet_modules() if name.startswith("sweet.plan"))
    assert len(plan) >= 8  # settings, config, estimates, layout, status, cluster, migrate, hub (+ the package)
    code = ("import importlib, sys\n"
            f"for name in {plan!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
