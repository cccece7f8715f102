"""The layers of ``cxrcore`` (:mod:`cxrcore.architecture`) hold: read from every module's source, imports
inside functions included."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import cxrcore
from conftest import REPO
from cxrcore.architecture import LAYERS, layer_of

PACKAGE = REPO / "cxrcore"


def module_name(path: Path) -> str:
    """``cxrcore/data/io.py`` -> ``data.io``; a package's ``__init__.py`` -> the package (``""`` for cxrcore)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(module imported, name taken from it or None, line)`` for each import of a ``cxrcore`` module in
    ``path``, wherever it stands; relative imports resolved, ``from pkg import module`` read as the module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cxrcore" or alias.name.startswith("cxrcore."):
                    found.append((alias.name.removeprefix("cxrcore").lstrip("."), None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "cxrcore" or (node.module or "").startswith("cxrcore."):
                target = node.module.removeprefix("cxrcore").lstrip(".")
            else:
                continue
            for alias in node.names:
                as_module = f"{target}.{alias.name}".lstrip(".")
                if as_module in MODULES:
                    found.append((as_module, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return found


EDGES = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_every_module_has_exactly_one_layer():
    placed = [module for _, _, modules in LAYERS for module in modules]
    assert len(placed) == len(set(placed)), sorted({m for m in placed if placed.count(m) > 1})
    assert set(placed) - set(MODULES) == set(), "layers name modules that do not exist"
    assert set(MODULES) - set(placed) == set(), "modules no layer places"


def test_no_module_imports_a_higher_layer():
    layer = layer_of()
    upward = [
        f"cxrcore/{MODULES[name].relative_to(PACKAGE)}:{line} ({LAYERS[layer[name]][0]}) imports "
        f"{target or 'cxrcore'} ({LAYERS[layer[target]][0]})"
        for name, edges in EDGES.items()
        for target, _, line in edges
        if target in layer and layer[target] > layer[name]
    ]
    assert upward == []


def test_no_module_imports_another_modules_private_name():
    private = [
        f"cxrcore/{MODULES[name].relative_to(PACKAGE)}:{line} takes {taken} from {target}"
        for name, edges in EDGES.items()
        for target, taken, line in edges
        if taken and taken.startswith("_") and not taken.startswith("__") and target != name
    ]
    assert private == []


def test_the_imports_form_no_cycle():
    graph = {name: sorted({t for t, _, _ in edges if t in MODULES and t != name}) for name, edges in EDGES.items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_reader_finds_lazy_and_relative_imports():
    """The graph above is only as good as its reader: these imports are known to be in the source."""
    assert ("lungs.segment", None) in {(t, n) for t, n, _ in EDGES["data.io"]}  # from ..lungs import segment
    assert ("data.pixels", "resize") in {(t, n) for t, n, _ in EDGES["explain.cam"]}
    lazy = {(t, n) for t, n, _ in EDGES["explain.cam"]}  # inside a method: it loads TensorFlow
    assert ("training.model", "load_model") in lazy
    assert ("cli.options", None) in {(t, n) for t, n, _ in EDGES["cli.jobs"]} or any(
        t == "cli.options" for t, _, _ in EDGES["cli.jobs"]
    )


def test_an_upward_import_would_be_caught(tmp_path):
    """The rule fails on a planted violation: ``data.pixels`` (a leaf) importing ``workflows``."""
    planted = tmp_path / "pixels.py"
    planted.write_text("def f():\n    from ..workflows import train\n    from ..data.io import _decode\n")
    edges = imports_of("data.pixels", planted)
    assert ("workflows", "train") in {(t, n) for t, n, _ in edges}
    layer = layer_of()
    assert layer["workflows"] > layer["data.pixels"]
    assert any(n and n.startswith("_") for _, n, _ in edges)


@pytest.mark.parametrize("name", cxrcore.__all__)
def test_the_public_names_stay_importable(name):
    assert getattr(cxrcore, name) is not None
    module = importlib.import_module(f"cxrcore.{cxrcore._EXPORTS[name]}")
    assert getattr(module, name) is getattr(cxrcore, name)


def test_the_layout_page_shows_the_layers_as_declared():
    from cxrcore.architecture import markdown_table

    assert markdown_table() in (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
