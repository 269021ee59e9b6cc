"""The layers of docs/architecture.md, checked on the real import graph of the source (every import statement,
lazy and TYPE_CHECKING ones included; baselines/ and analysis/ as nni_sparsemask.baselines / .analysis)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "nni_sparsemask"
SOURCES = {PKG: ROOT / PKG, f"{PKG}.baselines": ROOT / "baselines", f"{PKG}.analysis": ROOT / "analysis"}

#: layer -> the layers it may import (itself always allowed); "base" is seeding, the checkpoint file checks,
#: malloc and the compat shim
ALLOWED = {
    "base": set(),
    "nas": {"base"},
    "fdn": {"base"},
    "data": {"base"},
    "measure": {"fdn", "base"},
    "baselines": {"nas", "fdn", "data", "base"},
    "analysis": {"fdn", "base"},
    "run": {"analysis", "baselines", "measure", "fdn", "nas", "data", "base"},
    "comparison": {"run", "analysis", "baselines", "measure", "fdn", "nas", "data", "base"},
    "cli": {"comparison", "run", "analysis", "baselines", "measure", "fdn", "nas", "data", "base"},
    "package": {"fdn", "nas", "base"},  # nni_sparsemask/__init__.py: the public names
}


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for prefix, base in SOURCES.items():
        for f in base.rglob("*.py"):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = (f, f.name == "__init__.py")
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    head = parts[1]
    if head in ("seeding", "_compat", "checkpoint_files", "malloc"):
        return "base"
    return head


def imports(module: str, path: Path, is_package: bool) -> set[str]:
    """Absolute names each import statement of ``path`` refers to (``from x import y`` gives x and x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.add(stem)
            out.update(f"{stem}.{a.name}" for a in node.names)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for mod, (path, is_package) in mods.items():
        targets = {owner(t) for t in imports(mod, path, is_package)}
        edges[mod] = {t for t in targets if t and t != mod and t != PKG}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_graph_sees_the_packages_imports():
    edges = graph()
    assert "nni_sparsemask.nas.losses" in edges["nni_sparsemask.nas.strategy"]
    assert "nni_sparsemask.fdn.backbones" in edges["nni_sparsemask.baselines.decoders"]  # baselines/ is mapped
    assert "nni_sparsemask.run.registry" in edges["nni_sparsemask.run.steps"]  # a lazy import inside a function


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_run_down_the_layers():
    wrong = []
    for mod, targets in graph().items():
        mine = layer(mod)
        assert mine in ALLOWED, f"{mod}: layer {mine!r} is not in docs/architecture.md; add it there and here"
        for t in targets:
            if layer(t) != mine and layer(t) not in ALLOWED[mine]:
                wrong.append(f"{mod} ({mine}) imports {t} ({layer(t)})")
    assert wrong == []


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_module_is_far_over_400_lines(source):
    long = {str(f.relative_to(ROOT)): n for f in SOURCES[source].rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 450}
    assert long == {}


def test_the_source_cites_nothing_outside_the_repository():
    cites = [str(f.relative_to(ROOT)) for base in SOURCES.values() for f in base.rglob("*.py")
             if "design.md" in f.read_text() or "../shared" in f.read_text()]
    assert cites == []


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages explicitly: a subpackage missing there imports from a checkout (editable
    install) but not from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join([PKG, *p.parent.relative_to(ROOT / PKG).parts]).rstrip(".")
             for p in (ROOT / PKG).rglob("__init__.py")}
    assert found - listed == set()
