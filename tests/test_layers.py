"""The package's layers hold: no import cycle, and no module imports a layer above its own.

The layers, top to bottom (docs/architecture.md draws them):

    cli      usertunnel/cli.py, usertunnel/__main__.py   the command line
    run      usertunnel/run/     the running processes
    front    usertunnel/front/   what a person writes, parsed
    teach    usertunnel/teach/   explain, trace, the labs, pictures
    io       usertunnel/io/      the kernel's interfaces
    core     usertunnel/core/    the protocol, bytes only
    (bottom) usertunnel/__init__.py, which every layer may import

A module may import its own layer and the layers below it. The walk reads each
file with `ast`, so every import counts wherever it stands: at the top of the
module, inside a function (the lazy imports of cli.py), under `if TYPE_CHECKING:`.
Relative imports are resolved against the importing module's package, and
`from P import x` counts as importing the module P.x when P.x is a module.

The same walk gives the list of modules, which docs/architecture.md must list
exactly (its "Where everything lives" block), so the document stays true.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "usertunnel"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Bottom to top. The package's own __init__ (the version) is below every layer.
LAYERS = ("core", "io", "teach", "front", "run", "cli")
BOTTOM = "(the package root)"
_TOP_MODULES = {"cli": "cli", "__main__": "cli"}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `importer` (a module) imports `imported` (a module of the package) at `line`."""

    importer: str
    imported: str
    path: Path
    line: int

    def where(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def package_modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of `package` (whose directory is `root`): dotted name -> file. A package is its __init__.py."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(name: str, modules: dict[str, Path]) -> list[Import]:
    """The imports of module `name` that land in the package, wherever they stand in the file."""
    path = modules[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    # The package a relative import starts from: the module's own if it is a package's __init__.
    here = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
    root = next(iter(modules)).split(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt) -> None:
        if target == root or target.startswith(root + "."):
            # `import usertunnel.core.gre.something_else`: the longest prefix that is a module.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            found.append(Import(name, target, path, node.lineno))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                assert len(base) >= 1, f"{path}:{node.lineno}: relative import above the package"
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, node)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, list[Import]]:
    """Module -> its imports of other modules of the package (an import of itself is kept: a cycle of one)."""
    return {name: imports_of(name, modules) for name in modules}


def layer_of(name: str) -> str | None:
    """The layer a module belongs to; BOTTOM for the package's own __init__; None if it belongs to none."""
    parts = name.split(".")
    if len(parts) == 1:
        return BOTTOM
    if parts[1] in _TOP_MODULES and len(parts) == 2:
        return _TOP_MODULES[parts[1]]
    return parts[1] if parts[1] in LAYERS and parts[1] not in _TOP_MODULES else None


def _rank(layer: str) -> int:
    return -1 if layer == BOTTOM else LAYERS.index(layer)


def layer_violations(graph: dict[str, list[Import]], only: Iterable[str] = LAYERS) -> list[str]:
    """Each import of a higher layer by a module of one of the layers `only`, as a line naming both and where."""
    wanted = set(only)
    problems: list[str] = []
    for name, edges in sorted(graph.items()):
        mine = layer_of(name)
        if mine is None or mine not in wanted:
            continue
        for edge in edges:
            theirs = layer_of(edge.imported)
            if theirs is None or _rank(theirs) > _rank(mine):
                below = [BOTTOM.strip("()"), *LAYERS[: _rank(mine) + 1]] if mine != BOTTOM else []
                problems.append(
                    f"{edge.where()}: {name} ({mine}) imports {edge.imported} ({theirs or 'no layer'}); "
                    f"{mine} may import only: {', '.join(below) or 'nothing of the package'}"
                )
    return problems


def import_cycles(graph: dict[str, list[Import]]) -> list[tuple[list[Import], list[str]]]:
    """Each knot of modules that import one another, as one shortest cycle through its first module and all its
    members (Tarjan's strongly connected components; within each, a breadth-first search back to the first)."""
    targets = {name: sorted({e.imported for e in edges}) for name, edges in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    knots: list[set[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a deep chain of imports never meets the recursion limit.
        work = [(start, iter(targets[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(targets[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                knot: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    knot.add(member)
                    if member == node:
                        break
                if len(knot) > 1 or node in targets[node]:
                    knots.append(knot)

    for name in sorted(targets):
        if name not in index:
            visit(name)

    cycles: list[tuple[list[Import], list[str]]] = []
    for knot in sorted(knots, key=min):
        first = min(knot)
        came_by: dict[str, Import] = {}
        frontier = [first]
        while frontier and first not in came_by:
            following: list[str] = []
            for node in frontier:
                for edge in sorted(graph[node], key=lambda e: e.imported):
                    if edge.imported in knot and edge.imported not in came_by:
                        came_by[edge.imported] = edge
                        following.append(edge.imported)
            frontier = following
        path = [came_by[first]]
        while path[0].importer != first:
            path.insert(0, came_by[path[0].importer])
        cycles.append((path, sorted(knot)))
    return cycles


def describe_cycle(cycle: list[Import], knot: list[str]) -> str:
    """`a -> b -> a`, where each step's import stands, and the knot's other modules if the cycle is not all of it."""
    names = " -> ".join([cycle[0].importer, *(edge.imported for edge in cycle)])
    steps = "; ".join(f"{edge.importer} imports {edge.imported} at {edge.where()}" for edge in cycle)
    others = sorted(set(knot) - {edge.importer for edge in cycle})
    also = f"; also caught in it: {', '.join(others)}" if others else ""
    return f"import cycle {names} ({steps}{also})"


def documented_modules(text: str) -> list[str]:
    """The first word of each line of the first code block under "## Where everything lives"."""
    section = re.search(r"^## Where everything lives\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, 'docs/architecture.md has no "## Where everything lives" section'
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, '"## Where everything lives" in docs/architecture.md has no code block'
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def as_doc_path(name: str, modules: dict[str, Path]) -> str:
    """How the document names a module: `usertunnel/io/loop.py`; a package as its folder, `usertunnel/io/`."""
    path = "/".join(name.split("."))
    return path + "/" if _is_package(name, modules) else path + ".py"


# The package as it stands, read once.
MODULES = package_modules(ROOT / PACKAGE)
GRAPH = import_graph(MODULES)


def test_the_walk_reads_the_whole_package() -> None:
    # A walk that read nothing would pass every test below; these imports are known to be there.
    assert len(MODULES) > 60
    edges = {(e.importer, e.imported) for edges in GRAPH.values() for e in edges}
    assert ("usertunnel.cli", "usertunnel.run.daemon") in edges  # inside a function, relative
    assert ("usertunnel.cli", "usertunnel.front.request") in edges  # under if TYPE_CHECKING:
    assert ("usertunnel.cli", "usertunnel") in edges  # from . import __version__
    assert ("usertunnel.__main__", "usertunnel.cli") in edges
    assert ("usertunnel.io.loop", "usertunnel.core.encap") in edges


def test_there_is_no_import_cycle() -> None:
    cycles = [describe_cycle(*found) for found in import_cycles(GRAPH)]
    assert not cycles, "\n".join(cycles)


def test_core_imports_nothing_outside_core() -> None:
    problems = layer_violations(GRAPH, only=["core"])
    assert not problems, "\n".join(problems)


def test_io_imports_nothing_above_io() -> None:
    problems = layer_violations(GRAPH, only=["io"])
    assert not problems, "\n".join(problems)


def test_no_module_imports_a_layer_above_its_own() -> None:
    problems = layer_violations(GRAPH)
    assert not problems, "\n".join(problems)


def test_every_module_belongs_to_a_layer() -> None:
    strays = [f"{MODULES[name].relative_to(ROOT)}" for name in MODULES if layer_of(name) is None]
    assert not strays, f"modules in no layer (put them in one of {', '.join(LAYERS)}): {', '.join(strays)}"


def test_the_architecture_document_lists_every_module_and_only_those() -> None:
    listed = documented_modules(ARCHITECTURE.read_text())
    actual = {as_doc_path(name, MODULES) for name in MODULES}
    twice = sorted({path for path in listed if listed.count(path) > 1})
    missing = sorted(actual - set(listed))
    gone = sorted(set(listed) - actual)
    assert not (missing or gone or twice), (
        'docs/architecture.md, "Where everything lives", is out of date: '
        + "; ".join(
            part
            for part in (
                missing and f"not listed: {', '.join(missing)}",
                gone and f"listed but not in the package: {', '.join(gone)}",
                twice and f"listed twice: {', '.join(twice)}",
            )
            if part
        )
    )


# The checks themselves, on a small package made for them: each kind of import is seen, and each kind of
# fault is reported with the modules it involves (so the tests above can fail).

_TOY = {
    "__init__.py": "",
    "cli.py": "def main() -> None:\n    from .run import service\n",
    "run/__init__.py": "",
    "run/service.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..front import request\n",
    "front/__init__.py": "",
    "front/request.py": "from .. import __version__\nfrom usertunnel.core import gre\n",
    "teach/__init__.py": "",
    "teach/explain.py": "from .picture import packet, page\n",
    "teach/picture/page.py": "from ..explain import Explanation\n",
    "teach/picture/__init__.py": "",
    "teach/picture/packet.py": "def draw() -> None:\n    from .. import explain\n",
    "io/__init__.py": "",
    "io/loop.py": "import usertunnel.core.gre\nfrom ..teach.explain import something\n",
    "core/__init__.py": "",
    "core/gre.py": "from usertunnel.io import loop\n",
    "core/ipv4.py": "from . import ipv4\n",
}


@pytest.fixture
def toy(tmp_path: Path) -> dict[str, Path]:
    for relative, text in _TOY.items():
        (tmp_path / PACKAGE / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / relative).write_text(text)
    return package_modules(tmp_path / PACKAGE)


def test_the_walk_sees_function_level_type_checking_and_relative_imports(toy: dict[str, Path]) -> None:
    graph = import_graph(toy)
    edges = {(e.importer, e.imported) for edges in graph.values() for e in edges}
    assert ("usertunnel.cli", "usertunnel.run.service") in edges
    assert ("usertunnel.run.service", "usertunnel.front.request") in edges
    assert ("usertunnel.teach.picture.packet", "usertunnel.teach.explain") in edges
    assert ("usertunnel.io.loop", "usertunnel.core.gre") in edges
    assert ("usertunnel.io.loop", "usertunnel.teach.explain") in edges


def test_a_cycle_is_reported_as_its_path_with_the_lines_of_its_imports(toy: dict[str, Path]) -> None:
    found = [describe_cycle(*cycle) for cycle in import_cycles(import_graph(toy))]
    assert found[0].startswith("import cycle usertunnel.core.gre -> usertunnel.io.loop -> usertunnel.core.gre (")
    assert "usertunnel.io.loop imports usertunnel.core.gre at " in found[0]
    assert found[1] == (
        f"import cycle usertunnel.core.ipv4 -> usertunnel.core.ipv4 (usertunnel.core.ipv4 imports "
        f"usertunnel.core.ipv4 at {toy['usertunnel.core.ipv4']}:1)"
    )
    assert found[2].startswith(
        "import cycle usertunnel.teach.explain -> usertunnel.teach.picture.packet -> usertunnel.teach.explain ("
    )
    assert found[2].endswith("; also caught in it: usertunnel.teach.picture.page)")
    assert len(found) == 3


def test_an_import_of_a_higher_layer_is_reported_naming_both_modules(toy: dict[str, Path]) -> None:
    graph = import_graph(toy)
    core = layer_violations(graph, only=["core"])
    assert len(core) == 1
    expected = (
        "usertunnel.core.gre (core) imports usertunnel.io.loop (io); core may import only: the package root, core"
    )
    assert expected in core[0]
    io = layer_violations(graph, only=["io"])
    assert len(io) == 1 and "usertunnel.io.loop (io) imports usertunnel.teach.explain (teach)" in io[0]
    assert len(layer_violations(graph)) == 2  # cli > run > front > core and the root: all downward


def test_the_document_check_names_what_is_missing_and_what_is_gone(toy: dict[str, Path]) -> None:
    doc = "# x\n\n## Where everything lives\n\n```\nusertunnel/   root\nusertunnel/cli.py  x\nusertunnel/old.py\n```\n"
    listed = set(documented_modules(doc))
    actual = {as_doc_path(name, toy) for name in toy}
    assert listed - actual == {"usertunnel/old.py"}
    assert {"usertunnel/core/", "usertunnel/core/gre.py"} <= actual - listed
