"""The package's shape: package folders only, no import circles, layers that import downwards, and nothing
below `cli/` that prints or parses arguments."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dreamy"
# lower layers first; a module may import its own layer (other modules) and the layers before it
LAYERS = [["core"], ["models"], ["targets"], ["datasets"], ["vision", "language"], ["maxima"],
          ["sae", "directions", "labels", "steering"], ["report"], ["runs"], ["cli"]]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("dreamy",) + path.relative_to(PACKAGE).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every dreamy module `path` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dreamy"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    return {m for m in out if m in modules}


def _layer(name: str) -> int | None:
    part = name.split(".")[1] if "." in name else None
    return next((i for i, layer in enumerate(LAYERS) if part in layer), None)


def test_the_package_holds_only_package_folders():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"]


def test_no_import_circles_and_no_upward_imports():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t != m and not t.startswith(m + ".")} for m, p in modules.items()}
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert not upward, upward
    # a circle is a path back to the start; depth-first over the whole graph
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_nothing_below_the_cli_prints_or_parses_arguments():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("dreamy.cli") or name == "dreamy.__main__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{name}: print()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "argparse" in names:
                    offenders.append(f"{name}: imports argparse")
    assert not offenders, offenders
