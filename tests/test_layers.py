"""The package's layering (docs/ARCHITECTURE.md): every ``covidxray`` import, module-level or inside a function,
goes to the same layer or a lower one, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "covidxray"

# Leaves first: modules that import nothing of covidxray (facts, errors, pure metrics), then the data flow.
LAYERS = (
    (
        "leaf",
        (
            "covidxray.about",
            "covidxray.decision",
            "covidxray.ensemble",
            "covidxray.errors",
            "covidxray.kernels",
            "covidxray.metrics",
            "covidxray.onnxrt",
            "covidxray.vocabulary",
        ),
    ),
    ("imageio", ("covidxray.imageio",)),
    ("preprocess", ("covidxray.preprocess",)),
    ("models", ("covidxray.models",)),
    ("segmentation", ("covidxray.segmentation", "covidxray.viewcheck")),
    ("data", ("covidxray.data",)),
    ("bundle", ("covidxray.bundle",)),
    ("training", ("covidxray.training",)),
    ("evaluation", ("covidxray.evaluation",)),
    ("prediction", ("covidxray.prediction",)),
    ("web", ("covidxray.web",)),
    ("pipeline", ("covidxray.pipeline",)),
    # the command line and the package's public face (covidxray.load_model) sit on top
    ("cli", ("covidxray.cli", "covidxray.__main__", "covidxray")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer index of a module: the longest matching prefix in :data:`LAYERS`."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/ARCHITECTURE.md")
    return best


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The covidxray modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from covidxray.x import y` imports covidxray.x.y when y is a module, else covidxray.x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "covidxray" or name.startswith("covidxray."):
                # the deepest known module named by the import
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name != me:
                    found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_upward_imports():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "imports going up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d) :], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from covidxray.cli import CLIError", {"covidxray.cli"}),
        ("def f():\n    from covidxray.prediction import predictor", {"covidxray.prediction.predictor"}),
        ("from . import cli", {"covidxray.data.cli"}),
    ],
)
def test_the_parser_sees_function_level_and_relative_imports(tmp_path, source, expected, monkeypatch):
    fake = PACKAGE / "data" / "_layer_probe.py"
    modules = set(import_graph()) | {"covidxray.data._layer_probe"}
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert imports_of(fake, modules) == expected


def test_architecture_doc_lists_every_module_and_the_layer_order():
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    assert " < ".join(name for name, _ in LAYERS[1:-1]) + " < cli" in doc
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and rel != "__init__.py":
            continue  # a package's entry points; its modules are listed
        if path.parent.name == "sources":
            assert path.name in doc, f"docs/ARCHITECTURE.md does not list {rel}"
        else:
            assert rel in doc, f"docs/ARCHITECTURE.md does not list {rel}"
