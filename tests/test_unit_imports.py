"""The layering of edgeclf/, read from the source (ast; every import counts, a lazy one inside a function and a
type-checking one included): settings know no converter, bench reads only export folders (not the converter,
the trainer or the run folder), the converter does not lean on bench, and no module imports itself round a
circle."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgeclf"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges = {}
    for name, path in mods.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("edgeclf")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package upwards
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.startswith("edgeclf"):
                    targets |= {resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in mods else resolve(base)
                                for a in node.names}
        edges[name] = {t for t in targets if t and t != name}
    return edges


def _imports_from(edges, source: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    inside = [m for m in edges if m == source or m.startswith(source + ".")]
    return [(m, t) for m in inside for t in sorted(edges[m])
            if any(t == f or t.startswith(f + ".") for f in forbidden)]


def test_the_layers_hold():
    edges = _graph()
    assert "edgeclf.convert.exporter" in edges and "edgeclf.bench.core" in edges  # the graph is the real one
    assert _imports_from(edges, "edgeclf.config", ("edgeclf.convert",)) == []
    assert _imports_from(edges, "edgeclf.bench", ("edgeclf.convert", "edgeclf.train", "edgeclf.rundir")) == []
    assert _imports_from(edges, "edgeclf.convert", ("edgeclf.bench",)) == []
    # the product's first promise: the device runtime (the service and the field collector included) needs
    # nothing of training, conversion, benchmarking, the backbones, the run's page or the sweep
    assert _imports_from(edges, "edgeclf.runtime", ("edgeclf.train", "edgeclf.convert", "edgeclf.bench",
                                                    "edgeclf.models", "edgeclf.page", "edgeclf.sweep")) == []


def test_runtime_never_imports_tensorflow_even_lazily():
    heavy = ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization", "tf2onnx")
    found = []
    for path in sorted((PKG / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.split(".")[0] in heavy]
    # the one exception, documented in backends.py: LiteRT's last fallback, tensorflow.lite, taken only where
    # neither ai_edge_litert nor tflite_runtime is installed (a workstation; never a board)
    assert found == [("backends.py", "tensorflow")]


def test_imports_work_without_docstrings():
    """python -OO drops docstrings: no module may build a constant from its own __doc__."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-OO", "-c", "import edgeclf.cli, edgeclf.bench.report, "
                           "edgeclf.bench.armdevice, edgeclf.runtime.serve"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_import_circle():
    edges = _graph()
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_checks_see_a_planted_violation(tmp_path, monkeypatch):
    """The control: a circle and a forbidden import, planted in a copy of the package, are caught."""
    import shutil
    import sys

    copy = tmp_path / "edgeclf"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "bench" / "planted.py").write_text("from edgeclf.convert import search\nfrom edgeclf import metrics\n")
    (copy / "metrics.py").write_text((copy / "metrics.py").read_text() + "\nfrom edgeclf.bench import planted\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", copy)
    edges = _graph()
    assert _imports_from(edges, "edgeclf.bench", ("edgeclf.convert",)) == [("edgeclf.bench.planted",
                                                                            "edgeclf.convert.search")]
    try:
        test_no_import_circle()
    except AssertionError:
        return
    raise AssertionError("the planted circle edgeclf.metrics -> edgeclf.bench.planted -> edgeclf.metrics was missed")
