"""Rules of ``docs/architecture.md`` that hold for every module of the package, checked on its source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mri_slice_transfer

PACKAGE = Path(mri_slice_transfer.__file__).resolve().parent

#: Longest function, in code lines (see :func:`code_lines`).
MAX_FUNCTION_LINES = 80

#: The package root is lazy by design: every ``mri_slice_transfer.<module>`` import runs it (the command
#: line's included), so ``mst.load_model`` cannot import torch when the root is imported.
LAZY_BY_DESIGN: frozenset[str] = frozenset({"__init__.py"})


def _modules() -> list[tuple[str, ast.Module, list[str]]]:
    """``(path relative to the package, syntax tree, source lines)`` of every module."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        out.append((path.relative_to(PACKAGE).as_posix(), ast.parse(source), source.splitlines()))
    return out


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of a function (its ``def`` to its last line) that are code: not blank, not a comment,
    not its docstring. Nested functions count in the function that holds them."""
    skip: set[int] = set()
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        skip = set(range(first.lineno, first.end_lineno + 1))
    body = range(node.lineno, node.end_lineno + 1)
    return sum(
        1
        for i in body
        if i not in skip and lines[i - 1].strip() and not lines[i - 1].lstrip().startswith("#")
    )


def _function_lengths() -> dict[str, int]:
    """``{"<module path>::<function>": code lines}`` of every function and method."""
    lengths = {}
    for rel, tree, lines in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{rel}::{node.name}"] = max(
                    lengths.get(f"{rel}::{node.name}", 0), code_lines(node, lines)
                )
    return lengths


def test_no_function_is_longer_than_80_code_lines() -> None:
    lengths = _function_lengths()
    too_long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert too_long == {}, f"functions over {MAX_FUNCTION_LINES} code lines (split them): {too_long}"


def test_code_lines_leave_out_docstring_comments_and_blank_lines() -> None:
    source = 'def f(x):\n    """Doc\n    string."""\n\n    # a comment\n    y = x + 1\n    return y\n'
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    assert code_lines(node, source.splitlines()) == 3  # def, y = ..., return


def test_package_inits_import_eagerly_or_not_at_all() -> None:
    # one style of package __init__ (docs/architecture.md, import rule): no lazy PEP 562 __getattr__
    lazy = {
        rel
        for rel, tree, _ in _modules()
        if rel.endswith("__init__.py")
        and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
    }
    assert lazy == set(LAZY_BY_DESIGN)


def _in_function_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import inside a function."""
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    found += [(a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.append((node.module, node.lineno))
    return found


def test_standard_library_is_imported_at_the_top() -> None:
    # delaying a standard-library import saves nothing: the import rule's reasons never apply to it
    stdlib = set(sys.stdlib_module_names)
    late = {
        f"{rel}: {name}"
        for rel, tree, _ in _modules()
        for name, _line in _in_function_imports(tree)
        if name.split(".")[0] in stdlib
    }
    assert late == set()


#: Modules allowed to serialise JSON into a file themselves: the one writer, and the lock file, which must be
#: created exclusively (``os.link``), which an atomic replace cannot do.
JSON_WRITERS: frozenset[str] = frozenset({"fileio.py", "engine/lock.py"})


def _name(node: ast.expr) -> str:
    """``"json.dumps"`` for ``json.dumps``, ``"write_text"`` for ``x.write_text``, ``"f"`` for ``f``."""
    if isinstance(node, ast.Attribute):
        return f"{node.value.id}.{node.attr}" if isinstance(node.value, ast.Name) else node.attr
    return node.id if isinstance(node, ast.Name) else ""


def test_json_files_are_written_by_the_one_json_writer() -> None:
    # fileio.atomic_write_json: atomic, NaN as null, one argument order (path, obj)
    own_writers = set()
    for rel, tree, _ in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or rel in JSON_WRITERS:
                continue
            name = _name(node.func)
            dumps_into_write = "write" in name.split(".")[-1] and any(
                isinstance(arg, ast.BinOp | ast.Call)
                and any(isinstance(n, ast.Call) and _name(n.func) == "json.dumps" for n in ast.walk(arg))
                for arg in node.args
            )
            if name == "json.dump" or dumps_into_write:
                own_writers.add(f"{rel}:{node.lineno}")
    assert own_writers == set(), f"write JSON with fileio.atomic_write_json: {sorted(own_writers)}"


def test_the_engine_imports_simpleitk_only_to_prepare_raw_scans() -> None:
    # import rule 7: bundle runs on NIfTI files do not load SimpleITK; engine.inputs / engine.raw_inputs
    # import mri_slice_transfer.prepare inside the functions that look into DICOM folders or prepare scans
    code = "import sys, mri_slice_transfer.engine; print('SimpleITK' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
