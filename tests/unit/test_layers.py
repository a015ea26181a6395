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

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    # base: no torch
    "vit_dist": 0,
    "vit_dist.errors": 0,
    "vit_dist.options": 0,
    "vit_dist.atomic": 0,
    "vit_dist.hub": 0,  # hf-hub: references; config checks their syntax (huggingface_hub is imported late)
    "vit_dist.config": 0,
    "vit_dist.config_help": 0,
    "vit_dist.launch_env": 0,
    # foundations
    "vit_dist.models": 1,
    "vit_dist.models.protocol": 1,  # the model contract: what the layers above may ask of a model
    "vit_dist.data": 1,
    "vit_dist.distributed": 1,
    "vit_dist.testing": 1,
    # components
    "vit_dist.amp": 2,
    "vit_dist.losses": 2,
    "vit_dist.parallel": 2,
    "vit_dist.ema": 2,
    "vit_dist.optim": 2,
    "vit_dist.checkpoint": 2,
    "vit_dist.train_state": 2,  # the training state as named components (checkpoint.py saves them)
    "vit_dist.manifest": 2,
    "vit_dist.rundir": 2,
    "vit_dist.weights": 2,
    "vit_dist.distill": 2,
    "vit_dist.evaluation": 2,
    "vit_dist.metrics": 2,
    "vit_dist.preemption": 2,
    "vit_dist.sync_debug": 2,
    # the loop
    "vit_dist.trainer": 3,
    # entry points (and the command-line plumbing only they use)
    "vit_dist.cli": 4,
    "vit_dist.train": 4,
    "vit_dist.evaluate": 4,
    "vit_dist.export": 4,
    "vit_dist.predict": 4,
    "vit_dist.bench": 4,
    "vit_dist.models.__main__": 4,
    "vit_dist.data.bench": 4,
    "vit_dist.data.shards": 4,
    "vit_dist.data.plan.__main__": 4,
}
ENTRY_LAYER = 4


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def layer_of(module: str) -> int:
    """The layer of the longest prefix of ``module`` named in LAYERS."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


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


@pytest.mark.parametrize(
    "module", ["vit_dist.errors", "vit_dist.options", "vit_dist.atomic", "vit_dist.config"]
)
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
