"""The core stays in small pieces (issue #21): no class in ``semsearch/`` over 250 lines and no function
body over 60 lines (the docstring aside), checked from the code's own syntax tree."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "semsearch"
MAX_CLASS_LINES = 250
MAX_FUNCTION_BODY_LINES = 60


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        first = body[1]  # the docstring does not count
    return (node.end_lineno or node.lineno) - first.lineno + 1


def _too_big() -> list[str]:
    found: list[str] = []
    for path in sorted(CORE.rglob("*.py")):
        where = path.relative_to(CORE.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    found.append(f"{where}:{node.lineno} class {node.name}: {lines} lines")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = _body_lines(node)
                if lines > MAX_FUNCTION_BODY_LINES:
                    found.append(f"{where}:{node.lineno} {node.name}(): a body of {lines} lines")
    return found


def test_no_class_over_250_lines_and_no_function_body_over_60() -> None:
    assert _too_big() == []
