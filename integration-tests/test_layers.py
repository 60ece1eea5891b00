"""Layer contracts of the workspace, read from the source with the standard library alone (ast).

Every module under packages/*/src is parsed, and every import in it is collected: module level, inside functions
and classes, under `if TYPE_CHECKING:` alike, plus `importlib.import_module("literal")` calls (names computed at
run time, such as the lazy table of `dae_counterfactual.__init__`, cannot be seen). Relative imports are resolved
against the importing module's package. Contracts:

(a) medimg_core imports no method package and not medimg_benchmark;
(b) no method package imports another method package, nor medimg_benchmark;
(c) inside one package (its top-level name: medimg_core, cipl, ...), the modules import each other without a
    cycle, checked on the strongly connected components of the module graph;
(d) medimg_benchmark (the `medimg benchmark` command, which scores every method) may import the core and every
    method package; nothing imports it (core's `medimg` group finds its command through the entry-point group
    `medimg.commands`, not an import).

The module graph (c). A node is a module; a package's `__init__.py` is the node named after the package (`cipl`).
An import makes one edge, to the module it names:
- `import a.b.c` -> a.b.c;
- `from a.b import c` -> a.b.c when c is a submodule, else a.b (a name defined or re-exported by a/b or its
  `__init__`);
- `from . import c` / `from .. import c`: the same, after resolving the dots.
Python runs the `__init__` of every parent package before a submodule, but that implicit step is no edge: otherwise
an `__init__` that re-exports its submodules (`cipl/__init__.py` imports `cipl.model`) would close a cycle with every
submodule, although by the time the submodule runs the package is already in sys.modules and nothing is asked of
it. An edge into an `__init__` exists only where a module names the package itself (`from cipl import CIPL`,
`import cipl`); then a cycle through it is real (the submodule asks a half-initialised package for a name) and is
reported. The rule drops nothing between two submodules: every import naming a submodule is an edge to it, so
a.py -> b.py -> a.py, directly or through re-exporting `__init__`s, always shows. A module importing itself is not
reported (it cannot fail).

On failure the test prints each cycle as a chain of imports with the file, line and function of each.
"""

from __future__ import annotations

import ast
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "medimg_core"
BENCHMARK = "medimg_benchmark"


@dataclass(frozen=True)
class Import:
    """One import: `source` module imports module `target` at `path`:`line` (`where`: "module level" or a function)."""

    source: str
    target: str
    path: Path
    line: int
    where: str
    text: str

    def describe(self, root: Path | None = None) -> str:
        path = self.path.relative_to(root) if root is not None and self.path.is_relative_to(root) else self.path
        return f"{self.source} -> {self.target}   ({path}:{self.line}, {self.where}: {self.text})"


def discover_packages(src_dirs: list[Path]) -> dict[str, Path]:
    """{top-level package name: its folder} for every src dir's packages (folders with an __init__.py)."""
    out = {}
    for src in src_dirs:
        for init in sorted(src.glob("*/__init__.py")):
            out[init.parent.name] = init.parent
    return out


def module_files(name: str, folder: Path) -> dict[str, Path]:
    """{dotted module name: file} for the package `name` in `folder` (an __init__.py is named after its package)."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = [name, *path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, path: Path, known: set[str]):
        self.module, self.path, self.known = module, path, known
        self.package = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        where = f"inside {'.'.join(self.scope)}()" if self.scope else "module level"
        self.found.append(Import(self.module, target, self.path, node.lineno, where, ast.unparse(node).split("\n")[0]))

    def _known_prefix(self, name: str) -> str:
        """The longest known module that `name` starts with (first-party), else `name` itself."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.known:
                return ".".join(parts[:n])
        return name

    def _scoped(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.name)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, self._known_prefix(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            if node.level - 1 >= len(parts):
                raise ValueError(f"{self.path}:{node.lineno}: relative import beyond the top-level package")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(node, sub if sub in self.known else self._known_prefix(base))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if (name == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            self._add(node, self._known_prefix(node.args[0].value))
        self.generic_visit(node)


def collect_imports(src_dirs: list[Path]) -> tuple[dict[str, set[str]], list[Import]]:
    """({top-level package: its modules}, every import of every module under `src_dirs`)."""
    files: dict[str, Path] = {}
    modules: dict[str, set[str]] = {}
    for name, folder in discover_packages(src_dirs).items():
        found = module_files(name, folder)
        files.update(found)
        modules[name] = set(found)
    known = set(files)
    imports = []
    for module, path in sorted(files.items()):
        collector = _Collector(module, path.name == "__init__.py", path, known)
        collector.visit(ast.parse(path.read_text(), str(path)))
        imports += collector.found
    return modules, imports


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of `graph` with more than one node, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle start -> ... -> start inside `component` (breadth first): [start, ..., start]."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in no cycle of {sorted(component)}")


def import_cycles(src_dirs: list[Path], root: Path | None = None) -> dict[str, list[str]]:
    """{top-level package: one message per import cycle among its modules} (packages without a cycle left out)."""
    modules, imports = collect_imports(src_dirs)
    out = {}
    for package, members in sorted(modules.items()):
        graph: dict[str, set[str]] = {m: set() for m in members}
        evidence: dict[tuple[str, str], Import] = {}
        for imp in imports:
            if imp.source in members and imp.target in members and imp.source != imp.target:
                graph[imp.source].add(imp.target)
                evidence.setdefault((imp.source, imp.target), imp)
        messages = []
        for component in strongly_connected(graph):
            chain = cycle_through(component[0], set(component), graph)
            steps = "\n".join(f"  {evidence[(a, b)].describe(root)}" for a, b in itertools.pairwise(chain))
            messages.append(f"import cycle in {package} among {', '.join(component)}:\n"
                            f"  {' -> '.join(chain)}\n{steps}")
        if messages:
            out[package] = messages
    return out


def cross_package_imports(src_dirs: list[Path], root: Path | None = None) -> list[str]:
    """Imports that break (a), (b) or (d): the core importing a method, a method importing another method, or
    anything importing the benchmark package (which may itself import every package)."""
    modules, imports = collect_imports(src_dirs)
    methods = set(modules) - {CORE, BENCHMARK}
    bad = []
    for imp in imports:
        source, target = imp.source.split(".")[0], imp.target.split(".")[0]
        if target == source or source == BENCHMARK:
            continue
        if target == BENCHMARK:
            bad.append(f"a package imports the benchmark package: {imp.describe(root)}")
            continue
        if target not in methods:
            continue
        rule = "the core imports a method package" if source == CORE else "a method package imports another"
        bad.append(f"{rule}: {imp.describe(root)}")
    return bad


SRC_DIRS = sorted(ROOT.glob("packages/*/src"))


@functools.cache
def _workspace_cycles() -> dict[str, list[str]]:
    return import_cycles(SRC_DIRS, ROOT)


def test_the_workspace_has_the_core_five_methods_and_the_benchmark():
    modules, imports = collect_imports(SRC_DIRS)
    assert {CORE, "crl", "cipl", "iis", "neuron_concepts", "dae_counterfactual", BENCHMARK} <= set(modules)
    assert len(imports) > 500  # the parse saw the code, function-level imports included
    assert any(i.where != "module level" for i in imports)


def test_core_and_methods_import_in_one_direction():
    bad = cross_package_imports(SRC_DIRS, ROOT)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(discover_packages(SRC_DIRS)))
def test_no_import_cycle_inside_a_package(package):
    cycles = _workspace_cycles().get(package, [])
    assert not cycles, "\n\n".join(cycles)


# ------------------------------------------------------------------------------------ the checker itself


def _fake(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    src = tmp_path / "src"
    for name, text in files.items():
        path = src / "fakepkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [src]


def test_checker_reports_a_planted_cycle(tmp_path):
    src = _fake(tmp_path, {
        "__init__.py": "",
        "a.py": "import fakepkg.b\n",
        "b.py": "import os\n\n\ndef late():\n    from fakepkg import a\n    return a, os\n",
    })
    cycles = import_cycles(src, tmp_path)
    assert list(cycles) == ["fakepkg"] and len(cycles["fakepkg"]) == 1
    message = cycles["fakepkg"][0]
    print(message)
    assert "fakepkg.a -> fakepkg.b -> fakepkg.a" in message
    assert "src/fakepkg/a.py:1, module level: import fakepkg.b" in message
    assert "src/fakepkg/b.py:5, inside late(): from fakepkg import a" in message


def test_checker_reports_a_cycle_through_a_reexporting_init_and_relative_imports(tmp_path):
    src = _fake(tmp_path, {
        "__init__.py": "from fakepkg.a import thing\n",
        "a.py": "thing = 1\n\n\ndef f():\n    from . import helper\n    return helper\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..a import thing\n\n\ndef helper():\n    return thing\n",
        "c.py": "class C:\n    def m(self):\n        from fakepkg.sub.b import helper\n        return helper\n",
        "d.py": "from fakepkg import c\n",
    })
    cycles = import_cycles(src, tmp_path)
    # a asks the package for `helper`, and the package's __init__ imports a: a real cycle, reported
    assert len(cycles["fakepkg"]) == 1, cycles
    assert "fakepkg -> fakepkg.a -> fakepkg" in cycles["fakepkg"][0]
    assert "inside f(): from . import helper" in cycles["fakepkg"][0]
    # the relative import of sub/b resolves to fakepkg.a, the method's import of c.py to fakepkg.sub.b, and
    # `from fakepkg import c` to the submodule c (not the __init__)
    _, imports = collect_imports(src)
    edges = {(i.source, i.target) for i in imports}
    assert {("fakepkg.sub.b", "fakepkg.a"), ("fakepkg.c", "fakepkg.sub.b"), ("fakepkg.d", "fakepkg.c")} <= edges
    assert ("fakepkg.d", "fakepkg") not in edges


def test_checker_passes_a_clean_package(tmp_path):
    src = _fake(tmp_path, {
        "__init__.py": "from fakepkg.model import Model\nfrom fakepkg.train import fit\n",
        "config.py": "import dataclasses\n",
        "model.py": "from fakepkg.config import dataclasses\n\n\nclass Model:\n    pass\n",
        "train.py": "from . import model\n\n\ndef fit():\n    from fakepkg.config import dataclasses\n"
                    "    return model, dataclasses\n",
        "cli.py": "from fakepkg import __name__ as name\n\n\ndef main():\n    from fakepkg.train import fit\n"
                  "    return fit, name\n",
    })
    assert import_cycles(src, tmp_path) == {}
    assert cross_package_imports(src, tmp_path) == []


def _write_sources(tmp_path, files: dict[str, str]) -> None:
    """Write {relative path under tmp_path/src: text} for the checker tests."""
    for name, text in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_imports_between_methods(tmp_path):
    _write_sources(tmp_path, {"medimg_core/__init__.py": "def f():\n    import cipl.train\n",
                       "cipl/__init__.py": "", "cipl/train.py": "from crl import model\n",
                       "crl/__init__.py": "", "crl/model.py": ""})
    bad = cross_package_imports([tmp_path / "src"], tmp_path)
    assert len(bad) == 2, bad
    assert bad[0].startswith("a method package imports another: cipl.train -> crl.model")
    assert bad[1].startswith("the core imports a method package: medimg_core -> cipl.train")


def test_checker_lets_the_benchmark_import_everything_and_nothing_import_it(tmp_path):
    _write_sources(tmp_path, {"medimg_core/__init__.py": "", "medimg_core/cli.py": "def f():\n    import medimg_benchmark\n",
                       "cipl/__init__.py": "from medimg_benchmark import maps\n",
                       "crl/__init__.py": "",
                       "medimg_benchmark/__init__.py": "", "medimg_benchmark/maps.py": "",
                       "medimg_benchmark/run.py": "import cipl\nimport crl\nfrom medimg_core import cli\n"})
    bad = cross_package_imports([tmp_path / "src"], tmp_path)
    assert len(bad) == 2, bad
    assert bad[0].startswith("a package imports the benchmark package: cipl -> medimg_benchmark.maps")
    assert bad[1].startswith("a package imports the benchmark package: medimg_core.cli -> medimg_benchmark")
