"""The package layout DESIGN.md draws: dependencies point down, no two modules import each
other (at module level or inside functions)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qrank"
# a package may import only the packages listed after it
LOWER = {
    "kernels": set(),
    "models": {"kernels"},
    "engine": {"models", "kernels"},
    "server": {"engine", "models", "kernels"},
    "jobs": {"engine", "models", "kernels"},
    "ray": {"jobs", "server", "engine", "models", "kernels"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The qrank modules ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("qrank")}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    # the root package's __init__ (the public API) is left out: importing any submodule runs
    # it, but it is no design dependency
    return {name: {i for i in imports(path) if i in modules and i not in (name, "qrank")}
            for name, path in modules.items() if name != "qrank"}


def test_no_two_modules_import_each_other(graph):
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    cycles = [(a, b) for a, deps in graph.items() for b in deps
              if not b.startswith(a + ".") and not a.startswith(b + ".")
              and reaches(b, a)]
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("package", sorted(LOWER))
def test_dependencies_point_down(graph, package):
    allowed = LOWER[package] | {package}
    wrong = {}
    for name, deps in graph.items():
        if name.split(".")[1:2] != [package]:
            continue
        bad = {d for d in deps if d.split(".")[1:2][0:1] and d.split(".")[1] in LOWER
               and d.split(".")[1] not in allowed}
        if bad:
            wrong[name] = sorted(bad)
    assert not wrong, f"{package}/ imports packages above it: {wrong}"


def test_only_the_ray_package_imports_ray():
    """Ray is an extra (`pip install 'qrank[ray]'`): nothing else may need it."""
    wrong = []
    for path in SRC.rglob("*.py"):
        if module_name(path).split(".")[1:2] == ["ray"]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                wrong.append(module_name(path))
    assert not wrong, f"modules outside qrank/ray import ray: {sorted(set(wrong))}"
