"""The layout of issue 13: a small library, the harness and the VAE built on it (README, "Layout").

These check the code's shape, not its behaviour: the sizes and the direction of the imports that
the layout promises. Each fails when a change breaks the promise (a new harness module inside the
library, a file or function that grew past its limit, an arrow pointing back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avalanche_spp", "benchmarks", "generative")
LIBRARY_MAX_LINES = 1_500
FILE_MAX_LINES = 500
FUNCTION_MAX_BODY_LINES = 80


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_is_small():
    lines = sum(len(path.read_text().splitlines()) for path in _files("avalanche_spp"))
    assert lines <= LIBRARY_MAX_LINES, f"avalanche_spp/ has {lines} lines (at most {LIBRARY_MAX_LINES})"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_is_over_500_lines_and_each_opens_with_a_docstring(package):
    for path in _files(package):
        source = path.read_text()
        assert len(source.splitlines()) <= FILE_MAX_LINES, f"{path.relative_to(ROOT)} is too long"
        if source.strip():
            assert ast.get_docstring(ast.parse(source)), f"{path.relative_to(ROOT)} has no module docstring"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_body_is_over_80_lines_docstring_aside(package):
    for path in _files(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if not body:
                continue
            length = body[-1].end_lineno - body[0].lineno + 1
            where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            assert length <= FUNCTION_MAX_BODY_LINES, f"{where} has a {length}-line body"


def test_the_library_imports_nothing_from_the_harness_or_the_vae():
    for path in _files("avalanche_spp"):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("benchmarks", "generative")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
