"""The package's layers (pyproject.toml, [tool.importlinter]) hold: no module imports from a layer above
its own, and the report and the run records import no torch; no module or function outgrows a reader."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "densbench"


def test_import_linter_contracts_are_kept():
    lint = pytest.importorskip("importlinter.cli")
    assert lint.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0  # its report names any broken import


def test_a_module_of_an_upper_layer_imported_by_a_lower_one_breaks_the_contract(tmp_path, monkeypatch):
    # the contract is not vacuous: the same check on a copy where distributions imports runs fails
    import shutil
    import sys

    lint = pytest.importorskip("importlinter.cli")
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "densbench")
    ops = copy / "densbench" / "distributions" / "ops.py"
    ops.write_text(ops.read_text() + "\n\ndef _upward():\n    from densbench.runs import execution  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(copy))
    for name in [m for m in sys.modules if m == "densbench" or m.startswith("densbench.")]:
        monkeypatch.delitem(sys.modules, name)
    assert lint.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 1


MODULE_LINES, FUNCTION_LINES = 400, 60  # what a reader takes in at once


def test_no_module_or_function_outgrows_what_a_reader_takes_in():
    import ast

    too_long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= FUNCTION_LINES:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
