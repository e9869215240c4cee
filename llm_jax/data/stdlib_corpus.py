"""The built-in offline corpus: the Python standard library's own source and documentation.

Every machine with Python has it, nobody here wrote it, and it mixes real code with real prose, so
it is the default `data.source` (`stdlib`). Test suites (`test/`, `tests/`, `idle_test/`) and
third-party packages (`site-packages/`, `dist-packages/`) are left out: the tests are half the
bytes and mostly repetitive fixtures, and the packages are not part of the standard library.

Documentation comes from two places that ship with the interpreter: the reference-manual topics
behind `help()` (`pydoc_data.topics`) and the docstrings of each module, gathered per module with
`ast` (nothing is imported or executed).
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path
from typing import Iterator

EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "__phello__"}
)


def stdlib_root() -> Path:
    """Where this interpreter's standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files() -> list[Path]:
    """The standard library's .py files in a fixed (sorted) order, without tests and packages."""
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        if EXCLUDED_DIRS.isdisjoint(path.relative_to(root).parts[:-1]):
            files.append(path)
    return sorted(files)


def module_docstrings(source: str, module: str) -> str:
    """Docstrings of a module and of its classes and functions, each under its qualified name.

    Returns "" for files that do not parse (a few stdlib files hold deliberately broken code).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    sections = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(f"{module}\n\n{doc}")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                text = ast.get_docstring(child)
                if text:
                    sections.append(f"{name}\n\n{text}")
                visit(child, f"{name}.")

    visit(tree, f"{module}.")
    return "\n\n\n".join(sections)


def reference_topics() -> Iterator[tuple[str, str]]:
    """(topic, text) pairs of the language reference that `help()` shows, sorted by topic."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for name in sorted(topics):
        yield name, topics[name]
