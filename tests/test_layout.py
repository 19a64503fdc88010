"""The package's import graph has no cycles: every import, lazy ones inside functions included.

A cycle hidden by a lazy import still couples the two modules both ways; the
fix is a leaf module both can import (``audiossl.settings``,
``audiossl.errors``, ``audiossl.version``). Imports under ``if
TYPE_CHECKING:`` are annotations only and never run, so they do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "audiossl"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(tree: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in it but under ``if TYPE_CHECKING:``."""

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names if alias.name.startswith("audiossl"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("audiossl"):
                found.update(owner(f"{base}.{alias.name}") for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    found.discard(None)
    found.discard(module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in known.items()}


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "audiossl.objectives" in graph["audiossl.config"]  # the registry, at the top
    assert "audiossl.config" not in graph["audiossl.objectives.cpc"]  # Config under TYPE_CHECKING only
    assert "audiossl.settings" in graph["audiossl.objectives.cpc"]


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def room_rules() -> dict[str, set[str] | None]:
    """docs/architecture.md's module map: room -> the rooms it may import (None: every room)."""
    rules: dict[str, set[str] | None] = {}
    section = ARCHITECTURE.read_text().split("## Module map", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        room = cells[0].strip("`").rstrip("/")
        allowed = cells[-1]
        rules[room] = None if allowed == "every room" else set() if allowed == "–" else set(allowed.split(", "))
    return rules


def room_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_room_imports_only_what_the_architecture_page_allows():
    rules = room_rules()
    rooms = {room_of(name) for name in module_names()}
    assert rooms == set(rules), "docs/architecture.md's module map and ls audiossl/ differ"
    for room, allowed in rules.items():
        assert allowed is None or allowed <= set(rules), f"{room} may import an unknown room"
    wrong = sorted(f"{module} imports {dep}" for module, deps in import_graph().items() for dep in deps
                   if room_of(dep) != room_of(module) and rules[room_of(module)] is not None
                   and room_of(dep) not in rules[room_of(module)])
    assert wrong == []


def test_the_room_rules_are_read_and_would_catch_an_upward_import():
    rules = room_rules()
    assert rules["errors"] == set() and rules["cli"] is None
    assert rules["utils"] == {"errors"} and "probes" not in rules["train"]
    assert "train" not in rules["models"] and "cli" not in rules["report"]


MAX_MODULE_LINES = 400  # a module past this is split by concept (STYLE.md)
MAX_FUNCTION_LINES = 80  # a function past this is split into named helpers


def oversized(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """What in one source file is over the limits: the module, and each function or method (from its def)."""
    text = path.read_text()
    where = path.relative_to(root)
    found = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{where}: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_or_function_is_too_long():
    assert [item for path in sorted(PACKAGE.rglob("*.py")) for item in oversized(path)] == []


def test_the_size_check_finds_a_long_function_and_a_long_module(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1))
    assert oversized(path, tmp_path) == []
    path.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert oversized(path, tmp_path) == [f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]
    path.write_text("class A:\n    def m(self):\n" + "        x = 1\n" * MAX_FUNCTION_LINES
                    + "\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES))
    assert oversized(path, tmp_path) == [f"m.py: {MAX_MODULE_LINES + 2} lines",
                                         f"m.py:2 m: {MAX_FUNCTION_LINES + 1} lines"]


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("audiossl")):
                wrong += [f"{path.relative_to(PACKAGE.parent)}: {alias.name} from {node.module}"
                          for alias in node.names if alias.name.startswith("_") and not alias.name.endswith("__")]
    assert wrong == []
