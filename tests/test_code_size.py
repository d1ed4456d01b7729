"""Pieces that fit in a head: functions up to 80 lines and classes up to 300 across src/ (counted with ast)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300


def too_long() -> set[str]:
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_FUNCTION_LINES
            elif isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            else:
                continue
            if node.end_lineno - node.lineno + 1 > limit:
                found.add(f"{path.relative_to(SRC).as_posix()}:{node.name}")
    return found


def test_functions_and_classes_stay_short():
    found = too_long()
    assert not found, f"over {MAX_FUNCTION_LINES} lines (functions) or {MAX_CLASS_LINES} (classes): {sorted(found)}"
