"""Imports of heartmula modules stand at the top of the module that uses them, and they form no cycle.

A function-local import of a heartmula module is kept only where importing it up front would cost what the
importing module must not pay (found with ast, following module-level imports through the package):
- it needs a package that only an extra installs (tests/test_extras.py reads which), so the core install stays
  importable and a missing extra ends in an error that names it;
- the importing module is one that `heartmula --help` loads (heartmula, heartmula.cli.*, and what they import at
  load) and the imported one loads a package beyond the standard library (torch above all): the CLI builds its
  parser from every command module, and each command imports its implementation inside its handlers."""

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from test_extras import extras_only_modules

from heartmula.cli.model import LM_PRESETS
from heartmula.lm.pretrained import PRESETS

SRC = Path(__file__).resolve().parents[1] / "src"


def is_a_command_module(module: str) -> bool:
    """The modules `heartmula --help` imports to build the parser (with all they import at load)."""
    return module in ("heartmula", "heartmula.cli") or module.startswith("heartmula.cli.")


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module of the heartmula package."""
    files = {}
    for path in sorted((src / "heartmula").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(imports run when the module loads, imports inside functions); `if TYPE_CHECKING:` blocks run neither."""
    at_load, in_functions = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (in_functions if in_function else at_load).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return at_load, in_functions


def imported_names(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement loads by name: `from heartmula.a import b` is heartmula.a.b when that is a
    module, else heartmula.a; third-party modules by their top-level name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    if len(names) < len(node.names):
        names.append(base)
    return names


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class ImportGraph:
    """The heartmula package's imports, read with ast."""

    def __init__(self, src: Path = SRC):
        self.src = src
        self.files = module_files(src)
        self.at_load: dict[str, set[str]] = {}
        self.local: dict[str, list[tuple[int, str]]] = {}
        known = set(self.files)
        for name, path in self.files.items():
            is_package = path.name == "__init__.py"
            at_load, in_functions = _imports(ast.parse(path.read_text(encoding="utf-8")))
            self.at_load[name] = {m for node in at_load for m in imported_names(node, name, is_package, known)}
            self.local[name] = [(node.lineno, m) for node in in_functions
                                for m in imported_names(node, name, is_package, known)
                                if m.partition(".")[0] == "heartmula"]

    @cache  # noqa: B019 - one graph per test run
    def loads(self, module: str) -> frozenset[str]:
        """Every module (heartmula's by full name, others by top-level name) that importing `module` runs."""
        seen, todo = set(), [module]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.files:
                todo += _parents(name) + sorted(self.at_load[name])
        return frozenset(m if m in self.files else m.partition(".")[0] for m in seen)

    def needs_another_extra(self, module: str, importer: str, extras_only: frozenset[str]) -> bool:
        """Whether importing `module` needs a package of an extra that `importer` itself does not load."""
        return bool((self.loads(module) - self.loads(importer)) & extras_only)

    def loads_beyond_the_stdlib(self, module: str) -> bool:
        return any(m not in self.files and m not in sys.stdlib_module_names for m in self.loads(module))

    def misplaced_local_imports(self, extras_only: frozenset[str]) -> list[str]:
        """`file:line module` for each function-local import of a heartmula module that could stand at the top."""
        found = []
        startup = set().union(*(self.loads(m) for m in self.files if is_a_command_module(m)))
        for importer, imports in self.local.items():
            for line, module in imports:
                if self.needs_another_extra(module, importer, extras_only):
                    continue
                if importer in startup and self.loads_beyond_the_stdlib(module):
                    continue
                found.append(f"{self.files[importer].relative_to(self.src).as_posix()}:{line} {module}")
        return found

    def cycles(self) -> list[list[str]]:
        """Strongly connected groups of heartmula modules through all their imports (at load and in functions)."""
        edges = {m: {t for t in self.at_load[m] | {t for _, t in self.local[m]} if t in self.files and t != m}
                 for m in self.files}
        index, low, stack, on_stack, groups = {}, {}, [], set(), []

        def connect(node: str) -> None:  # Tarjan's algorithm
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for target in sorted(edges[node]):
                if target not in index:
                    connect(target)
                    low[node] = min(low[node], low[target])
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
            if low[node] == index[node]:
                group = []
                while not group or group[-1] != node:
                    group.append(stack.pop())
                    on_stack.discard(group[-1])
                if len(group) > 1:
                    groups.append(sorted(group))

        for node in sorted(edges):
            if node not in index:
                connect(node)
        return groups


@cache
def extras_only() -> frozenset[str]:
    return frozenset(extras_only_modules())


def test_heartmula_modules_are_imported_at_the_top_unless_that_costs_an_extra_or_start_up():
    found = ImportGraph().misplaced_local_imports(extras_only())
    assert not found, "function-local imports that belong at the top of the module:\n" + "\n".join(found)


def test_heartmula_modules_import_each_other_without_cycles():
    assert ImportGraph().cycles() == []


def test_the_command_line_parser_loads_no_third_party_package():
    probe = ("import sys\nbefore = set(sys.modules)\nfrom heartmula.cli import build_parser\nbuild_parser()\n"
             "print(sorted({m.partition('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['heartmula']"


def _write(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_check_finds_a_local_import_that_could_stand_at_the_top_and_a_cycle(tmp_path):
    _write(tmp_path, "heartmula/__init__.py", "")
    _write(tmp_path, "heartmula/errors.py", "class HeartMuLaError(Exception):\n    pass\n")
    _write(tmp_path, "heartmula/served.py", "import fastapi\n")
    _write(tmp_path, "heartmula/cli/__init__.py", "def run():\n    from heartmula import model\n")
    _write(tmp_path, "heartmula/model.py", "import torch\n\nfrom heartmula.data import rows\n\n\n"
           "def load():\n    from heartmula.errors import HeartMuLaError\n    from heartmula import served\n")
    _write(tmp_path, "heartmula/data.py", "def rows():\n    from .model import load\n")
    graph = ImportGraph(tmp_path)
    assert graph.misplaced_local_imports(frozenset({"fastapi"})) == [
        "heartmula/data.py:2 heartmula.model", "heartmula/model.py:7 heartmula.errors"]
    assert graph.cycles() == [["heartmula.data", "heartmula.model"]]


def test_the_parser_offers_the_lm_presets():
    assert LM_PRESETS == tuple(sorted(PRESETS))
