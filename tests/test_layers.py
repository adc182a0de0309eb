"""The import contract between the layers, read from the source with `ast`.

Every import counts: at module level, inside functions and classes, under `if` (also
`if TYPE_CHECKING:`). Relative imports are resolved against the importing module.
`from a.b import c` is an import of the module a.b.c when that module exists, else of a.b.

- worker.engine (the serving core) imports neither redis, shared.settings,
  worker.service nor worker.training;
- worker.service does not import worker.training;
- producer never imports torch or timm;
- the shared core (shared minus console, delivery and alerts_cli) never imports
  shared.console, shared.delivery, worker or producer;
- no import cycle among the project's modules.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "producer", "shared")

ImportGraph = dict[str, set[str]]


# -- the checker -------------------------------------------------------------------


def find_modules(root: Path, packages: Sequence[str]) -> dict[str, Path]:
    """Every .py file under the given top-level packages, by dotted module name."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def resolve_from(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute module a `from ... import` statement names (relative ones resolved)."""
    if level == 0:
        assert module is not None
        return module
    package = importer if is_package else importer.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        raise ValueError(f"{importer}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def imported_names(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The absolute names of every module `name` (at `path`) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(name, is_package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def import_graph(root: Path, packages: Sequence[str]) -> ImportGraph:
    """Each project module and everything it imports (project and third-party names)."""
    modules = find_modules(root, packages)
    return {name: imported_names(name, path, modules) for name, path in modules.items()}


def within(name: str, prefix: str) -> bool:
    """True if `name` is the module `prefix` or one inside it."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Rule:
    """Modules within `importers` (but not within `exempt`) never import within `forbidden`."""

    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()

    def covers(self, module: str) -> bool:
        return any(within(module, p) for p in self.importers) and not any(
            within(module, p) for p in self.exempt
        )


def violations(graph: ImportGraph, rules: Sequence[Rule]) -> list[str]:
    """One line per forbidden import: importer, what it imports, and the rule's forbidden set."""
    found = []
    for importer, imported in sorted(graph.items()):
        for rule in rules:
            if not rule.covers(importer):
                continue
            for name in sorted(imported):
                if any(within(name, f) for f in rule.forbidden):
                    found.append(
                        f"{importer} imports {name} (forbidden: {', '.join(rule.forbidden)})"
                    )
    return found


def project_edges(graph: ImportGraph) -> dict[str, set[str]]:
    """The graph restricted to edges between the project's own modules."""
    return {
        name: {m for m in imported if m in graph and m != name} for name, imported in graph.items()
    }


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """Every import cycle among project modules, one per strongly connected component.

    Each is reported as a closed path a → b → … → a (Tarjan's algorithm, then a
    breadth-first search inside the component for a concrete loop).
    """
    edges = project_edges(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(_loop_through(min(c), c, edges) for c in components)


def _loop_through(start: str, component: set[str], edges: Mapping[str, set[str]]) -> list[str]:
    """A shortest path start → … → start inside one strongly connected component."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node] & component):
                if nxt == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(parents[chain[-1]])
                    return [*reversed(chain), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a component without a loop back to it")


# -- the contract ------------------------------------------------------------------

SHARED_OUTSIDE_CORE = ("shared.console", "shared.delivery", "shared.alerts_cli")
CONTRACT = {
    "the engine knows nothing of Redis, settings, the service or training": Rule(
        importers=("worker.engine",),
        forbidden=("redis", "shared.settings", "worker.service", "worker.training"),
    ),
    "serving never imports training": Rule(
        importers=("worker.service",), forbidden=("worker.training",)
    ),
    "the producer never imports torch or timm": Rule(
        importers=("producer",), forbidden=("torch", "timm")
    ),
    "the shared core imports neither the console, delivery, the worker nor the producer": Rule(
        importers=("shared",),
        exempt=SHARED_OUTSIDE_CORE,
        forbidden=("shared.console", "shared.delivery", "worker", "producer"),
    ),
}


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return import_graph(ROOT, PACKAGES)


def test_the_checker_reads_the_whole_tree(graph: ImportGraph) -> None:
    """The graph holds every layer's modules and real imports, so an empty read cannot pass the contract."""
    for package in (
        "worker.engine",
        "worker.service",
        "worker.training",
        "producer.synthetic",
        "shared.console",
        "shared.delivery",
    ):
        inside = [module for module in graph if module.startswith(package + ".")]
        assert package in graph and inside, f"no modules read under {package}"
    assert "worker.engine.erasing" in graph["worker.service.loop"]
    assert "worker.engine.preprocess" in graph["worker.training.data"]
    assert "torch" in graph["worker.engine.erasing"]
    for description, rule in CONTRACT.items():
        assert any(rule.covers(module) for module in graph), f"no module under: {description}"


@pytest.mark.parametrize("rule", CONTRACT.values(), ids=CONTRACT.keys())
def test_layer_rule(graph: ImportGraph, rule: Rule) -> None:
    """Each layer imports nothing its rule forbids, at module level or inside a function."""
    assert violations(graph, [rule]) == []


def test_no_import_cycles(graph: ImportGraph) -> None:
    """No chain of imports among the project's modules leads back to where it started."""
    assert import_cycles(graph) == []


# -- the checker catches what it should ----------------------------------------------

SYNTHETIC_TREE = {
    "core/__init__.py": "",
    "core/a.py": "from . import b\n",  # relative, a module: edge to core.b
    "core/b.py": "def later():\n    from .c import helper\n",  # function level: core.c
    "core/c.py": "from core.a import VALUE\n",  # an attribute: edge to core.a, closing a loop
    "core/d.py": "import core.a\nimport json\n",  # outside the loop
    "app/__init__.py": "",
    "app/engine/__init__.py": "",
    "app/engine/run.py": (
        "import numpy\n\n\ndef go():\n    import redis\n    from ..service import loop\n"
    ),
    "app/service/__init__.py": "",
    "app/service/loop.py": "import app.engine.run\n",
}
SYNTHETIC_RULE = Rule(importers=("app.engine",), forbidden=("redis", "app.service"))


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_catches_a_forbidden_import_and_cycles(tmp_path: Path) -> None:
    """On a small synthetic tree the checker resolves relative and function-level imports, reports the forbidden ones and finds both cycles."""
    write_tree(tmp_path, SYNTHETIC_TREE)
    graph = import_graph(tmp_path, ("core", "app"))

    assert graph["core.a"] == {"core.b"}
    assert graph["core.b"] == {"core.c"}
    assert graph["core.c"] == {"core.a"}
    assert graph["app.engine.run"] == {"numpy", "redis", "app.service.loop"}
    assert violations(graph, [SYNTHETIC_RULE]) == [
        "app.engine.run imports app.service.loop (forbidden: redis, app.service)",
        "app.engine.run imports redis (forbidden: redis, app.service)",
    ]
    assert import_cycles(graph) == [
        ["app.engine.run", "app.service.loop", "app.engine.run"],
        ["core.a", "core.b", "core.c", "core.a"],
    ]


def test_checker_passes_the_synthetic_tree_once_it_is_fixed(tmp_path: Path) -> None:
    """With the forbidden imports and the loops removed, the same checker reports nothing."""
    fixed = {
        **SYNTHETIC_TREE,
        "core/c.py": "import json\n",
        "app/engine/run.py": "import numpy\n",
    }
    write_tree(tmp_path, fixed)
    graph = import_graph(tmp_path, ("core", "app"))
    assert violations(graph, [SYNTHETIC_RULE]) == []
    assert import_cycles(graph) == []


def test_relative_imports_resolve_against_the_importing_module() -> None:
    """A relative import resolves from the importing module's package (a package's __init__ counts as the package itself) and cannot climb above the top level."""
    assert resolve_from("a.b.c", False, 1, "d") == "a.b.d"
    assert resolve_from("a.b.c", False, 2, None) == "a"
    assert resolve_from("a.b", True, 1, "c") == "a.b.c"
    assert resolve_from("a.b", True, 2, "x") == "a.x"
    assert resolve_from("a.b", False, 0, "x.y") == "x.y"
    with pytest.raises(ValueError, match="beyond the top-level package"):
        resolve_from("a.b", False, 2, "x")
