"""The import graph keeps its layers (every module of gradwatch, parsed, never imported):

- the check engine (``gradwatch.check``) imports nothing of tracking, alerts, the hook or MLflow;
- sinks (``gradwatch.tracking``, ``gradwatch.alerts``) never import the hook;
- reading runs back (``gradwatch.runs``) imports neither the hook nor the writing pipeline,
  and reaches MLflow only through ``gradwatch.mlflow_access`` (so do the CLI and the sink);
- no module imports another package's private (underscore) modules or names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradwatch"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, [names])`` for every import statement, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(module, path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [alias.name for alias in node.names]))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_owner(imported: str) -> str | None:
    """The package that owns ``imported`` if it is a private module (``a.b._c`` -> ``a.b``)."""
    parts = imported.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


GRAPH = {name: _imports(name, path) for name, path in _modules().items()}


def _targets(module: str) -> set[str]:
    out = set()
    for imported, names in GRAPH[module]:
        out.add(imported)
        out.update(f"{imported}.{n}" for n in names)  # `from gradwatch import hook`
    return out


def test_the_graph_is_read():
    assert {"gradwatch.check.engine", "gradwatch.schema", "gradwatch.runs.compare"} <= set(GRAPH)
    assert "gradwatch.check._inputs" in _targets("gradwatch.check.engine")


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("gradwatch.check", ("gradwatch.tracking", "gradwatch.alerts", "gradwatch.hook", "mlflow")),
        # The writer never needs the reader: the hook draws the report (hook/run.py).
        ("gradwatch.tracking", ("gradwatch.hook", "gradwatch.report", "gradwatch.runs")),
        ("gradwatch.alerts", ("gradwatch.hook",)),
        ("gradwatch.runs", ("gradwatch.hook", "gradwatch.tracking", "mlflow")),
        ("gradwatch.report", ("gradwatch.hook", "mlflow")),
        ("gradwatch.schema", ("gradwatch.hook", "gradwatch.tracking", "mlflow")),
        ("gradwatch.alert_sink", ("gradwatch.hook", "mlflow")),
        ("gradwatch.cli", ("mlflow",)),
    ],
)
def test_layers(layer, forbidden):
    broken = sorted(
        f"{module} imports {target}"
        for module in GRAPH
        if _within(module, layer)
        for target in _targets(module)
        if any(_within(target, f) for f in forbidden)
    )
    assert broken == []


def test_no_module_imports_another_packages_private_names():
    found = set()
    for module, path in _modules().items():
        package = _package_of(module, path)
        for imported, names in GRAPH[module]:
            owner = _private_owner(imported) if imported.startswith("gradwatch") else None
            if owner is not None and not _within(package, owner):
                found.add((module, imported))
            if imported.startswith("gradwatch") and _package_of_imported(imported) != package:
                found.update((module, f"{imported}.{n}") for n in names if _is_private(n))
    assert sorted(found) == [], "import the public name instead (or make it public)"


def _package_of_imported(imported: str) -> str:
    path = _modules().get(imported)
    if path is None:
        return imported
    return _package_of(imported, path)


def test_the_tracking_pipeline_has_no_import_circle():
    # Within gradwatch.tracking, imports (lazy ones included) form no circle: each module can
    # be read knowing only those below it.
    inside = {m for m in GRAPH if _within(m, "gradwatch.tracking") and m != "gradwatch.tracking"}
    edges = {m: {t for t in _targets(m) if t in inside and t != m} for m in inside}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def circle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return [*path, module, target]
            if target not in state:
                found = circle_from(target, [*path, module])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(inside):
        if module not in state:
            assert circle_from(module, []) is None
