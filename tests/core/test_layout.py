"""The package's import graph has no cycle between modules: every import statement (module-level or inside a
function, outside `if TYPE_CHECKING:`), with `import a.b.c` also running a's and a.b's `__init__`. The one
pattern allowed is a package whose `__init__` imports its own submodules to register them (objective,
discriminators, verifiers, rollout ...), which import names back from it."""

import ast
from pathlib import Path

import uniapl

ROOT = Path(uniapl.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, f in mods.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree)
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        base = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    m = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    m = node.module or ""
                targets = [m] + [f"{m}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                parts = t.split(".")
                deps |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in mods and p != name}
        edges[name] = deps
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    bad = []
    for comp in _cycles(_edges(_modules())):
        packages = [m for m in comp if any(o.startswith(m + ".") for o in comp)]
        # a registry package and its own submodules only: `pkg/__init__` imports `pkg.x`, which imports from pkg
        if not (len(packages) == 1 and all(m == packages[0] or m.startswith(packages[0] + ".") for m in comp)):
            bad.append(comp)
    assert not bad, f"import cycles: {bad}"


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
