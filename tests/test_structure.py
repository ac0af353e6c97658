"""The package layout keeps its promises.

Read from the source with ``ast`` (nothing is imported, so a lazy or ``TYPE_CHECKING``-only import counts as much as
a top-level one): the import graph has no cycles, every dependency points down the layers, every public name has
one home. Then the shared helpers behave, and the smells that the split removed stay removed (backends never
switched, damaged logs never read silently).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_divcl"

LAYERS = ("_common", "diversity", "data", "models", "losses", "bank", "planning", "evaluation", "publish",
          "policies", "experimental", "sampler", "collator", "training", "cli")
"""Bottom to top: a module may import from its own layer (package or top-level module) and the layers before it.
``hf_divcl/__init__.py`` is the lazy public façade above them all: it may name every module, none may import it."""

FACADE = PACKAGE


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    line: int
    target: str | None  # the hf_divcl module imported from; None when no module of that name exists
    written: str  # the statement as written (``from .window import DiversityWindow``)
    names: tuple[str, ...]  # the name bound by ``from x import a`` (empty for ``import x``)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} `{self.written}`"


class Package:
    """The modules of the ``hf_divcl`` folder under ``root``, parsed (never imported)."""

    def __init__(self, root: Path):
        self.root = root
        files = sorted(p for p in (root / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)
        self.modules = {self._name(p): p for p in files}
        self._trees: dict[str, ast.Module] = {}

    def _name(self, path: Path) -> str:
        parts = path.relative_to(self.root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def tree(self, name: str) -> ast.Module:
        if name not in self._trees:
            path = self.modules[name]
            self._trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        return self._trees[name]

    def imports(self, name: str) -> list[Import]:
        """Every import of an hf_divcl module in ``name``: top level, inside functions, under ``if TYPE_CHECKING:``."""
        found = []
        for node in ast.walk(self.tree(name)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        target = alias.name if alias.name in self.modules else None
                        found.append(Import(name, node.lineno, target, f"import {alias.name}", ()))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level - 1 packages
                    package = name.split(".")
                    if self.modules[name].name != "__init__.py":
                        package = package[:-1]
                    base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])])
                else:
                    base = node.module or ""
                if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                    continue
                written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"  # `from package import module`
                    target = submodule if submodule in self.modules else base if base in self.modules else None
                    found.append(Import(name, node.lineno, target, written, (alias.name,)))
        return sorted(found, key=lambda imp: imp.line)

    def graph(self) -> dict[str, dict[str, Import]]:
        """module → {module it imports: the first import of it}."""
        graph: dict[str, dict[str, Import]] = {name: {} for name in self.modules}
        for name in self.modules:
            for imp in self.imports(name):
                if imp.target is not None:
                    graph[name].setdefault(imp.target, imp)
        return graph

    def public_names(self, name: str) -> list[str] | None:
        """The module's ``__all__`` (a literal list or tuple of strings), or None without one."""
        for node in self.tree(name).body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                value = ast.literal_eval(node.value)
                assert isinstance(value, list | tuple) and all(isinstance(v, str) for v in value), name
                return list(value)
        return None

    def bound_names(self, name: str) -> tuple[set[str], set[str]]:
        """(names the module defines, names it imports) at module level, ``if``/``try`` blocks included."""
        defined: set[str] = set()
        imported: set[str] = set()
        for node in _import_time_statements(self.tree(name).body):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        return defined - imported, imported


def _import_time_statements(body: list[ast.stmt]):
    """The statements of a body and of its ``if``/``try``/``with`` blocks, not of its functions and classes."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _import_time_statements(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from _import_time_statements(handler.body)


def layer(name: str) -> str | None:
    """``hf_divcl.planning.plan`` → ``planning``; ``hf_divcl.bank`` → ``bank``; the façade or a stray → None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def missing_modules(pkg: Package) -> list[str]:
    return [f"  {imp}" for name in pkg.modules for imp in pkg.imports(name) if imp.target is None]


def cycles(pkg: Package) -> list[str]:
    """One cycle per strongly connected component of the import graph (Tarjan), the shortest through the
    component's first module, each import with its line."""
    graph = pkg.graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1 or v in graph[v]:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    report = []
    for component in components:
        start = min(component)
        paths: dict[str, list[Import]] = {start: []}
        queue, cycle = [start], None
        while queue and cycle is None:  # breadth first inside the component
            v = queue.pop(0)
            for w, imp in sorted(graph[v].items()):
                if w == start:
                    cycle = [*paths[v], imp]
                    break
                if w in component and w not in paths:
                    paths[w] = [*paths[v], imp]
                    queue.append(w)
        members = f" (one of the cycles among {', '.join(sorted(component))})" if len(component) > len(cycle) else ""
        report.append("  " + " → ".join([start, *(imp.target for imp in cycle)]) + members + "".join(
            f"\n      {imp}" for imp in cycle))
    return report


def strays(pkg: Package) -> list[str]:
    return [f"  {name}" for name in pkg.modules if name != FACADE and layer(name) is None]


def upward_imports(pkg: Package) -> list[str]:
    found = []
    for name in pkg.modules:
        if name == FACADE or layer(name) is None:  # the façade names everything; strays have their own test
            continue
        for imp in pkg.imports(name):
            if imp.target is None:
                continue
            theirs = layer(imp.target)
            if theirs is None or LAYERS.index(theirs) > LAYERS.index(layer(name)):
                found.append(f"  {imp}  ({layer(name)} → {theirs or 'the hf_divcl façade'})")
    return found


def homeless_names(pkg: Package) -> list[str]:
    problems = []
    homes: dict[str, list[str]] = {}
    for name in pkg.modules:
        public = pkg.public_names(name)
        if public is None or name == FACADE:
            continue
        defined, imported = pkg.bound_names(name)
        for public_name in public:
            if public_name in imported:
                problems.append(f"  {name} re-exports {public_name!r} (imports it and lists it in __all__)")
            elif public_name not in defined:
                problems.append(f"  {name} lists {public_name!r} in __all__ but does not define it")
            else:
                homes.setdefault(public_name, []).append(name)
    # the façade loads each public name from the module that defines it, and tells type checkers the same
    lazy = next((ast.literal_eval(n.value) for n in pkg.tree(FACADE).body
                 if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "_LAZY"), {})
    if set(pkg.public_names(FACADE) or ()) != {*lazy, "__version__"}:
        problems.append("  the façade's __all__ is not _LAZY's names plus __version__")
    for public_name, module in lazy.items():
        if f"{PACKAGE}.{module}" not in homes.get(public_name, []):
            problems.append(f"  the façade loads {public_name!r} from {PACKAGE}.{module}, which does not define it "
                            f"(public in: {homes.get(public_name, 'no module')})")
    declared = {n: imp.target for imp in pkg.imports(FACADE) for n in imp.names}
    if declared != {n: f"{PACKAGE}.{m}" for n, m in lazy.items()}:
        problems.append("  the façade's TYPE_CHECKING imports differ from _LAZY")
    return problems


def names_public_twice(pkg: Package) -> list[str]:
    homes: dict[str, list[str]] = {}
    for name in pkg.modules:
        if name != FACADE:
            for public_name in set(pkg.public_names(name) or ()) & pkg.bound_names(name)[0]:
                homes.setdefault(public_name, []).append(name)
    return [f"  {n!r} is public in {len(where)} modules: {', '.join(where)}"
            for n, where in sorted(homes.items()) if len(where) > 1]


@pytest.fixture(scope="module")
def hf_divcl_source() -> Package:
    pkg = Package(ROOT)
    assert len(pkg.modules) > 40 and "hf_divcl.training.trainer" in pkg.modules  # the scan itself sees the package
    assert pkg.graph()["hf_divcl.training.trainer"], "the scan sees the trainer's imports"
    return pkg


def private_imports(pkg: Package) -> list[str]:
    """Imports of another module's ``_private`` names (a module's underscore names are its own business)."""
    return [f"  {imp}" for name in pkg.modules for imp in pkg.imports(name)
            if imp.target not in (None, name) and any(n.startswith("_") and not n.startswith("__") for n in imp.names)
            and not any(f"{imp.target}.{n}" in pkg.modules for n in imp.names)]


STRUCTURE_RULES = {
    "every hf_divcl import names a module that exists": missing_modules,
    "the import graph has no cycles (imports inside functions and under TYPE_CHECKING count)": cycles,
    f"every module belongs to a layer ({', '.join(LAYERS)})": strays,
    f"dependencies point down the layers ({', '.join(LAYERS)})": upward_imports,
    "every public name has one home (no re-exports; the façade points at the definer)": homeless_names,
    "no two modules define the same public name": names_public_twice,
    "no module imports another's _private names": private_imports,
}


@pytest.mark.parametrize("rule", list(STRUCTURE_RULES))
def test_the_package_keeps_its_structure_rules(rule, hf_divcl_source):
    found = STRUCTURE_RULES[rule](hf_divcl_source)
    assert not found, f"{rule} — broken by:\n" + "\n".join(found)


def test_the_structure_checks_see_what_they_must_refuse(tmp_path):
    """On a small package with every fault, each check fails and names it: a cycle closed by a TYPE_CHECKING
    import, imports inside functions, a relative import up a layer, an import of the façade, a re-export (which the
    façade then points at), a stray module, a missing module, a name public in two modules, an import of another
    module's private name."""
    files = {
        "__init__.py": '_LAZY: dict[str, str] = {"A": "training.b"}\n__all__ = ["A", "__version__"]\n'
                       "if False:\n    from .training.b import A\n",
        "diversity/__init__.py": "",
        "diversity/a.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ..training.b import B\n"
                          "__all__ = ['A', 'C']\nclass A: ...\nC = 1\n",
        "training/__init__.py": "",
        "training/b.py": "from ..diversity.a import A\n__all__ = ['A', 'B']\n\ndef f():\n"
                         "    from hf_divcl.diversity import a\n    import hf_divcl.gone\nclass B: ...\n",
        "training/c.py": "__all__ = ['C']\nC = 2\n\ndef g():\n    from hf_divcl import A\n"
                         "from ..diversity.a import _hidden\n",
        "extra.py": "",
    }
    for rel, text in files.items():
        (tmp_path / PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / rel).write_text(text)
    pkg = Package(tmp_path)
    b = "hf_divcl.training.b"
    assert [(i.line, i.target, i.names) for i in pkg.imports(b)] == [
        (1, "hf_divcl.diversity.a", ("A",)), (5, "hf_divcl.diversity.a", ("a",)), (6, None, ())]
    assert missing_modules(pkg) == ["  hf_divcl.training.b:6 `import hf_divcl.gone`"]
    assert cycles(pkg) == ["  hf_divcl.diversity.a → hf_divcl.training.b → hf_divcl.diversity.a"
                           "\n      hf_divcl.diversity.a:4 `from ..training.b import B`"
                           "\n      hf_divcl.training.b:1 `from ..diversity.a import A`"]
    assert strays(pkg) == ["  hf_divcl.extra"]
    assert upward_imports(pkg) == ["  hf_divcl.diversity.a:4 `from ..training.b import B`  (diversity → training)",
                                   "  hf_divcl.training.c:5 `from hf_divcl import A`  (training → the hf_divcl façade)"]
    assert homeless_names(pkg) == [
        "  hf_divcl.training.b re-exports 'A' (imports it and lists it in __all__)",
        "  the façade loads 'A' from hf_divcl.training.b, which does not define it "
        "(public in: ['hf_divcl.diversity.a'])"]
    assert names_public_twice(pkg) == ["  'C' is public in 2 modules: hf_divcl.diversity.a, hf_divcl.training.c"]
    assert private_imports(pkg) == ["  hf_divcl.training.c:6 `from ..diversity.a import _hidden`"]


def test_the_training_arguments_docstring_documents_every_option_in_field_order():
    """DivCLTrainingArguments' docstring has one entry per option it declares, in the order of the fields (which
    ``hf-divcl train --help`` follows), with the real default; the options whose help says "experimental" are the
    ones the docstring marks *experimental*."""
    from hf_divcl.training.arguments import DivCLTrainingArguments as Args

    doc, fields = Args.__doc__, Args.__dataclass_fields__
    entries = re.findall(r"^ {8}(\w+) \(`.*`, \*optional\*, defaults to `(.*)`\):\n {12}(.*)$", doc, flags=re.M)
    assert [name for name, _, _ in entries] == list(Args.__annotations__)  # the class's own fields, in order
    for name, default, _ in entries:
        assert ast.literal_eval(default) == fields[name].default, name
    experimental = {n for n in Args.__annotations__ if "(experimental: " in fields[n].metadata["help"]}
    assert experimental == {name for name, _, text in entries if "*experimental*" in text}
    assert len(re.findall(r"^ {8}> ", doc, flags=re.M)) == 5  # the groups, each a section


def test_plotting_leaves_the_global_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from hf_divcl.publish.plots import pyplot, save_figure

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        fig, axes = pyplot().subplots(1, 2, figsize=(4, 2))
        axes[0].plot([0, 1], [1, 0], color=pyplot().get_cmap("tab20")(3))
        out = save_figure(fig, tmp_path / "sub" / "f.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_a_torn_last_log_line_is_skipped_but_a_damaged_middle_line_is_an_error(tmp_path):
    from hf_divcl.diversity.log import read_diversity_log

    path = tmp_path / "diversity_log.jsonl"
    rows = [json.dumps({"step": i}) for i in (1, 2)]
    path.write_text("\n".join([*rows, '{"step": 3, "div']))
    assert [r["step"] for r in read_diversity_log(path)] == [1, 2]
    path.write_text("\n".join([rows[0], "garbage", rows[1]]))
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_diversity_log(path)


def test_kmeans_backend_is_explicit_and_recorded():
    from hf_divcl.planning.cluster import ClusterBuilder
    from hf_divcl.planning.sketch import kmeans

    x = torch.nn.functional.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = kmeans(x, 5, torch.Generator().manual_seed(1))
    b = kmeans(x, 5, torch.Generator().manual_seed(1), backend="torch")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'faiss'"):
        kmeans(x, 5, torch.Generator(), backend="sklearn")
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install faiss-cpu"):
            kmeans(x, 5, torch.Generator(), backend="faiss")
    assert ClusterBuilder().config()["kmeans_backend"] == "torch"


def test_builders_declare_whether_they_need_a_window():
    from hf_divcl.planning.cluster import ClusterBuilder
    from hf_divcl.planning.greedy import GreedyBuilder
    from hf_divcl.planning.pool import PoolBuilder
    from hf_divcl.planning.random import RandomBuilder

    assert not RandomBuilder.requires_window and not ClusterBuilder.requires_window
    assert GreedyBuilder.requires_window and PoolBuilder.requires_window


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    from hf_divcl._common import atomic_write_text

    target = tmp_path / "a" / "divcl_window.json"
    atomic_write_text(target, "{}")
    atomic_write_text(target, '{"policy": "progress"}')
    assert json.loads(target.read_text()) == {"policy": "progress"}
    assert [p.name for p in target.parent.iterdir()] == ["divcl_window.json"]


def test_shared_helpers_answer_one_way(monkeypatch):
    from datasets import Image, Value

    from hf_divcl._common import ROW_ID_COLUMN, input_columns, is_image_feature, world_size

    assert input_columns(["anchor", "label", ROW_ID_COLUMN, "positive", "dataset_name"], ["label"]) == \
        ["anchor", "positive"]
    assert is_image_feature(Image()) and not is_image_feature(Value("string")) and not is_image_feature(None)
    monkeypatch.setenv("WORLD_SIZE", "3")  # before torch.distributed is initialised: the launcher's value
    assert world_size() == 3
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size() == 1
