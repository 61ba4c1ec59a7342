"""The package's shape: no import cycle, no function-level import of harness modules, one error
base with the CLI telling bugs from user errors, and a documented public API."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness
from harness.cli import main
from harness.errors import HarnessError

PACKAGE = Path(harness.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _target(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    """The harness module an import statement loads (a submodule when it names one)."""
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        base = node.module or ""
        if node.level:  # relative imports are not used in the package; resolve them anyway
            package = module.split(".")[: -node.level or None]
            base = ".".join([*package, base] if base else package)
        name = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
    return name if name == "harness" or name.startswith("harness.") else None


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(module-level harness imports, function-level ones as 'line: statement')."""
    tree = ast.parse(MODULES[module].read_text())
    top, inner = set(), []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            nested = depth + isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                for alias in child.names:
                    target = _target(module, child, alias)
                    if target is None:
                        continue
                    if depth:
                        inner.append(f"{module}:{child.lineno} imports {target}")
                    else:
                        top.add(target)
            visit(child, nested)

    visit(tree, 0)
    return top, inner


def test_no_function_level_import_of_harness_modules():
    inner = [line for module in MODULES for line in _imports(module)[1]]
    assert inner == [], "imports inside functions hide the dependency graph"


def test_the_import_graph_has_no_cycle():
    graph = {module: {t for t in _imports(module)[0] if t != module} for module in MODULES}
    # a submodule's import of its own package's __init__ is how Python loads it, not a cycle
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert "harness" not in {t for targets in graph.values() for t in targets if t}, \
        "no module imports the package's __init__ (the public API sits on top of everything)"


PUBLIC_FUNCTIONS = [name for name in harness.__all__
                    if inspect.isfunction(getattr(harness, name))]


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_every_public_function_documents_args_returns_raises(name):
    function = getattr(harness, name)
    doc = inspect.getdoc(function) or ""
    parameters = [p for p in inspect.signature(function).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert doc, f"{name} has no docstring"
    if parameters:
        assert "Args:" in doc, f"{name}: no Args section"
        for parameter in parameters:
            assert parameter.name in doc.split("Args:", 1)[1], \
                f"{name}: {parameter.name} undocumented"
    assert "Returns:" in doc, f"{name}: no Returns section"
    assert "Raises:" in doc, f"{name}: no Raises section"


def test_every_error_class_derives_from_harness_error():
    found = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or any(
                    isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception"))
                    for b in node.bases)):
                found.append((module, node.name))
    assert found
    for module, name in found:
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert issubclass(cls, HarnessError), f"{module}.{name} is not a HarnessError"


def test_no_plain_builtin_error_is_raised_on_purpose():
    plain = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(
                    node.exc.func, ast.Name) and node.exc.func.id in (
                        "ValueError", "RuntimeError", "TypeError", "KeyError"):
                plain.append(f"{module}:{node.lineno} raises {node.exc.func.id}")
    assert plain == [], "errors raised on purpose are HarnessErrors (the CLI prints them)"


def _metric_plugin(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "faulty_metric.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass

        import harness


        @dataclass(frozen=True)
        class FaultySettings:
            methods: list | None = None


        @harness.register_metric("faulty", settings=FaultySettings, direction="up",
                                 citation="a test")
        def faulty(unit, settings):
            """A metric that fails."""
    ''') + textwrap.indent(textwrap.dedent(body), "    "))
    return path


def _tiny_config(tmp_path: Path, plugin: Path) -> Path:
    config = tmp_path / "faulty.yaml"
    config.write_text(textwrap.dedent(f"""
        name: faulty
        plugins: [{plugin.name}]
        model: {{name: efficientnet_lite0}}
        data: {{name: samples, limit: 1}}
        methods: [sobel]
        metrics: {{faulty: {{}}}}
        output_dir: {tmp_path / 'out'}
        tracking: {{enabled: false}}
    """))
    return config


@pytest.mark.slow
def test_a_bug_shows_its_traceback_and_a_user_error_does_not(tmp_path):
    """A plain ValueError deep in a metric is a bug: traceback, exit 1. A ConfigError is the
    user's: one line, exit 2."""
    plugin = _metric_plugin(tmp_path, 'raise ValueError("an internal bug")\n')
    config = _tiny_config(tmp_path, plugin)
    bug = subprocess.run([sys.executable, "-m", "harness", "run", str(config), "--no-progress"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert bug.returncode == 1, bug.stderr[-2000:]
    assert "Traceback" in bug.stderr and "ValueError: an internal bug" in bug.stderr
    assert "harness: error" not in bug.stderr
    user = subprocess.run([sys.executable, "-m", "harness", "run", str(config), "--no-progress",
                           "--set", "batch_size=0"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert user.returncode == 2
    assert user.stderr.strip() == "harness: error: batch_size: must be >= 1, got 0"
    try:  # in this process: the plug-in registers "faulty" here, removed for the later tests
        assert main(["run", str(config), "--set", "metrics.faulty.x=1"]) == 2
    finally:
        harness.metrics.METRICS.remove("faulty")
        sys.modules.pop("faulty_metric", None)
