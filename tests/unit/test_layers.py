"""The package's import graph, function-local imports included: no cycles, imports only run
downward through the layers, no package module imports an entry point, and a function-local
import is a deferral with a stated reason (a comment on its line or just above its group).

Built from the source with ``ast`` (nothing is imported), so it sees every import the code can
make, also those inside functions that a run may never reach.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vit_dist"

# The layers, lowest first: each is a set of the package's folders, and a module's layer is its
# folder's. A module may import its own layer or lower ones. Entry points (every module at the
# package top, and every one a folder runs with ``python -m``) sit above all of them.
FOLDER_LAYERS: list[set[str]] = [
    {"core"},  # no torch: errors, options, atomic writes, hf-hub references, the config
    {"models", "data", "runtime", "testing"},  # the model contract, the loader, devices and processes
    {"checkpoint", "metrics"},  # what a run keeps: checkpoints, state, run directory, weights; metrics
    {"training"},  # the loop's stages and the trainer
    {"cli"},  # the entry points' shared plumbing
]
ENTRY_LAYER = len(FOLDER_LAYERS)


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def is_entry_point(module: str) -> bool:
    """A module at the package top (but the package itself), a ``__main__``, or a module that
    runs as ``python -m`` (its ``if __name__ == "__main__":`` block)."""
    path = MODULES[module]
    return (
        (path.parent == PACKAGE and path.stem != "__init__")
        or path.stem == "__main__"
        or _runs_as_main(module)
    )


def layer_of(module: str) -> int:
    """An entry point's layer is above every folder's; any other module's is its top folder's."""
    if module == "vit_dist":
        return 0
    if is_entry_point(module):
        return ENTRY_LAYER
    folder = module.split(".")[1]
    for layer, folders in enumerate(FOLDER_LAYERS):
        if folder in folders:
            return layer
    raise KeyError(module)


def test_every_folder_has_a_layer_and_the_top_holds_only_entry_points():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set().union(*FOLDER_LAYERS)
    top = [m for m, path in MODULES.items() if path.parent == PACKAGE and path.stem != "__init__"]
    assert [m for m in top if not _runs_as_main(m)] == []


def _runs_as_main(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The vit_dist modules an import statement loads (a package's __init__ included)."""
    is_package = MODULES[importer].name == "__init__.py"
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = importer.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("vit_dist"):
            found.append(name)
    return found


def _imports(module: str) -> list[tuple[ast.stmt, bool]]:
    """Every import statement of ``module`` with whether it sits inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return [(n, id(n) in local) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for node, _ in _imports(module):
            graph[module].update(t for t in _resolve(module, node) if t != module)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    assert [m for m in MODULES if not _has_layer(m)] == []


def _has_layer(module: str) -> bool:
    try:
        layer_of(module)
    except KeyError:
        return False
    return True


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_imports_run_downward_and_never_into_an_entry_point():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if module.startswith(target + ".") or target == "vit_dist":
                continue  # a package's own __init__ runs first anyway
            if layer_of(target) > layer_of(module):  # so also: only entry points import one
                upward.append(
                    f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
                )
    assert upward == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("vit_dist.core")))
def test_base_layer_does_not_import_torch(module):
    tops = {
        a.name.split(".")[0]
        for node, _ in _imports(module)
        if isinstance(node, ast.Import)
        for a in node.names
    }
    tops |= {
        (node.module or "").split(".")[0]
        for node, _ in _imports(module)
        if isinstance(node, ast.ImportFrom) and not node.level
    }
    assert "torch" not in tops


def test_function_local_imports_are_deferrals_with_a_reason():
    """Package modules import each other at the top; inside a function only entry points import
    vit_dist modules (to load torch after the command line is checked), and every
    function-local import says why, on its line or just above its group of imports."""
    bad = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, local in _imports(module):
            if not local:
                continue
            where = f"{module}:{node.lineno}"
            internal = bool(_resolve(module, node)) or getattr(node, "level", 0) > 0
            if internal and layer_of(module) != ENTRY_LAYER:
                bad.append(f"{where}: a vit_dist import inside a function")
            if not _has_reason(lines, node.lineno - 1, node.end_lineno - 1):
                bad.append(f"{where}: a function-local import without a comment saying why")
    assert bad == []


def _has_reason(lines: list[str], first: int, last: int) -> bool:
    """A comment on the statement's lines, or above the contiguous imports it belongs to."""
    if any("#" in lines[i] for i in range(first, last + 1)):
        return True
    i = first - 1
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if not (text.startswith(("import ", "from ")) or text == ")" or text.endswith(",")):
            return False
        if "#" in text:
            return True
        i -= 1
    return False
