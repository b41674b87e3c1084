"""The house rules of docs/layout.md: import direction, no cycles, small package tops, docstrings,
and documentation links that resolve."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("long_ctx", "cross_encoder")
NUMBERED = re.compile(r"^\d+_")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            if "__pycache__" not in p.parts}


def _imports(path: Path, name: str) -> set[str]:
    """Project modules `path` imports anywhere in it (lazy imports inside functions included)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        # `from pkg import submodule` names a module; `from mod import function` names the module.
        graph[name] = {m if m in mods else m.rsplit(".", 1)[0] for m in _imports(path, name)} - {name}
        graph[name] &= set(mods)
    return graph


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_data_stages_never_import_the_cross_encoder():
    bad = [(m, d) for m, deps in _graph().items() if _in(m, "long_ctx") for d in deps if _in(d, "cross_encoder")]
    assert bad == []


@pytest.mark.parametrize("lower, forbidden", [
    ("long_ctx.common", ("long_ctx.stage0", "long_ctx.stage1", "long_ctx.stage2")),
    ("cross_encoder.rwkv5", ("cross_encoder.modeling", "cross_encoder.training", "cross_encoder.evaluation",
                             "cross_encoder.serving", "cross_encoder.runtime")),
    ("cross_encoder.modeling", ("cross_encoder.training", "cross_encoder.evaluation", "cross_encoder.serving")),
    ("cross_encoder.serving", ("cross_encoder.training", "cross_encoder.evaluation")),
    ("cross_encoder.training", ("cross_encoder.serving", "cross_encoder.evaluation")),
])
def test_lower_layers_never_import_higher_ones(lower, forbidden):
    bad = [(m, d) for m, deps in _graph().items() if _in(m, lower) for d in deps
           if any(_in(d, f) for f in forbidden)]
    assert bad == []


def test_no_import_cycles():
    graph = _graph()
    # Packages import their own submodules from __init__ (re-exports); those edges point down, and a
    # submodule importing a sibling goes through the parent package, so drop module -> its own parents.
    edges = {m: {d for d in deps if not _in(m, d)} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def _packages() -> list[Path]:
    return sorted(p.parent for pkg in PACKAGES for p in (REPO / pkg).rglob("__init__.py")
                  if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", _packages(), ids=lambda p: str(p.relative_to(REPO)))
def test_package_top_level_is_small_and_documented(package):
    modules = [p.name for p in package.glob("*.py") if p.name != "__init__.py" and not NUMBERED.match(p.name)]
    assert len(modules) <= 8, f"{package} holds {len(modules)} modules: {sorted(modules)}; make a subpackage"
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
    assert doc and len(doc.split()) >= 15, f"{package}/__init__.py needs a paragraph saying what lives there"


def _doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]


def test_documentation_links_resolve():
    broken = []
    for doc in _doc_files():
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+://|mailto:", path):
                continue
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []


def test_anchors_of_links_into_docs_exist():
    """`page.md#anchor` must name a heading of that page (GitHub's slug rules, simplified)."""
    def slug(heading: str) -> str:
        s = heading.strip().lower()
        s = re.sub(r"[^\w\- ]", "", s)
        return s.replace(" ", "-")

    broken = []
    for doc in _doc_files():
        for target in re.findall(r"\]\(([^)\s]+\.md)#([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            page = doc.parent / target[0]
            if not page.exists():
                continue
            headings = [slug(h) for h in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)]
            if target[1] not in headings:
                broken.append(f"{doc.relative_to(REPO)} -> {target[0]}#{target[1]}")
    assert broken == []


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move reference material to docs/"
