"""The house's structure: reference -> export -> runtime_bench, composed only above them.

Parts and the only imports allowed between them:
  Face (bilayer_mobile/: the command line and the pipeline) -> Export, Bench, Reference
  Export (export/) -> Reference;  Bench (runtime_bench/) -> Reference;  Reference -> nothing
and no import circle between modules. Read from the source (every import statement, also the
ones inside functions) and checked by importing each package in a fresh interpreter.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
FOLDERS = {"reference": "Reference", "export": "Export", "runtime_bench": "Bench", "bilayer_mobile": "Face"}
ALLOWED = {"Face": {"Export", "Bench", "Reference"}, "Export": {"Reference"}, "Bench": {"Reference"}, "Reference": set()}


def module_name(path: Path) -> str:
    """The installed name of a source file: reference/model.py -> bilayer_mobile.reference.model."""
    rel = path.relative_to(PROJECT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] != "bilayer_mobile":
        parts = ["bilayer_mobile"] + parts
    return ".".join(parts)


def part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bilayer_mobile":
        return None
    return FOLDERS.get(parts[1], "Face") if len(parts) > 1 else "Face"


def project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (absolute names)."""
    graph: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in sorted((PROJECT / folder).glob("*.py")):
            name = module_name(path)
            package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")
                        base = base[: len(base) - node.level + 1]
                        source = ".".join(base + ([node.module] if node.module else []))
                    else:
                        source = node.module or ""
                    targets.add(source)
                    targets |= {f"{source}.{a.name}" for a in node.names}  # `from pkg import module`
            known = {module_name(p) for f in FOLDERS for p in (PROJECT / f).glob("*.py")}
            graph[name] = {t for t in targets if t in known and t != name}
    return graph


def test_parts_import_only_what_the_design_allows():
    graph = project_imports()
    assert len(graph) > 20  # the walk found the packages
    wrong = [f"{a} ({part_of(a)}) imports {b} ({part_of(b)})" for a, targets in graph.items() for b in targets
             if part_of(b) != part_of(a) and part_of(b) not in ALLOWED[part_of(a)]]
    assert wrong == []


def test_no_import_circle_between_modules():
    graph = project_imports()
    # a package's __init__ importing its own modules is not a dependency of those modules
    edges = {a: {b for b in targets if not (a.endswith(tuple(FOLDERS)) and b.startswith(a + "."))}
             for a, targets in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_importing_one_package_loads_no_forbidden_other():
    """In a fresh interpreter: every runtime_bench module loads without export, every export
    module without runtime_bench, every reference module with neither."""
    script = """
import importlib, pkgutil, sys
import bilayer_mobile.{pkg} as package
for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"bilayer_mobile.{pkg}." + info.name)
loaded = sorted({{m.split(".")[1] for m in sys.modules if m.startswith("bilayer_mobile.") and m.count(".") >= 1}})
print(",".join(loaded))
"""
    expected = {"reference": ["reference"], "export": ["export", "reference"],
                "runtime_bench": ["reference", "runtime_bench"]}
    for pkg, loaded in expected.items():
        proc = subprocess.run([sys.executable, "-c", script.format(pkg=pkg)], capture_output=True, text=True,
                              timeout=300, cwd="/")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1].split(",") == loaded, pkg
