"""The pipeline's data flows one way: m2det -> export -> engines -> benchmarks. A module may import
its own stage and the stages before it, never a later one (lazy imports inside functions count
too), and no set of modules imports each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Repository folder -> (stage rank, import prefix).
STAGES = {"m2det": (0, "m2det"), "export": (1, "m2det.export"), "engines": (2, "m2det.engines"),
          "benchmarks": (3, "m2det.benchmarks")}  # fmt: skip


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "m2det":
        parts = ["m2det", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _stage(module: str) -> int:
    ranks = [rank for rank, prefix in STAGES.values()
             if module == prefix or module.startswith(prefix + ".")]  # fmt: skip
    return max(ranks)


def _imports(path: Path) -> set[str]:
    """Every ``m2det...`` module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "m2det")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))  # fmt: skip
            if base.split(".")[0] != "m2det":
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _sources() -> dict[str, Path]:
    files = [p for folder in STAGES for p in (ROOT / folder).rglob("*.py")]
    return {_module_name(p): p for p in files}


def test_no_import_runs_back_up_the_pipeline() -> None:
    sources = _sources()
    assert len(sources) > 40
    backwards = []
    for module, path in sources.items():
        for target in _imports(path):
            if target in sources and _stage(target) > _stage(module):
                backwards.append(f"{module} -> {target}")
    assert not backwards, backwards


def test_no_import_circle() -> None:
    sources = _sources()
    graph = {m: {t for t in _imports(p) if t in sources and t != m} for m, p in sources.items()}
    # m2det/__init__ re-exports config and errors: a package's face, not a dependency of them
    graph["m2det"] = set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
