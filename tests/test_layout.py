"""The package's plan holds: one-way layers, no import cycle, small modules.

The layers themselves are declared once, in pyproject.toml's ``[tool.importlinter]``
(config -> api -> crawl -> history -> audit -> output/metrics -> service -> commands);
import-linter checks every import chain against them, direct or through other modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nexus_audit"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ours that ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def test_layers_contract() -> None:
    """import-linter finds no import against the declared layers (pyproject.toml)."""
    tool = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(tool), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycle() -> None:
    """No module imports itself back through others (module-level imports)."""
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export, not a
    # cycle of logic: leave those edges out.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_modules_are_small() -> None:
    """No module of the package is over 500 lines: each file has one job."""
    big = {name: n for name, path in _modules().items()
           if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


#: What reads the process environment: ``os.environ``, ``os.getenv`` and their bytes forms.
ENVIRONMENT_READS = frozenset({"environ", "environb", "getenv", "getenvb"})


def _environment_reads(path: Path) -> list[str]:
    """Where ``path`` reads the environment: ``os.environ``/``os.getenv`` (under any alias)
    or one of them imported by name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_READS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "posix", "nt"}:
            found.extend(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import "
                         f"{alias.name}" for alias in node.names if alias.name in ENVIRONMENT_READS)
    return found


def test_only_config_reads_the_environment() -> None:
    """Every setting comes through nexus_audit.config: no other module of the package (the
    simulator, a CLI of its own, aside) reads os.environ or os.getenv."""
    exempt = {PACKAGE / "config.py"}
    reads = [read for path in sorted(PACKAGE.rglob("*.py"))
             if path not in exempt and PACKAGE / "simulator" not in path.parents
             for read in _environment_reads(path)]
    assert reads == []
    assert _environment_reads(PACKAGE / "config.py"), "the check no longer sees config's reads"
