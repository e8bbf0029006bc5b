"""The package's structure: no import cycles, the layer directions of the redesign (issue 19), and functions of at
most 80 lines (Triton kernels excepted).

The import graph is read from the source with ``ast``, never by importing: every ``import`` and ``from ... import``
statement of a module, at module level or inside a function, relative or absolute; those under
``if TYPE_CHECKING:`` are left out (they never run). An edge A -> B means that running A's import statement
executes module B, so besides the module it names it goes to every package on the way that is not A's own
ancestor (``from ..models.lm import X`` in ``longssm.train.loop`` runs ``longssm/models/__init__.py`` too;
``longssm/__init__.py`` is already running for anything under it). ``from P import x`` goes to the submodule
``P.x`` when there is one, else to ``P`` (``x`` is a name ``P/__init__.py`` defines).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "longssm"
PACKAGE = "longssm"
MAX_FUNCTION_LINES = 80

Graph = dict[str, dict[str, str]]
"""module -> {imported module: "file:line" of the first statement that imports it}."""


# ----------------------------------------------------------------------------------------------------------
# Reading the graph.


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module under the package directory ``root``: dotted name -> file (``pkg/__init__.py`` is ``pkg``; a
    directory without ``__init__.py``, a namespace package, is a module of no code)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
        for folder in path.relative_to(root).parents:
            if folder != Path(".") and not (root / folder / "__init__.py").is_file():
                modules.setdefault(".".join([package, *folder.parts]), root / folder)
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def executed_modules(importer: str, target: str, modules: dict[str, Path]) -> list[str]:
    """The modules an import of ``target`` from ``importer`` runs: ``target`` and every package above it that is
    not an ancestor of ``importer`` (an ancestor's ``__init__`` has already started)."""
    parts = target.split(".")
    ancestors = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    if modules[importer].name == "__init__.py":
        ancestors.add(importer)
    packages = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in packages if p not in ancestors] + [target]


def import_targets(importer: str, node: ast.Import | ast.ImportFrom, package: str,
                   modules: dict[str, Path]) -> list[str]:
    """The modules, inside ``package``, that one import statement of module ``importer`` names (a name that is no
    module is kept: ``test_every_import_names_a_module`` reports it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == package]
    if node.level:
        here = importer if modules[importer].name == "__init__.py" else importer.rpartition(".")[0]
        base = ".".join(here.split(".")[: here.count(".") + 2 - node.level])
        base = f"{base}.{node.module}" if node.module else base
    elif (node.module or "").split(".")[0] == package:
        base = node.module
    else:
        return []
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph(root: Path, package: str) -> Graph:
    """The import graph of the package in directory ``root`` (see the module docstring)."""
    modules = module_files(root, package)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        if path.is_dir():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in sorted(runtime_imports(tree), key=lambda n: n.lineno):
            for target in import_targets(name, node, package, modules):
                for executed in executed_modules(name, target, modules):
                    graph[name].setdefault(executed, f"{path.relative_to(root.parent)}:{node.lineno}")
    return graph


# ----------------------------------------------------------------------------------------------------------
# Cycles.


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module reached from ``start`` by one or more edges."""
    seen: set[str] = set()
    stack = list(graph.get(start, {}))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, {}))
    return seen


def shortest_cycle(graph: Graph, start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start through ``within`` (start not repeated at the end)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, {})):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if nxt in within and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def tangle(graph: Graph, node: str) -> set[str]:
    """The modules that reach ``node`` and that ``node`` reaches (its strongly connected set), ``node`` included."""
    return {other for other in reachable(graph, node) if node in reachable(graph, other)} | {node}


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle of every tangle of modules that has one (a self-import included), the shortest through its
    alphabetically first module; sorted."""
    cycles, done = [], set()
    for node in sorted(graph):
        if node in done or node not in reachable(graph, node):
            continue
        component = tangle(graph, node)
        done |= component
        cycles.append(shortest_cycle(graph, min(component), component))
    return sorted(cycles)


def describe(cycle: list[str], graph: Graph) -> str:
    """``a -> b (a.py:3) -> a (b.py:7)``."""
    steps = [f"{b} ({graph[a][b]})" for a, b in zip(cycle, [*cycle[1:], cycle[0]])]
    return " -> ".join([cycle[0], *steps])


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(SRC, PACKAGE)


def test_every_import_names_a_module(graph):
    missing = [f"{a} -> {b} ({where})" for a, targets in sorted(graph.items()) for b, where in targets.items()
               if b not in graph]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (each one of a tangle of modules that import each other):\n" + "\n".join(
        f"{describe(c, graph)}\n    tangle: {', '.join(sorted(tangle(graph, c[0])))}" for c in cycles)


# ----------------------------------------------------------------------------------------------------------
# The cycle finder and the graph reader, on a package whose answer is known.


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_graph_reader_and_cycle_finder_on_a_known_package(tmp_path):
    pkg = write_package(tmp_path, {
        "__init__.py": "from .a import f\n",
        "a.py": "from . import b\n",  # a submodule: the edge goes to pkg.b, not to the package
        "b.py": "from .sub.c import g\n",  # runs pkg/sub/__init__.py, then pkg.sub.c
        "sub/__init__.py": "",
        "sub/c.py": "def g():\n    import pkg.a\n",  # inside a function: still an edge; closes a -> b -> c -> a
        "d.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\nelse:\n"
                 "    from .a import f\n"),  # the TYPE_CHECKING import is no edge, its else is
        "e.py": "from pkg import d\nimport os\n",  # e -> d, but d -> e only under TYPE_CHECKING: no cycle
        "x.py": "from .y import *\n",
        "y.py": "from .x import h\n",  # a two-module cycle of its own
        "z.py": "from . import z_helper\nfrom .z import k\n",  # a self-import
        "z_helper.py": "",
        "ns/m.py": "from ..a import f\nfrom pkg.gone import h\n",  # ns/ has no __init__.py: a namespace package
    })
    g = import_graph(pkg, "pkg")
    assert g["pkg.a"] == {"pkg.b": "pkg/a.py:1"}
    assert g["pkg.b"] == {"pkg.sub": "pkg/b.py:1", "pkg.sub.c": "pkg/b.py:1"}
    assert g["pkg.sub.c"] == {"pkg.a": "pkg/sub/c.py:2"}
    assert g["pkg.d"] == {"pkg.a": "pkg/d.py:5"} and g["pkg.e"] == {"pkg.d": "pkg/e.py:1"}
    assert g["pkg"] == {"pkg.a": "pkg/__init__.py:1"}
    assert g["pkg.ns"] == {} and g["pkg.ns.m"] == {"pkg.a": "pkg/ns/m.py:1", "pkg.gone": "pkg/ns/m.py:2"}
    assert "pkg.gone" not in g  # what test_every_import_names_a_module reports
    assert find_cycles(g) == [["pkg.a", "pkg.b", "pkg.sub.c"], ["pkg.x", "pkg.y"], ["pkg.z"]]
    assert describe(["pkg.x", "pkg.y"], g) == "pkg.x -> pkg.y (pkg/x.py:1) -> pkg.x (pkg/y.py:1)"
    assert find_cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {}}) == []


def test_cycle_finder_reports_one_cycle_per_tangle():
    g = {"a": {"b": ""}, "b": {"a": "", "c": ""}, "c": {"a": ""}, "d": {"a": ""}}
    assert find_cycles(g) == [["a", "b"]]  # {a, b, c} is one tangle; its shortest cycle through a


# ----------------------------------------------------------------------------------------------------------
# Layers (/work/notes/redesign.md, "Target layers").

APPLICATIONS = ("sweep", "quickstart", "calibrate", "convert", "generate", "lm_eval_adapter", "task_export")


def in_part(module: str, *parts: str) -> bool:
    """Whether ``module`` is ``longssm.<part>`` or under it, for one of ``parts``."""
    return any(module == f"{PACKAGE}.{p}" or module.startswith(f"{PACKAGE}.{p}.") for p in parts)


def violations(graph: Graph, importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """``importer -> imported (file:line)`` for every edge from a module of ``importers`` to one of ``forbidden``."""
    return [f"{a} -> {b} ({where})" for a, targets in sorted(graph.items()) if in_part(a, *importers)
            for b, where in targets.items() if in_part(b, *forbidden)]


def test_config_and_errors_import_only_the_bottom_modules(graph):
    allowed = {f"{PACKAGE}.errors", f"{PACKAGE}.paths"}
    for module in (f"{PACKAGE}.config", f"{PACKAGE}.errors"):
        assert module in graph
        extra = {b: where for b, where in graph[module].items() if b not in allowed}
        assert not extra, f"{module} imports {extra}"


def test_train_and_evaluate_never_import_each_other(graph):
    found = violations(graph, ("train",), ("evaluate",)) + violations(graph, ("evaluate",), ("train",))
    assert not found, "\n".join(found)


def test_models_and_ops_import_no_layer_above_them(graph):
    found = violations(graph, ("models", "ops"), ("data", "train", "evaluate", "checkpoint", "cli", *APPLICATIONS))
    assert not found, "\n".join(found)


def test_only_main_imports_the_cli(graph):
    found = [f"{a} -> {PACKAGE}.cli ({targets[f'{PACKAGE}.cli']})" for a, targets in sorted(graph.items())
             if f"{PACKAGE}.cli" in targets and a != f"{PACKAGE}.__main__"]
    assert not found, "\n".join(found)


LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths"),
    ("config", "files", "lock", "stats"),
    ("ops",),
    ("models",),
    ("data",),
    ("runtime",),
    ("checkpoint", "pretrained", "outputs"),
    ("train", "evaluate"),
    APPLICATIONS,
    ("cli", "cli_options"),
    ("__main__",),
)
"""The layers of README's "Layout", bottom first: a module may import its own layer and the ones below it."""


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of ``module``'s part; None for the package facade ``longssm`` itself."""
    found = [i for i, parts in enumerate(LAYERS) if in_part(module, *parts)]
    return found[0] if found else None


def upward_edges(graph: Graph) -> list[str]:
    """Every import of a module from a layer above its own (the package facade excluded: ``longssm.register_family``
    is a lazy re-export for users)."""
    return [f"{a} -> {b} ({where})" for a, targets in sorted(graph.items()) if layer_of(a) is not None
            for b, where in targets.items() if layer_of(b) is not None and layer_of(b) > layer_of(a)]


def test_every_module_imports_only_its_own_layer_and_those_below(graph):
    unplaced = [m for m in graph if m != PACKAGE and layer_of(m) is None]
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    found = upward_edges(graph)
    assert not found, "\n".join(found)
    assert upward_edges({"longssm.data.corpus": {"longssm.runtime.feed": "data/corpus.py:1"}}) == [
        "longssm.data.corpus -> longssm.runtime.feed (data/corpus.py:1)"]


def test_the_layer_checks_see_a_forbidden_edge():
    g = {"longssm.train.loop": {"longssm.evaluate.run": "train/loop.py:3"}, "longssm.evaluate.run": {},
         "longssm.models.lm": {"longssm.data.corpus": "models/lm.py:9"}, "longssm.data.corpus": {}}
    assert violations(g, ("train",), ("evaluate",)) == ["longssm.train.loop -> longssm.evaluate.run (train/loop.py:3)"]
    assert violations(g, ("models",), ("data",)) == ["longssm.models.lm -> longssm.data.corpus (models/lm.py:9)"]
    assert violations(g, ("evaluate",), ("train",)) == [] and not in_part("longssm.training", "train")


# ----------------------------------------------------------------------------------------------------------
# Function length.


def is_triton_kernel(function: ast.FunctionDef | ast.AsyncFunctionDef, jit_names: set[str]) -> bool:
    """Decorated with ``triton.jit`` (bare, called, or imported as a name in ``jit_names``)."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "jit" and ast.unparse(target.value) == "triton":
            return True
        if isinstance(target, ast.Name) and target.id in jit_names:
            return True
    return False


def long_functions(root: Path, limit: int) -> list[str]:
    """``file:line name (N lines)`` for every function under ``root`` longer than ``limit`` lines (from its
    ``def`` to its last line), except Triton kernels."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        jit_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "triton" for alias in node.names if alias.name == "jit"}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_triton_kernel(node, jit_names):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_80_lines():
    found = long_functions(SRC, MAX_FUNCTION_LINES)
    assert not found, f"functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


def test_function_length_counts_lines_and_spares_triton_kernels(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    pkg = write_package(tmp_path, {"m.py": (
        "import triton\nfrom triton import jit as tjit\n\n"
        f"def long(a):\n{body}\n"  # def + 80 lines: 81
        f"def exact():\n{body[:-len('    x79 = 79')-1]}\n"  # def + 79 lines: 80
        f"@triton.jit\ndef kernel(a):\n{body}\n"
        f"@triton.jit(do_not_specialize=['a'])\ndef kernel2(a):\n{body}\n"
        f"@tjit\ndef kernel3(a):\n{body}\n"
        f"class C:\n    def method(self):\n{''.join('    ' + line + chr(10) for line in body.splitlines())}\n")})
    assert long_functions(pkg, 80) == ["pkg/m.py:4 long (81 lines)", "pkg/m.py:417 method (81 lines)"]
