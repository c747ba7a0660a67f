"""The layout holds: the library's imports run one way, down a declared order of its folders (the stage order, over
`core`), the module graph (deferred imports included) has no cycle, and every deferred import says why on its line
(`# lazy: <reason>`). `tests/test_docs.py` checks that docs/architecture.md names every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the three source folders (pyproject.toml maps cli/ and analyses/ into the package).
FOLDERS = {"safesteer_interp": ROOT / "safesteer_interp", "safesteer_interp.cli": ROOT / "cli",
           "safesteer_interp.analyses": ROOT / "analyses"}


def library_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the library."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "safesteer_interp" and parts[:1] in (["cli"], ["analyses"]):
                continue
            modules[".".join([package, *parts])] = path
    return modules


def imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The library modules an import statement loads (a `from pkg import sub` counts as an import of pkg.sub)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    base = module if is_package else module.rsplit(".", 1)[0]
    for _ in range(max(node.level - 1, 0)):
        base = base.rsplit(".", 1)[0]
    target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
    names = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
    return names or ([target] if target in known else [])


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules it imports, deferred imports without a `# lazy:` reason as 'file:line')."""
    modules = library_modules()
    known = set(modules)
    graph, unexplained = {}, []
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = set(map(id, tree.body))
        graph[name] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = imported(node, name, path.name == "__init__.py", known)
            graph[name].update(t for t in targets if t != name)
            # `if TYPE_CHECKING:` blocks never run; anything else below the top level is deferred
            deferred = id(node) not in top and not _under_type_checking(tree, node)
            if deferred and "# lazy:" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return graph, unexplained


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for block in tree.body:
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            if any(child is node for child in ast.walk(block)):
                return True
    return False


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


# The library's rooms, bottom to top: a module may import from its own room and from rooms below it, never above. The
# stages read in the pipeline's order (direction -> teacher -> tokens -> distill), over the shared floors; `evaluate`
# sits below `distill` because the deep variants choose their teacher on validation with its instruments.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "presets"),
    ("core",),
    ("data",),
    ("organism",),
    ("direction",),
    ("teacher",),
    ("tokens",),
    ("evaluate",),
    ("distill",),
    ("report",),
    ("pipeline", "smoke", "testing"),
    ("analyses",),
    ("cli",),
)


def room(module: str) -> str:
    """The room of a dotted module name: its first name under `safesteer_interp` ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor_of(module: str) -> int:
    """The floor index of a module's room; a room missing from FLOORS is an error of the declaration."""
    name = room(module)
    for level, rooms in enumerate(FLOORS):
        if name in rooms:
            return level
    raise AssertionError(f"{module}: room {name!r} is not in FLOORS (tests/test_layout.py); declare where it sits")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs up the declared floors, as 'importer -> imported'."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if room(a)
                  for b in targets if room(b) and floor_of(b) > floor_of(a))


def test_the_floor_check_finds_a_planted_upward_import():
    graph = {"safesteer_interp.core.hooks": {"safesteer_interp.distill.losses"},
             "safesteer_interp.distill.losses": {"safesteer_interp.core.hooks"}}
    assert upward_imports(graph) == ["safesteer_interp.core.hooks -> safesteer_interp.distill.losses"]


def test_every_room_is_declared_on_a_floor():
    graph, _ = import_graph()
    undeclared = sorted({room(m) for m in graph if room(m)} - {r for rooms in FLOORS for r in rooms})
    assert not undeclared, f"rooms missing from FLOORS: {undeclared}"


def test_no_import_runs_up_the_floors():
    graph, _ = import_graph()
    upward = upward_imports(graph)
    assert not upward, "imports against the declared folder order:\n  " + "\n  ".join(upward)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_deferred_and_relative_imports():
    graph, _ = import_graph()
    assert "safesteer_interp.core.hooks" in graph["safesteer_interp.direction.candidates"]
    assert "safesteer_interp.analyses.common" in graph["safesteer_interp.analyses.sparsity"] or \
        any("safesteer_interp.analyses." in m for m in graph["safesteer_interp.analyses.why_tokens"])
    assert len(graph) > 60


def test_the_library_has_no_import_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_deferred_import_says_why():
    _, unexplained = import_graph()
    if unexplained:
        pytest.fail("function-local imports without a `# lazy: <reason>` comment: " + ", ".join(unexplained))


def test_pyproject_ships_every_subpackage():
    """The package list in pyproject.toml is written by hand: a new stage folder missing there would be left out
    of a (non-editable) install."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "safesteer_interp").rglob("__init__.py")}
    assert found - declared == set(), f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - declared)}"
