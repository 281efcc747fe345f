"""The house plan's floors (DESIGN.md), checked on the source: an import graph of our four
top-level packages, and of ``revtransfer``'s rooms, counting function-level imports and modules
named in strings (``"package.module"`` or ``"package.module:function"``, as entry points and jobs
name them), has no cycle and no upward edge. A planted upward import makes the checker fail."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("revtransfer", "clevr_gen", "detection", "probes")

# Which packages each package may import (an arrow only ever points down).
PACKAGE_EDGES = {
    "revtransfer": set(),                                  # the library knows no app and no generator
    "clevr_gen": {"revtransfer"},                          # ...only its torch-free helpers, below
    "detection": {"revtransfer"},                          # never probes
    "probes": {"revtransfer", "clevr_gen", "detection"},   # the study may call detection, one way
}
CLEVR_GEN_MAY_USE = {"revtransfer", "revtransfer.atomic", "revtransfer.provenance", "revtransfer.errors"}

# revtransfer's rooms by floor: a room imports only rooms on lower floors.
# The package's __init__ is its front door (it installs the timm hook, which registers the models when
# timm is imported): it may name any room, and a room importing ``revtransfer`` itself is not counted.
ROOM_FLOORS = {
    "__init__": 6, "_timm_hook": 3, "errors": 0, "atomic": 0, "provenance": 0, "options": 0, "device": 0,
    "reversible": 1, "data": 1, "launch": 1, "results": 1,
    "models": 2,
    "bench": 3,             # the one benchmark record, and the model benchmarks
    "train": 4, "report": 4,
    "cli": 5,
}

_MODULE_STRING = re.compile(r"^(revtransfer|clevr_gen|detection|probes)((\.[A-Za-z_]\w*)+(:[\w.]+)?|:[\w.]+)$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN_MODULES = set()  # filled below, before the graph is built


def references(name: str, source: str, is_package: bool = False) -> set[str]:
    """Dotted names of ours that ``source`` (module ``name``) imports anywhere, names in a string
    constant, or hands to ``importlib.import_module``."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else node.module)
            subs = {f"{base}.{a.name}" for a in node.names} & KNOWN_MODULES
            found.update(subs)
            if len(subs) < len(node.names):  # names from the module itself, not submodules
                found.add(base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            if node.value.split(":")[0] in KNOWN_MODULES:  # not e.g. an entry-point group's name
                found.add(node.value.split(":")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return {r for r in found if r and r.split(".")[0] in PACKAGES}


def source_graph(extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the dotted names of ours it references; ``extra`` adds (or replaces) modules by
    source text (how a test plants an import)."""
    graph = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            graph[module_name(path)] = references(module_name(path), path.read_text(), path.name == "__init__.py")
    for name, source in (extra or {}).items():
        graph[name] = references(name, source)
    return graph


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, refs in graph.items():
        pkg = module.split(".")[0]
        for ref in refs:
            target = ref.split(".")[0]
            if target != pkg and target not in PACKAGE_EDGES[pkg]:
                bad.append(f"{module} -> {ref}")
            elif pkg == "clevr_gen" and target == "revtransfer" and ref not in CLEVR_GEN_MAY_USE:
                bad.append(f"{module} -> {ref} (clevr_gen uses only revtransfer's torch-free helpers)")
            elif pkg == target == "revtransfer":
                src, dst = _room(module), _room(ref)
                if src != dst and dst != "__init__" and ROOM_FLOORS[dst] >= ROOM_FLOORS[src]:
                    bad.append(f"{module} -> {ref} (room {src} on floor {ROOM_FLOORS[src]} -> "
                               f"{dst} on floor {ROOM_FLOORS[dst]})")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def package_graph(graph) -> dict[str, set[str]]:
    out = {p: set() for p in PACKAGES}
    for module, refs in graph.items():
        out[module.split(".")[0]].update(r.split(".")[0] for r in refs if r.split(".")[0] != module.split(".")[0])
    return out


def room_graph(graph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, refs in graph.items():
        if module.split(".")[0] == "revtransfer":
            out.setdefault(_room(module), set()).update(
                _room(r) for r in refs if r.split(".")[0] == "revtransfer" and _room(r) not in ("__init__", _room(module)))
    return out


def module_graph(graph) -> dict[str, set[str]]:
    return {m: {r if r in graph else r.rsplit(".", 1)[0] for r in refs} & set(graph) - {m} for m, refs in graph.items()}


KNOWN_MODULES.update(module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
GRAPH = source_graph()


def test_every_room_of_the_library_has_a_floor():
    rooms = {_room(m) for m in GRAPH if m.split(".")[0] == "revtransfer"}
    assert rooms <= set(ROOM_FLOORS), f"place these rooms on a floor in ROOM_FLOORS: {sorted(rooms - set(ROOM_FLOORS))}"


def test_no_upward_edge():
    assert not upward_edges(GRAPH)


def test_no_cycle_between_packages_rooms_or_modules():
    assert not cycles(package_graph(GRAPH))
    assert not cycles(room_graph(GRAPH))
    assert not cycles(module_graph(GRAPH))


def test_a_planted_upward_import_is_caught():
    # A function-level import, a module named in a string, an import_module call, a same-floor room.
    planted = {
        "revtransfer.report.sneaky": "def f():\n    from probes.sweep import run_sweep\n",
        "revtransfer.launch.sneaky": "JOB = 'detection.jobs:detect_task'\n",
        "revtransfer.models.sneaky": "import importlib\nimportlib.import_module('probes')\n",
        "detection.sneaky": "from probes import demo\n",
        "revtransfer.data.sneaky": "from revtransfer.train import pretrain\n",
        "clevr_gen.sneaky": "import revtransfer.models\n",
    }
    bad = upward_edges(source_graph(planted))
    for module in planted:
        assert any(b.startswith(module + " ") for b in bad), (module, bad)
    [cycle] = cycles(package_graph(source_graph({"revtransfer.cli_extra": "def f():\n    import probes.cli\n"})))
    assert {"probes", "revtransfer"} <= set(cycle)


def test_the_checker_sees_real_edges():
    # Guard against a checker that passes everything.
    assert "revtransfer.train.config" in GRAPH["revtransfer.train.cli"]
    assert "revtransfer.reversible.schedule" in GRAPH["revtransfer.reversible.stack"]
    assert "revtransfer.results" in GRAPH["detection.results"]
    assert "detection.train_net" in GRAPH["probes.demo"]
    assert package_graph(GRAPH)["probes"] == {"revtransfer", "clevr_gen", "detection"}
