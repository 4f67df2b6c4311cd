"""The package's shape: a cheap, lazy top level, one-way imports between layers, no private names shared."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_clusterable


PACKAGE = Path(hf_clusterable.__file__).parent
HEAVY = ("transformers", "accelerate", "peft", "datasets", "huggingface_hub")
# Each layer may import from its own layer and the ones before it, never from a later one.
LAYERS = [
    {"version", "constants", "utils"},
    {"core"},
    {"config", "templates"},
    {"modeling"},
    {"hub", "analysis"},
    {"training"},
    {"examples"},
    {"scripts"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import of a package module, at any depth of the file."""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_clusterable"):
            found.append(
                (node.module.removeprefix("hf_clusterable").lstrip("."), [a.name for a in node.names], node.lineno)
            )
    return found


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """Package modules an import statement loads (`from . import x` names submodules)."""
    if target in known or target == "":
        subs = [f"{target}.{n}".lstrip(".") for n in names if f"{target}.{n}".lstrip(".") in known]
        return subs or ([target] if target else [])
    return [target] if target in known else [m for m in (f"{target}.__init__",) if m in known]


def test_core_names_load_torch_alone():
    code = (
        "import sys, hf_clusterable as h; h.Partition, h.spectral_cocluster, h.clusterability, h.baseline, "
        "h.normalised; print(sorted(m for m in " + repr(HEAVY) + " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves_and_all_lists_them():
    for name in hf_clusterable.__all__:
        assert getattr(hf_clusterable, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        hf_clusterable.nothing_here  # noqa: B018


def test_imports_run_one_way_between_layers():
    known = modules()
    wrong = []
    for name, path in known.items():
        source = RANK[name.split(".")[0]]
        for target, names, line in imports(name, path):
            for module in resolve(target, names, known):
                rank = RANK[module.split(".")[0]]
                if rank > source:
                    wrong.append(f"{name}:{line} imports {module}")
    assert wrong == []


def test_no_import_cycles():
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for target, names, _ in imports(name, path):
            graph[name].update(m for m in resolve(target, names, known) if m != name and m != "__init__")
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_no_private_names_imported_across_modules():
    known = modules()
    private = [
        f"{name}:{line} imports {n} from {target}"
        for name, path in known.items()
        for target, names, line in imports(name, path)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert private == []
