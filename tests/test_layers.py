"""The core's shape, checked from the code's own imports (docs/architecture.md, "Layers").

- ``semsearch``'s subpackages import only downward (base <- models, index, ingest <- search <- eval
  <- training), never a sibling of the same layer, and never in a cycle;
- ``app/`` and ``indexer/`` import a subpackage's public API (``semsearch.index``), never a
  module inside it (``semsearch.index.writer``), and only names its ``__all__`` lists;
- ``app/`` imports nothing of ``indexer/`` (the service does not depend on the CLI package);
- docs/architecture.md names every module of the core, and every module it names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "semsearch"
# A subpackage's layer; modules directly under semsearch/ are the base (layer 0) unless listed.
LAYERS = {"models": 1, "index": 1, "ingest": 1, "search": 2, "eval": 3, "training": 4}
APART = {"client"}  # speaks HTTP, imports nothing of the core's layers


def _unit(module: str) -> str | None:
    """``semsearch.index.writer`` -> ``index``; ``semsearch.errors`` -> ``errors``; others -> None."""
    parts = module.split(".")
    if parts[0] != "semsearch" or len(parts) < 2:
        return None
    return parts[1]


def _layer(unit: str) -> int:
    return LAYERS.get(unit, 0)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import in ``path``, lazy and TYPE_CHECKING ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str, list[str]]] = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _py_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)


def test_core_imports_only_downward_and_never_sideways() -> None:
    wrong = []
    for path in _py_files(CORE):
        rel = path.relative_to(CORE)
        here = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for line, module, names in _imports(path):
            targets = [module] + ([f"{module}.{n}" for n in names] if module == "semsearch" else [])
            for target in targets:
                unit = _unit(target)
                if unit is None or unit == here or unit == "__version__":
                    continue
                if here in APART or unit in APART:
                    wrong.append(f"{rel}:{line}: {target} ({'client' if here in APART else unit} stands apart)")
                elif _layer(unit) >= _layer(here) and not (_layer(here) == 0 and _layer(unit) == 0):
                    wrong.append(f"{rel}:{line}: {here} (layer {_layer(here)}) imports {target} (layer {_layer(unit)})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_base_modules_have_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in _py_files(CORE):
        rel = path.relative_to(CORE)
        if len(rel.parts) > 1:
            continue
        graph[rel.stem] = {
            u for _, m, _ in _imports(path) if (u := _unit(m)) and _layer(u) == 0 and u != rel.stem and u not in APART
        }
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        if seen.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*stack, node]))
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])
        seen[node] = 2

    for node in graph:
        visit(node, [])


def _public(unit: str) -> set[str]:
    init = CORE / unit / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{init} has no __all__")


@pytest.mark.parametrize("top", ["app", "indexer"])
def test_adapters_use_only_public_apis(top: str) -> None:
    wrong = []
    for path in _py_files(ROOT / top):
        rel = path.relative_to(ROOT)
        for line, module, names in _imports(path):
            parts = module.split(".")
            if top == "app" and parts[0] == "indexer":
                wrong.append(f"{rel}:{line}: the service imports the CLI package ({module})")
            if parts[0] != "semsearch" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if len(parts) > 2:
                wrong.append(f"{rel}:{line}: {module} is private; import from semsearch.{parts[1]}")
            elif missing := set(names) - _public(parts[1]) - {"*"}:
                wrong.append(f"{rel}:{line}: {sorted(missing)} not in semsearch.{parts[1]}.__all__")
    assert not wrong, "\n".join(wrong)


def test_every_public_name_exists() -> None:
    import importlib

    for unit in LAYERS:
        package = importlib.import_module(f"semsearch.{unit}")
        missing = [n for n in _public(unit) if not hasattr(package, n)]
        assert not missing, f"semsearch.{unit}.__all__ names {missing}, which it does not define"


def test_architecture_doc_names_every_core_module_and_only_those() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## Core modules", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(semsearch/[\w/]+\.py)` \|", section, re.M))
    actual = {str(p.relative_to(ROOT)) for p in _py_files(CORE) if p.name != "__init__.py"}
    actual -= {str(p.relative_to(ROOT)) for p in _py_files(CORE / "training")}  # one row for the package
    assert not (named - actual), f"docs/architecture.md names modules that do not exist: {sorted(named - actual)}"
    assert not (actual - named), f"modules missing from docs/architecture.md: {sorted(actual - named)}"
