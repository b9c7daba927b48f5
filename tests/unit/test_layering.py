"""The dependency rule of the README's architecture section, checked on every import of the code.

Every ``import`` / ``from ... import`` anywhere in a module counts, those inside functions (lazy) too,
and so do ``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# package -> layer; a package may import packages of lower layers only (never one of its own layer)
LAYERS = {
    "schemas": 0, "formats": 0,
    "sql": 1, "data_contracts": 1,
    "pipelines": 2, "training": 2,
    "simulator": 3,
    "dagster_project": 4,
}
ONLY_IN_DAGSTER_PROJECT = ("dagster", "dagster_webserver")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the layered packages."""
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import in ``path``, lazy ones and literal import_module calls included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.args[0].value, node.lineno))
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for name, path in modules().items():
        own = name.split(".")[0]
        for target, line in imports_of(name, path):
            top = target.split(".")[0]
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if top in ONLY_IN_DAGSTER_PROJECT and own != "dagster_project":
                wrong.append(f"{where} (only dagster_project/ imports Dagster)")
            elif top in LAYERS and top != own and LAYERS[top] >= LAYERS[own]:
                wrong.append(f"{where} ({own} is layer {LAYERS[own]}, {top} is layer {LAYERS[top]})")
    assert not wrong, "imports against the dependency rule:\n" + "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    """No import cycle between modules (lazy imports count: a cycle hidden in a function is still one)."""
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for target, _ in imports_of(name, path):
            # ``from a.b import c``: the module a.b.c when it is one, else a.b
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):   # a package's own __init__ is no cycle
                graph[name].add(target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(known):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_settings_registry_names_config_classes_that_pull_in_no_dagster() -> None:
    """``formats.settings.SECTIONS`` is the bottom layer's one reference upward, by name: each entry must name
    a config dataclass, and loading every section (what a stage's command line does when it reads the
    home's settings file) must not import Dagster."""
    import dataclasses
    import subprocess
    import sys

    from formats.settings import SECTIONS, config_class

    for section in SECTIONS:
        assert dataclasses.is_dataclass(config_class(section)), section
    probe = ("import sys; from formats.settings import SECTIONS, config_class; "
             "[config_class(s) for s in SECTIONS]; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("source, expected", [
    ("import dagster\n", ["dagster"]),
    ("def f():\n    from pipelines.publish import version\n", ["pipelines.publish", "pipelines.publish.version"]),
    ("import importlib\nimportlib.import_module('training.config')\n", ["importlib", "training.config"]),
    ("from . import sibling\n", ["formats", "formats.sibling"]),
])
def test_the_walker_sees_every_kind_of_import(tmp_path: Path, source: str, expected: list[str]) -> None:
    """The rule is only as good as the walker: top-level, lazy, literal import_module and relative imports."""
    module = tmp_path / "probe.py"
    module.write_text(source, encoding="utf-8")
    assert [target for target, _ in imports_of("formats.probe", module)] == expected
