"""dvc.yaml's code deps are true: each stage lists exactly the project modules its command imports.

A missing dep lets DVC skip a stage whose code changed (stale results); a needless one reruns
stages for nothing. The import closure is read statically (ast) from pipeline/<command>.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

NO_RESULT_MODULES = {
    "absld/__init__.py": "the package's version string",
    "pipeline/__init__.py": "empty",
    "absld/errors.py": "the UserError base: how a failure is printed",
    "absld/tracking.py": "W&B runs only; no DVC output depends on it",
}
"""Modules every stage imports that cannot change an output: not deps, so editing them reruns nothing."""


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(path: Path) -> set[str]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__ too)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # submodules imported by name
    return {m for m in found if m.split(".")[0] in ("absld", "pipeline")}


def closure(module: str) -> set[str]:
    """Project files imported, directly or not, by ``module`` (with the packages they sit in)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or str(path.relative_to(REPO)) in seen:
            continue
        seen.add(str(path.relative_to(REPO)))
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += sorted(imported_modules(path))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.startswith(("absld", "pipeline"))]


@pytest.mark.parametrize("name", list(stages()))
def test_a_stage_lists_exactly_the_code_its_command_imports(name):
    stage = stages()[name]
    command = stage["cmd"].split()[1]  # "absld distill --method ..." -> distill
    needed = {f for f in closure(f"pipeline.{command}") if f not in NO_RESULT_MODULES}
    deps = code_deps(stage)
    covered = lambda f: any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    missing = sorted(f for f in needed if not covered(f))
    assert not missing, f"{name}: imported but not a dep: {missing}"
    needless = [d for d in deps if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in needed)]
    assert not needless, f"{name}: a dep its command does not import: {needless}"


def test_the_import_closure_follows_relative_and_package_imports():
    files = closure("pipeline.check")
    assert {"pipeline/check.py", "pipeline/common.py", "absld/config.py", "absld/models/__init__.py",
            "absld/models/small_cnn.py"} <= files
    assert "absld/train.py" not in files and "absld/attacks/pgd.py" not in files


def test_stages_do_not_import_each_other():
    """A stage module imports the library and pipeline/common (the file layout), never another stage."""
    stage_modules = {f"pipeline.{p.stem}" for p in (REPO / "pipeline").glob("*.py")} - {
        "pipeline.__init__", "pipeline.common", "pipeline.cli", "pipeline.profiles"}
    for module in sorted(stage_modules):
        imported = imported_modules(REPO / Path(*module.split(".")).with_suffix(".py"))
        others = {m for m in imported if any(m == s or m.startswith(s + ".") for s in stage_modules - {module})}
        assert not others, f"{module} imports {sorted(others)}"
