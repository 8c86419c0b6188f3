"""Every benchmark script still fits the API: ``python benchmarks/X.py --help`` exits 0, and every name it imports
from this checkout (edgeclf, tests/ helpers, sibling scripts), at module level or inside a function, exists.

Parametrized over ``benchmarks/*.py``: a new script is covered without editing this file. Fast (about a second
a script; no script imports TensorFlow at module level), so not marked slow; it trains and measures nothing.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
# where a script's local imports are found: the checkout (edgeclf.*), and the folders scripts put on sys.path
SEARCH = [ROOT, ROOT / "tests", ROOT / "benchmarks"]


def local_module(name: str) -> Path | None:
    """The file of a module of this checkout, or None for a third-party or standard module."""
    parts = name.split(".")
    for base in SEARCH:
        path = base.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def top_level_names(path: Path) -> set[str]:
    """Names a module defines at top level (in if/try blocks too), and the submodules of a package."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    if path.name == "__init__.py":
        names.update(p.stem for p in path.parent.glob("*.py"))
        names.update(p.name for p in path.parent.iterdir() if (p / "__init__.py").is_file())
    if "__getattr__" in names:  # a lazy module (PEP 562, edgeclf/__init__.py): its __all__ is what it offers
        names.update(lazy_all(path))
    return names


def lazy_all(path: Path) -> set[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def unresolved_imports(script: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            path = local_module(node.module)
            if path is None:
                if node.module.split(".")[0] == "edgeclf":
                    problems.append(f"line {node.lineno}: no module {node.module}")
                continue
            defined = top_level_names(path)
            problems += [f"line {node.lineno}: {node.module} has no {a.name}" for a in node.names
                         if a.name != "*" and a.name not in defined]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgeclf" and local_module(alias.name) is None:
                    problems.append(f"line {node.lineno}: no module {alias.name}")
    return problems


def test_the_checker_sees_a_drift(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("from edgeclf.contract import load_bundle, no_such_name\n"
                      "def f():\n    from edgeclf.no_such_module import x\n    import edgeclf.runtime.loop\n")
    assert unresolved_imports(script) == ["line 1: edgeclf.contract has no no_such_name",
                                          "line 3: no module edgeclf.no_such_module"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_imports_resolve(script):
    assert not unresolved_imports(script), "\n".join(unresolved_imports(script))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_help_runs(script):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"{script.name} --help exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{script.name} --help printed nothing"
