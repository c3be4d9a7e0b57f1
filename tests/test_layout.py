"""The layout keeps one direction of dependency: models <- ops -> datasets, entry points on top.

* ``models`` is self-contained (it imports nothing of ``ops`` or ``datasets``), and so is ``datasets``;
* no module wraps a project import in try/except (``ops`` finds its siblings through ``ops.packages``);
* no entry point imports another, and none edits ``sys.path``;
* no module of ``models``, ``ops`` or ``datasets`` is longer than :data:`MAX_MODULE_LINES` lines (one concept
  per module, read top to bottom).
"""
import ast
import json
import subprocess
import sys

import pytest

import entry_points
from support import REPO

PACKAGES = ("models", "ops", "datasets")
ENTRY_POINTS = ["main.py", "test_early_exit.py"] + sorted(
    str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*.py"))
ENTRY_MODULES = {"main", "test_early_exit"} | {"scripts." + p.stem for p in (REPO / "scripts").glob("*.py")}


def _project_files():
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")) + \
        [REPO / p for p in ENTRY_POINTS]


def _imported_project_modules(package: str):
    probe = (f"import sys, json; import {package}; "
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {PACKAGES!r})))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("package, forbidden", [("models", ("ops", "datasets")), ("datasets", ("ops", "models"))])
def test_a_lower_package_imports_nothing_of_the_others(package, forbidden):
    loaded = _imported_project_modules(package)
    assert any(m.startswith(package) for m in loaded)
    assert [m for m in loaded if m.split(".")[0] in forbidden] == []


def _is_project_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] in PACKAGES for alias in node.names)
    return False


def test_no_project_import_is_wrapped_in_try_except():
    offenders = []
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Try) and node.handlers:
                offenders += [f"{path.relative_to(REPO)}:{inner.lineno}" for stmt in node.body
                              for inner in ast.walk(stmt) if _is_project_import(inner)]
    assert offenders == []


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module or ""
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def test_no_module_imports_an_entry_point():
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}" for path in _project_files()
                 for line, name in _imports(path) if name in ENTRY_MODULES]
    assert offenders == []


def test_no_entry_point_edits_sys_path():
    offenders = [p for p in ENTRY_POINTS if "sys.path" in (REPO / p).read_text(encoding="utf-8")]
    assert offenders == []


@pytest.mark.parametrize("script", [p for p in ENTRY_POINTS if p.startswith("scripts/")])
def test_every_script_runs_as_a_module_from_the_repository_root(script):
    module = script[:-3].replace("/", ".")
    result = entry_points.run([sys.executable, "-m", module, "--help"], timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr[-2000:]


#: The longest a module of ``models``, ``ops`` or ``datasets`` may be.
MAX_MODULE_LINES = 600


def _module_lines():
    """{path relative to the repository: line count} of every module of the packages."""
    return {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def test_no_module_is_longer_than_the_limit():
    offenders = sorted(f"{path} ({count} lines)" for path, count in _module_lines().items() if count > MAX_MODULE_LINES)
    assert offenders == [], f"modules above {MAX_MODULE_LINES} lines (split them by concern): {', '.join(offenders)}"
