"""The architecture is executable: every import in src/ must be an edge docs/architecture.md allows,
and no module may reach itself through imports. Lazy (function-level) and type-only imports count:
they are edges a reader has to follow too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "parvagpu"
DOC = ROOT / "docs" / "architecture.md"
HEAVY = ("torch", "ray", "matplotlib", "highspy", "aiohttp", "onnxruntime", "pynvml", "tritonclient")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of ours in one file."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import submodule` is an edge to the submodule
                full = f"{base}.{a.name}"
                out.append((full if is_module(full) else base, node.lineno, id(node) in top))
    return out


def stage(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "parvagpu"


def allowed_edges() -> dict[str, set[str] | None]:
    """The 'may import' column of the stage table in docs/architecture.md; None = anything."""
    text = DOC.read_text()
    section = text.split("## Stages and what each may import", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        may = cells[-1]
        rules[name] = None if may == "anything" else set(re.findall(r"`([a-z_]+)`", may))
    return rules


def all_edges() -> list[tuple[str, str, str, int, bool]]:
    edges = []
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        for dst, line, top in imports(path):
            edges.append((src, dst, str(path.relative_to(SRC.parent)), line, top))
    return edges


def test_the_doc_names_every_stage():
    rules = allowed_edges()
    stages = {stage(module_name(p)) for p in PKG.rglob("*.py")} - {"parvagpu", "__main__"}
    assert stages <= set(rules), f"stages missing from docs/architecture.md: {sorted(stages - set(rules))}"
    assert set(rules) <= stages, f"docs/architecture.md names stages that do not exist: {sorted(set(rules) - stages)}"


def test_every_import_is_an_allowed_edge():
    rules = allowed_edges()
    rules.update({"parvagpu": set(), "__main__": {"cli"}})
    bad = []
    for src, dst, where, line, _ in all_edges():
        if not dst.startswith("parvagpu"):
            continue
        a, b = stage(src), stage(dst)
        if b == "parvagpu" and dst == "parvagpu":  # the version string
            continue
        if a != b and rules[a] is not None and b not in rules[a]:
            bad.append(f"{where}:{line}: {src} -> {dst} ({a} may not import {b})")
    assert not bad, "imports docs/architecture.md does not allow:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, *_ in all_edges():
        if dst.startswith("parvagpu") and dst != src:
            graph.setdefault(src, set()).add(dst)
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:  # depth-first search; a grey node seen again closes a cycle
        state[m] = "grey"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "grey":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "black"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_heavy_libraries_are_imported_only_when_used():
    """Planning, checking and the CLI start without Ray, torch, a solver or a plotting library."""
    bad = [
        f"{where}:{line}: {dst}"
        for src, dst, where, line, top in all_edges()
        if top and dst.split(".")[0] in HEAVY and not src.startswith(("parvagpu.profiler.worker",))
    ]
    assert not bad, "module-level imports of heavy libraries:\n" + "\n".join(bad)


@pytest.mark.parametrize("sample", ["a", "b"])
def test_the_checks_can_fail(sample, tmp_path, monkeypatch):
    """The checks above must be able to fail: a planted cycle and a planted edge are reported."""
    pkg = tmp_path / "parvagpu"
    (pkg / "core").mkdir(parents=True)
    (pkg / "planning").mkdir()
    for d in (pkg, pkg / "core", pkg / "planning"):
        (d / "__init__.py").write_text("")
    (pkg / "core" / "model.py").write_text("from parvagpu.planning import plan\n")
    (pkg / "planning" / "plan.py").write_text("from parvagpu.core.model import x\n")
    g = globals()
    monkeypatch.setitem(g, "SRC", tmp_path)
    monkeypatch.setitem(g, "PKG", pkg)
    if sample == "a":
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycle()
    else:
        doc = tmp_path / "architecture.md"
        doc.write_text(
            "## Stages and what each may import\n| stage | folder | holds | may import |\n|---|---|---|---|\n"
            "| `core` | `core/` | data | nothing |\n| `planning` | `planning/` | planners | `core` |\n"
        )
        monkeypatch.setitem(g, "DOC", doc)
        with pytest.raises(AssertionError, match="core may not import planning"):
            test_every_import_is_an_allowed_edge()
