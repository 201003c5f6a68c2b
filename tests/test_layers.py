"""The import contracts of the product's code (docs/ARCHITECTURE.md, "Layers"), checked on every run.

- No cycle between modules: a module never needs, through module-level imports, something that needs it. An
  import inside a function is no way around this rule; the few that choose an implementation at run time
  (a factory importing the kinds it picks from) are listed below with their reason, and nothing else may close
  a cycle.
- The standalone programs (the seat frontend, the GPU worker, the ComfyUI simulator) never import Django or
  the hub, directly or through what they import: each runs in an image of its own.
- The instructor's side is the roof: ``workshops.instructor``, each app's ``admin`` and ``comfyume.urls`` may
  import anything, and nothing else imports them, not even inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("comfyume", "workshops", "jobs", "gpu_backends", "storage")

# Imports inside a function that may close a cycle: a factory picking one implementation of a protocol the
# module defines, imported only when that kind is asked for (its dependencies are optional at import time).
FACTORIES = {
    ("storage.stores", "storage.r2"): "default_store picks R2 (boto3) only when configured",
    ("workshops.provisioning", "workshops.provisioning.process"): "get_driver picks the seat driver",
    ("workshops.provisioning", "workshops.provisioning.docker"): "get_driver picks the seat driver (docker SDK)",
}

STANDALONE = {
    "workshops.seat_frontend": "the seat frontend (deploy/seat-frontend)",
    "gpu_backends.worker": "the GPU worker (deploy/gpu-worker)",
    "gpu_backends.simulator": "the ComfyUI simulator",
}
# The project's modules outside its folder a program may import: pure ones, which its image copies beside it.
SHARED = {
    "gpu_backends.simulator": {"jobs", "jobs.preflight"},  # ComfyUI's own validation, as the hub applies it
}

# The roof: what shows the instructor's side (the live dashboard, the admin's pages and base class, each app's
# admin) and what mounts it all. A package named here holds its submodules too.
ROOF = (
    "workshops.instructor",
    *(f"{package}.admin" for package in PACKAGES if (ROOT / package / "admin.py").exists()),
    "comfyume.urls",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "tests" in parts or "migrations" in parts:
                continue
            name = ".".join(parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(module imported, whether the import is inside a function) for each import of one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule, not a cycle through pkg's __init__.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append((target, getattr(node, "col_offset", 0) > 0))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def imports() -> dict[str, list[tuple[str, bool]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_module_needs_what_needs_it(imports):
    graph = {m: {t for t, lazy in deps if not lazy or (m, t) in FACTORIES} for m, deps in imports.items()}
    allowed = {frozenset(pair) for pair in FACTORIES}
    cycles = [c for c in _cycles(graph) if not (len(c) == 2 and frozenset(c) in allowed)]
    cycles = [c for c in cycles if not _only_factory_cycles(c, graph)]
    assert not cycles, f"import cycles: {cycles}"


def _only_factory_cycles(component: list[str], graph: dict[str, set[str]]) -> bool:
    """A component that is no cycle at all once the listed factory imports are taken out."""
    members = set(component)
    without = {m: {t for t in graph[m] if t in members and (m, t) not in FACTORIES} for m in component}
    return not _cycles(without)


def test_a_function_level_import_closes_no_cycle_unless_it_is_a_listed_factory(imports):
    graph = {m: {t for t, _ in deps} for m, deps in imports.items()}
    closing = []
    for module, deps in imports.items():
        for target, lazy in deps:
            if lazy and (module, target) not in FACTORIES and _reaches(graph, target, module):
                closing.append(f"{module} -> {target}")
    assert not closing, f"imports inside functions that hide a cycle: {closing}"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_the_contract_sees_a_cycle_when_there_is_one():
    """The checker itself: a cycle hidden behind an import in a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _reaches(graph, "b", "a") and not _reaches(graph, "a", "d")


def _in_roof(module: str) -> bool:
    return any(module == roof or module.startswith(f"{roof}.") for roof in ROOF)


def _roof_breaches(imports: dict[str, list[tuple[str, bool]]]) -> list[str]:
    """Each import of the roof by a module outside it, as ``importer -> imported``."""
    return sorted(
        f"{module} -> {target}"
        for module, deps in imports.items()
        if not _in_roof(module)
        for target, _lazy in deps
        if _in_roof(target)
    )


def test_nothing_below_the_instructors_side_imports_it(imports):
    # A roof that was renamed away would make the rule hold for nothing.
    assert not [roof for roof in ROOF if roof not in imports], f"the roof names modules that do not exist: {ROOF}"
    breaches = _roof_breaches(imports)
    assert not breaches, (
        "the instructor's side (workshops.instructor, each app's admin, comfyume.urls) is the roof: nothing "
        "below it may import it, not even inside a function; move what these need into the floor "
        f"(a model, a service, jobs/instructor.py, workshops/audit.py): {breaches}"
    )


def test_the_roof_contract_sees_an_import_from_below():
    """The checker itself: the floor importing the roof, at module level or in a function, is found; the roof
    importing the floor, or one part of the roof another, is not."""
    imports = {
        "jobs.services": [("workshops.instructor.dashboard", True), ("jobs.models", False)],
        "storage.views": [("gpu_backends.admin", False)],
        "workshops.admin": [("workshops.instructor.admin_base", False), ("jobs.services", False)],
        "workshops.instructor.views": [("jobs.admin", False), ("workshops.services", False)],
        "comfyume.urls": [("workshops.instructor.urls", False)],
        "workshops.instructors": [("jobs.models", False)],
    }
    assert _roof_breaches(imports) == [
        "jobs.services -> workshops.instructor.dashboard",
        "storage.views -> gpu_backends.admin",
    ]
    assert not _in_roof("workshops.instructors") and not _in_roof("jobs.admin_helpers")


@pytest.mark.parametrize("program", sorted(STANDALONE))
def test_a_standalone_program_imports_neither_django_nor_the_hub(program):
    """Import every module of the program in a fresh interpreter without Django's settings, then look at what
    came in with them."""
    script = f"""
import importlib, pkgutil, sys
package = importlib.import_module({program!r})
for info in pkgutil.walk_packages(package.__path__, {program!r} + "."):
    if ".tests" not in info.name:
        importlib.import_module(info.name)
hub = [m for m in sys.modules if m.split(".")[0] in ("django", "channels", "rq", "comfyume")]
project = [m for m in sys.modules if m.split(".")[0] in {PACKAGES!r} and m != {program!r}
           and not m.startswith({program!r} + ".") and m != {program!r}.rpartition(".")[0]]
print(",".join(sorted(hub)))
print(",".join(sorted(project)))
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    hub, project = (line.split(",") if line else [] for line in done.stdout.split("\n")[:2])
    assert hub == [], f"{STANDALONE[program]} imports {hub}"
    outside = set(project) - SHARED.get(program, set())
    assert not outside, f"{STANDALONE[program]} imports {sorted(outside)} from outside its folder"
